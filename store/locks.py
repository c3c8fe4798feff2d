"""Resolved locks: the pinned package set uv wrote, read back into pins; shared by the runner and the store."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from packaging.utils import canonicalize_name


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lock:
    """A resolved, pinned package set and the exact text uv wrote for it."""

    text: str
    pins: tuple[Pin, ...]

    @property
    def hash(self) -> str:
        lines = sorted(f"{p.name}=={p.version}" for p in self.pins)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def version(self, name: str) -> str | None:
        name = canonicalize_name(name)
        return next((p.version for p in self.pins if p.name == name), None)


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
_HASH = re.compile(r"--hash=(\S+)")


def parse_lock(text: str) -> tuple[Pin, ...]:
    """Read `name==version --hash=...` entries from a compiled requirements file."""
    logical = re.sub(r"\\\n", " ", text)
    pins = []
    for line in logical.splitlines():
        line = line.strip()
        if line.startswith("#"):
            continue
        m = _PIN.match(line)
        if m:
            pins.append(Pin(canonicalize_name(m.group(1)), m.group(2), tuple(_HASH.findall(line))))
    return tuple(sorted(pins, key=lambda p: p.name))
