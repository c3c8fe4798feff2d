"""The runner's errors a user can act on: a missing interpreter, a missing or failing uv."""

from __future__ import annotations

from store.errors import KnowngoodError


class InterpreterNotFound(KnowngoodError):
    exit_code = 3

    def __init__(self, version: str, looked: list[str]) -> None:
        super().__init__(
            f"no Python {version} interpreter found; looked in: {', '.join(looked)}. "
            f"Install it (e.g. `pyenv install {version}` or `uv python install {version}`)."
        )
        self.version = version


class UvNotFound(KnowngoodError):
    exit_code = 4

    def __init__(self, configured: str | None = None) -> None:
        if configured:
            super().__init__(f"KNOWNGOOD_UV: expected the path of a uv binary, got {configured!r} (not executable)")
        else:
            super().__init__("uv is not on PATH; install it with `pip install uv` (or set KNOWNGOOD_UV)")


class UvFailed(KnowngoodError):
    exit_code = 5
