"""The embedded MLflow tracking server, with its artifacts in the S3 bucket.

The server runs with ``--artifacts-destination s3://<bucket>/mlflow-artifacts`` (artifact
proxying): clients upload artifacts over HTTP to MLflow, and MLflow writes them to S3. Only the
server needs S3 credentials, exactly as in a cluster, where the tracking server has the secret
and training pods do not.

The S3 endpoint and keys reach the child process through its environment only (boto3 reads
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, MLflow reads ``MLFLOW_S3_ENDPOINT_URL``):
never a command-line flag (``/proc/<pid>/cmdline`` is world-readable) and never logged.
``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` stops MLflow 3.x from starting ~7 job-runner
worker processes that a local platform does not need (and that slow startup on 2 cores).
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from pipelines.services.procutil import ProcessRecord, free_ports, log_tail, port_is_free, spawn
from pipelines.services.procutil import stop as stop_processes
from pipelines.services.procutil import verify

STOP_TIMEOUT_S = 15.0
ARTIFACTS_PREFIX = "mlflow-artifacts"

# Variables from the caller's environment that would silently change which credentials or
# endpoint boto3 uses inside the server; the server must use exactly the ones we pass.
_SCRUBBED_ENV = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "MLFLOW_TRACKING_URI",
)


@dataclass
class MlflowInstance:
    state_dir: str
    host: str
    port: int
    process: ProcessRecord
    started_at: str
    artifacts_destination: str
    backend_store_uri: str
    # The S3 endpoint the server was started against: if SeaweedFS comes back on another port,
    # the manager must restart MLflow too.
    s3_endpoint_url: str = ""

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "state_dir": self.state_dir,
            "host": self.host,
            "port": self.port,
            "process": self.process.to_dict(),
            "started_at": self.started_at,
            "artifacts_destination": self.artifacts_destination,
            "backend_store_uri": self.backend_store_uri,
            "s3_endpoint_url": self.s3_endpoint_url,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MlflowInstance":
        return cls(
            state_dir=str(data["state_dir"]),
            host=str(data["host"]),
            port=int(data["port"]),
            process=ProcessRecord.from_dict(data["process"]),
            started_at=str(data.get("started_at", "")),
            artifacts_destination=str(data.get("artifacts_destination", "")),
            backend_store_uri=str(data.get("backend_store_uri", "")),
            s3_endpoint_url=str(data.get("s3_endpoint_url", "")),
        )

    def is_running(self) -> bool:
        return verify(self.process) is not None


def backend_store_uri(state_dir: Path) -> str:
    return f"sqlite:///{Path(state_dir).resolve() / 'mlflow.db'}"


def build_command(
    state_dir: Path, host: str, port: int, artifacts_destination: str
) -> list[str]:
    # ``python -m mlflow`` with *this* interpreter: the venv's mlflow, whatever PATH says.
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri(state_dir),
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def server_env(
    s3_endpoint_url: str, credentials: tuple[str, str], region: str = "us-east-1"
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update(
        {
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_S3_ENDPOINT_URL": s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": credentials[0],
            "AWS_SECRET_ACCESS_KEY": credentials[1],
            "AWS_DEFAULT_REGION": region,
            # Server logs go to a file: keep them unbuffered so a crash leaves the reason there.
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_mlflow(
    state_dir: Path,
    *,
    s3_endpoint_url: str,
    credentials: tuple[str, str],
    bucket: str,
    host: str = "127.0.0.1",
    port: int = 0,
    region: str = "us-east-1",
    timeout_s: float = 60.0,
    log_path: Path | None = None,
    previous_port: int | None = None,
    wait: bool = True,
) -> MlflowInstance:
    """Start ``mlflow server`` and wait until ``/health`` answers. ``port=0`` picks a free port
    (the previous one of this state dir when still free, so the tracking URI stays stable).

    MLflow needs S3 only when an artifact is logged, not to start, so it can be spawned
    (``wait=False``) while SeaweedFS is still starting; :func:`wait_healthy` then waits."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if port:
        if not port_is_free(port, host):
            raise RuntimeError(f"MLflow port {host}:{port} is already in use")
    elif previous_port and port_is_free(previous_port, host):
        port = previous_port
    else:
        port = free_ports(1, host)[0]
    destination = f"s3://{bucket}/{ARTIFACTS_PREFIX}"
    log_path = log_path or state_dir / "logs" / "mlflow.log"
    record = spawn(
        build_command(state_dir, host, port, destination),
        log_path,
        env=server_env(s3_endpoint_url, credentials, region),
        cwd=state_dir,
        markers=["mlflow", "server", backend_store_uri(state_dir), f"--port {port}"],
    )
    instance = MlflowInstance(
        state_dir=str(state_dir),
        host=host,
        port=port,
        process=record,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        artifacts_destination=destination,
        backend_store_uri=backend_store_uri(state_dir),
        s3_endpoint_url=s3_endpoint_url,
    )
    if not wait:
        return instance
    try:
        wait_healthy(instance, timeout_s, log_path)
    except BaseException:
        stop_mlflow(instance, timeout_s=5.0)
        raise
    return instance


def is_healthy(tracking_uri: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{tracking_uri}/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def wait_healthy(instance: MlflowInstance, timeout_s: float, log_path: Path | None = None) -> None:
    log_path = log_path or Path(instance.state_dir) / "logs" / "mlflow.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if verify(instance.process) is None:
            raise RuntimeError(f"MLflow exited during startup; log {log_path}:\n{log_tail(log_path)}")
        if is_healthy(instance.tracking_uri):
            return
        time.sleep(0.3)
    raise RuntimeError(
        f"MLflow on {instance.tracking_uri} not healthy after {timeout_s:.0f}s; "
        f"log {log_path}:\n{log_tail(log_path)}"
    )


def stop_mlflow(instance: MlflowInstance, timeout_s: float = STOP_TIMEOUT_S) -> str:
    """Stop by PID (verified), including the web-server child in its process group."""
    outcome = stop_processes([instance.process], timeout_s=timeout_s)
    return outcome.get(instance.process.pid, "not running")
