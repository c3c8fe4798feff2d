"""Server memory under a large unauthenticated POST /api/v1/runs: RSS before and after, printed.

    uv run python bench/ingest_rss.py              # 50 MB, with Content-Length and chunked
    uv run python bench/ingest_rss.py --mb 200

Starts the real server (uvicorn, loopback, a migrated SQLite file in a temporary folder) with an ingest token,
then sends a body of --mb megabytes without the token, once with a Content-Length and once chunked, streaming
it in 1 MB writes until the server answers or closes. The server's VmRSS and VmHWM (peak) are read from /proc
before and after. The target (issue 15) is less than 20 MB of growth: the token is checked before a byte of the
body is read, so nothing should be buffered or parsed.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).parents[1]))

from store import migrate
from store.settings import Settings
from tests.pgcluster import free_port

ROOT = Path(__file__).parents[1]
TARGET_MB = 20.0


def app_factory() -> FastAPI:
    from api.app import create_app

    return create_app(Settings())  # KNOWNGOOD_DATABASE_URL and KNOWNGOOD_INGEST_TOKEN from the environment


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB, from /proc (Linux)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def post(port: int, megabytes: int, chunked: bool) -> str:
    """Stream an unauthenticated body; returns the status line the server answered with."""
    block = b"[" + b"0," * (512 * 1024 - 1) + b"0"  # 1 MB of a JSON array, the kind of body a parser would take
    head = "POST /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {megabytes * len(block)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for _ in range(megabytes):
                sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed without reading the rest: what we want
        try:
            return sock.recv(4096).split(b"\r\n", 1)[0].decode() or "(closed)"
        except (ConnectionResetError, TimeoutError):
            return "(connection reset)"


def wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/api/v1/runs", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not answer within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50, help="body size in MB (default 50)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kg-ingest-rss-") as tmp:
        url = f"sqlite:///{tmp}/store.db"
        migrate.upgrade(url)
        port = free_port()
        env = {**os.environ, "KNOWNGOOD_DATABASE_URL": url, "KNOWNGOOD_INGEST_TOKEN": "bench-token"}
        cmd = [sys.executable, "-m", "uvicorn", "bench.ingest_rss:app_factory", "--factory", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc)
            rss0, hwm0 = memory_mb(proc.pid)
            print(f"server pid {proc.pid}: before  RSS {rss0:7.1f} MB  peak {hwm0:7.1f} MB")
            worst = 0.0
            for chunked in (False, True):
                status = post(port, args.mb, chunked)
                time.sleep(0.5)
                rss, hwm = memory_mb(proc.pid)
                worst = max(worst, rss - rss0, hwm - hwm0)
                label = "chunked" if chunked else "Content-Length"
                print(f"{args.mb} MB unauthenticated, {label:>14}: {status!r:34} RSS {rss:7.1f} MB "
                      f"(+{rss - rss0:.1f})  peak {hwm:7.1f} MB (+{hwm - hwm0:.1f})")
            verdict = "within" if worst < TARGET_MB else "OVER"
            print(f"largest growth {worst:.1f} MB: {verdict} the {TARGET_MB:.0f} MB target")
            return 0 if worst < TARGET_MB else 1
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
