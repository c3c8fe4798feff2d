"""The base of every error a user can act on; the CLI maps each subclass to its own exit code."""

from __future__ import annotations


class KnowngoodError(Exception):
    exit_code = 1
