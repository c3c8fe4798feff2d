"""A throwaway PostgreSQL cluster on a loopback port (initdb/pg_ctl), for tests and benchmarks."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


class PostgresNotFound(RuntimeError):
    def __init__(self, name: str) -> None:
        super().__init__(f"PostgreSQL server binary {name!r} not found: apt-get install postgresql")


def server_binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    exe = found[-1] if found else shutil.which(name)
    if not exe:
        raise PostgresNotFound(name)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway_cluster(prefix: str = "knowngood-pg-") -> Iterator[str]:
    """Start a cluster of our own and yield its server URL (no database part); as root it runs as `postgres`."""
    initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
    base = Path(tempfile.mkdtemp(prefix=prefix))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(base, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True)
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(base / "log"), "-w", "-o", opts, "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def database(server: str, *, template: str | None = None, prefix: str = "kg_") -> Iterator[str]:
    """A new database on `server` (copied from `template`, else empty), dropped afterwards; yields its URL."""
    from sqlalchemy import text

    from store.db import make_engine

    name = f"{prefix}{os.urandom(6).hex()}"
    admin = make_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    try:
        yield f"{server}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
