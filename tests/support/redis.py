"""A real Redis for the tests: Debian's ``redis-server`` on a free loopback port, in a temp dir.

Started once per session (``redis_server``), with persistence off (``--save '' --appendonly
no``), protected by a random password, and stopped by its own PID at the end. Skipped with a
reason only when the binary is absent (``make system-deps`` installs it)."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.services.procutil import free_ports


@dataclass
class RedisServer:
    host: str
    port: int
    password: str
    root: Path

    @property
    def connection_string(self) -> str:
        """Feast's format, without the password (it comes from an env var)."""
        return f"{self.host}:{self.port}"


def _ping(host: str, port: int, password: str) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            sock.settimeout(0.5)
            data = b""
            while b"PONG" not in data:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
            return b"PONG" in data
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if binary is None:
        pytest.skip("no redis-server binary on PATH; `make system-deps` installs Debian's "
                    "redis-server")
    root = Path(tempfile.mkdtemp(prefix="duplexalign-redis-"))
    server = RedisServer("127.0.0.1", free_ports(1)[0], secrets.token_urlsafe(16), root)
    log = open(root / "redis.log", "wb")
    proc = subprocess.Popen(
        [binary, "--port", str(server.port), "--bind", server.host, "--dir", str(root),
         "--save", "", "--appendonly", "no", "--requirepass", server.password,
         "--daemonize", "no", "--protected-mode", "yes"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        deadline = time.monotonic() + 20
        while not _ping(server.host, server.port, server.password):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start:\n" +
                                   (root / "redis.log").read_text(errors="replace"))
            time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
