"""Stored environment → lockfile text a tool accepts unchanged."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.queries import KEY_PACKAGES
from api.schemas import ChainOut
from knowngood.models import Environment

FORMATS = ("requirements", "constraints")


def _stamp(env: Environment, chain: ChainOut) -> str:
    return (
        f"# knowngood lockfile for {env.name} (python {env.python_full or env.python})\n"
        f"# run {chain.run_id}, recorded {chain.recorded_at:%Y-%m-%d}, resolution cutoff {env.cutoff or 'none'}\n"
        f"# resolved against {env.index_url}; models passed: {', '.join(m.model for m in chain.models)}\n"
    )


def render(session: Session, chain: ChainOut, fmt: str) -> str:
    env = session.get_one(Environment, chain.environment_id)
    if fmt == "requirements":
        # The text uv itself wrote, hashes included: `uv pip sync` takes it as it is.
        return _stamp(env, chain) + (env.lock_text or "")
    if fmt == "constraints":
        pins = [f"{p.name}=={p.version}" for p in env.packages if p.name in KEY_PACKAGES]
        return _stamp(env, chain) + "\n".join(pins) + "\n"
    raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
