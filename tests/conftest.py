"""Session-wide test infrastructure: the real local platform, started once per test session.

* ``services_config``: SeaweedFS (S3) and MLflow started ONCE per session by the project's own
  manager (``pipelines.services.manager``) on free loopback ports in a temp state dir, and stopped
  by their own recorded PIDs at the end. The tests therefore run next to a developer's
  ``duplexalign services up`` instance without touching it.
* ``store``: an ObjectStore on the data bucket, narrowed to a unique key prefix per test (so
  tests never see each other's objects), emptied (every version) afterwards.
* ``postgres_dsn`` / ``postgres_password``: a real PostgreSQL (initdb in a temp dir, as an
  unprivileged user since PostgreSQL refuses to run as root, free port, unix socket in the temp
  dir, password auth). Skipped with a reason only when no PostgreSQL binaries exist.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from components.common.config import Config, load_config
from components.common.storage import ObjectStore
from pipelines.services.manager import (
    ServicesState,
    config_with_live_endpoints,
    services_down,
    services_up,
)
from pipelines.services.procutil import free_ports, verify

# --------------------------------------------------------------------------------------------
# Live services (SeaweedFS + MLflow)


@dataclass
class LocalServices:
    base_config: Config  # the config the manager was called with (state dir, ports 0)
    config: Config  # the same with live endpoints filled in
    state: ServicesState


@pytest.fixture(scope="session")
def local_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServices]:
    state_dir = tmp_path_factory.mktemp("services")
    with pytest.MonkeyPatch.context() as mp:
        # A developer's (or CI's) cluster credentials in the environment would win over the
        # local credentials file and be refused by the local server: hide them for the session.
        for name in ("DUPLEXALIGN_S3_ACCESS_KEY", "DUPLEXALIGN_S3_SECRET_KEY"):
            mp.delenv(name, raising=False)
        base = load_config(
            "ci",
            overrides=[
                f"services.state_dir={state_dir}",
                "services.s3_port=0",  # free ports: never collide with `services up` (8333/5000)
                "services.mlflow_port=0",
                f"storage.credentials_file={state_dir}/secrets/s3-credentials.json",
                f"consent.dsn=sqlite:///{state_dir}/consent.db",
                f"pipeline.pipeline_root={state_dir}/pipeline-root",
            ],
        )
        state = services_up(base, echo=None)
        try:
            yield LocalServices(base, config_with_live_endpoints(base, state), state)
        finally:
            services_down(base, echo=None)
            # Belt and braces: the recorded PIDs must be gone now (stopped by their own PIDs).
            leftovers = [
                inst.process.pid
                for inst in (state.seaweedfs, state.mlflow)
                if inst is not None and verify(inst.process) is not None
            ]
            assert not leftovers, f"services still running after teardown: {leftovers}"


@pytest.fixture(scope="session")
def services_config(local_services: LocalServices) -> Config:
    """A Config whose storage and MLflow point at the session's live local services."""
    return local_services.config


@pytest.fixture(scope="session")
def services_state(local_services: LocalServices) -> ServicesState:
    return local_services.state


def _prefix_for(node_name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", node_name).strip("-")[:60]
    return f"tests/{clean}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store(services_config: Config, request: pytest.FixtureRequest) -> Iterator[ObjectStore]:
    """ObjectStore on the data bucket under a unique per-test prefix; emptied afterwards."""
    s = ObjectStore.from_config(services_config.storage, prefix=_prefix_for(request.node.name))
    yield s
    s.delete_prefix_all_versions("")


# --------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([0-9.]+)/", path)
    return tuple(int(p) for p in match.group(1).split(".")) if match else (0,)


def find_postgres_bindir() -> Path | None:
    """The folder holding initdb/pg_ctl/postgres: from PATH (symlinks resolved, Debian's
    /usr/bin wrappers are not the real binaries) or the newest /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_pg_version_key,
                        reverse=True):
        candidates.append(Path(found).parent)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int
    user: str
    password: str
    run_as: pwd.struct_passwd | None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool as the unprivileged owner of the data dir."""
        kwargs: dict = {}
        if self.run_as is not None:
            # PostgreSQL refuses to run as root. Drop to the unprivileged user, including the
            # supplementary groups (extra_groups=[]), or the server would keep root's groups.
            kwargs = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}
        env = {"PATH": f"{self.bindir}:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "HOME": str(self.root)}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.root,  # root's cwd may not be readable by the unprivileged user
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **kwargs,
        )


def _unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None  # already unprivileged: run as ourselves
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = find_postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (pg_ctl/initdb) on PATH or in "
                    "/usr/lib/postgresql/*/bin; `make system-deps` installs them")
    run_as = _unprivileged_user()
    # Directly under /tmp: pytest's own tmp dirs are 0700 root-owned, which the unprivileged
    # user cannot traverse; a short path also keeps the unix socket path under 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="duplexalign-pg-", dir="/tmp"))
    server = PostgresServer(bindir, root, free_ports(1)[0], "duplexalign",
                            secrets.token_urlsafe(16), run_as)
    pwfile = root / "pwfile"
    pwfile.write_text(server.password + "\n")
    os.chmod(pwfile, 0o600)
    if run_as is not None:
        os.chown(root, run_as.pw_uid, run_as.pw_gid)
        os.chown(pwfile, run_as.pw_uid, run_as.pw_gid)
    started = False
    try:
        init = server.run(
            "initdb", "-D", str(server.datadir), "-U", server.user, "--pwfile", str(pwfile),
            "--auth=scram-sha-256", "-E", "UTF8", "--no-sync",
        )
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        pwfile.unlink()
        # Loopback TCP (what the DSN uses) plus a unix socket inside the temp dir (never the
        # system's /var/run/postgresql). Durability settings off: a throwaway test database.
        opts = (f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        start = server.run("pg_ctl", "-D", str(server.datadir), "-l", str(root / "server.log"),
                           "-o", opts, "-w", "-t", "60", "start")
        log = (root / "server.log").read_text(errors="replace") if (root / "server.log").exists() else ""
        assert start.returncode == 0, f"pg_ctl start failed:\n{start.stdout}\n{start.stderr}\n{log}"
        started = True
        yield server
    finally:
        if started:
            stop = server.run("pg_ctl", "-D", str(server.datadir), "-m", "fast", "-w", "stop")
            if stop.returncode != 0:
                server.run("pg_ctl", "-D", str(server.datadir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """``postgresql://duplexalign@127.0.0.1:<port>/postgres`` (password: ``postgres_password``)."""
    return postgres_server.dsn


@pytest.fixture(scope="session")
def postgres_password(postgres_server: PostgresServer) -> str:
    return postgres_server.password


# --------------------------------------------------------------------------------------------
# Per-test isolation for stage tests (a fresh bucket, consent registry and key per test)

from tests.support.stage import stage_cfg, stage_store  # noqa: E402,F401  (fixtures)

from tests.support.redis import redis_server  # noqa: E402,F401  (Feast online store on Redis)
