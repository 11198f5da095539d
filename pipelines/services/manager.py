"""``duplexalign services up|down|status``: the local (embedded) platform.

Runs the real servers the cluster would provide, on loopback, from one state dir:

* SeaweedFS (S3): the data bucket and the ground-truth bucket, versioned;
* MLflow tracking server, artifacts proxied into ``s3://<data bucket>/mlflow-artifacts``;
* the consent registry needs no server locally (sqlite file, see ``components.common.consent``).

State lives in ``<state_dir>/services.json`` (ports, PIDs, start times), server logs in
``<state_dir>/logs/``. ``up`` and ``down`` are idempotent, serialised by a lock file, and a PID
from the state file is only signalled after it is verified to still be *our* server (same start
time, command line naming this state dir), so a stale file never kills a stranger.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from components.common.config import Config
from pipelines.services import mlflow_server, seaweedfs
from pipelines.services.mlflow_server import MlflowInstance
from pipelines.services.procutil import stop as stop_processes
from pipelines.services.seaweedfs import SeaweedInstance

STATE_FILE = "services.json"
STATE_VERSION = 1

Echo = Callable[[str], None]


@dataclass
class ServicesState:
    """What ``services.json`` holds: one record per server (None = never started)."""

    state_dir: str
    seaweedfs: SeaweedInstance | None = None
    mlflow: MlflowInstance | None = None
    updated_at: str = ""
    stopped_at: str | None = None

    @property
    def s3_endpoint(self) -> str | None:
        return self.seaweedfs.s3_endpoint if self.seaweedfs else None

    @property
    def tracking_uri(self) -> str | None:
        return self.mlflow.tracking_uri if self.mlflow else None

    @property
    def credentials_file(self) -> Path:
        return seaweedfs.credentials_path(Path(self.state_dir))

    def running(self) -> dict[str, bool]:
        return {
            "seaweedfs": bool(self.seaweedfs and self.seaweedfs.is_running()),
            "mlflow": bool(self.mlflow and self.mlflow.is_running()),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "state_dir": self.state_dir,
            "updated_at": self.updated_at,
            "stopped_at": self.stopped_at,
            "seaweedfs": self.seaweedfs.to_dict() if self.seaweedfs else None,
            "mlflow": self.mlflow.to_dict() if self.mlflow else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServicesState":
        return cls(
            state_dir=str(data["state_dir"]),
            seaweedfs=SeaweedInstance.from_dict(data["seaweedfs"]) if data.get("seaweedfs") else None,
            mlflow=MlflowInstance.from_dict(data["mlflow"]) if data.get("mlflow") else None,
            updated_at=str(data.get("updated_at", "")),
            stopped_at=data.get("stopped_at"),
        )


# --------------------------------------------------------------------------------------------
# State file


def state_dir_of(cfg: Config) -> Path:
    return Path(cfg.services.state_dir).expanduser().resolve()


def state_path(cfg: Config) -> Path:
    return state_dir_of(cfg) / STATE_FILE


def load_state(cfg: Config) -> ServicesState | None:
    """The recorded state, or None when there is none (or it is unreadable: treated as absent,
    since nothing in it could be verified anyway)."""
    path = state_path(cfg)
    try:
        return ServicesState.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_state(state: ServicesState) -> None:
    state.updated_at = _now()
    path = Path(state.state_dir) / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state.to_dict(), indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a crash never leaves half a state file


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise up/down of one state dir (two terminals, a test and a CLI, ...)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "services.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# up / down / status


def services_up(cfg: Config, echo: Echo | None = print) -> ServicesState:
    """Start whatever of the local services is not running; a no-op when all are up."""
    say: Echo = echo or (lambda _msg: None)
    sd = state_dir_of(cfg)
    svc = cfg.services
    with _locked(sd):
        previous = load_state(cfg)
        state = previous or ServicesState(state_dir=str(sd))
        state.state_dir = str(sd)
        running = state.running()
        if all(running.values()):
            assert state.seaweedfs and state.mlflow
            say(f"seaweedfs  already running  s3={state.seaweedfs.s3_endpoint} "
                f"(pid {state.seaweedfs.process.pid})")
            say(f"mlflow     already running  {state.mlflow.tracking_uri} "
                f"(pid {state.mlflow.process.pid})")
            return state

        buckets = [cfg.storage.bucket, cfg.storage.groundtruth_bucket]
        launched_sw: SeaweedInstance | None = None
        launched_ml: MlflowInstance | None = None
        t0 = time.monotonic()
        try:
            if not running["seaweedfs"]:
                launched_sw = seaweedfs.start_seaweedfs(
                    sd,
                    host=svc.host,
                    s3_port=svc.s3_port,
                    master_port=svc.seaweedfs_master_port,
                    volume_port=svc.seaweedfs_volume_port,
                    filer_port=svc.seaweedfs_filer_port,
                    buckets=buckets,
                    timeout_s=svc.startup_timeout_s,
                    previous_ports=state.seaweedfs.ports if state.seaweedfs else None,
                    wait=False,
                )
                state.seaweedfs = launched_sw
            assert state.seaweedfs is not None
            s3_url = f"http://{state.seaweedfs.s3_endpoint}"
            credentials = seaweedfs.ensure_credentials(sd)
            if running["mlflow"] and state.mlflow and state.mlflow.s3_endpoint_url != s3_url:
                # S3 came back elsewhere: MLflow holds the old endpoint in its environment.
                say("mlflow     restarting (S3 endpoint changed)")
                mlflow_server.stop_mlflow(state.mlflow, timeout_s=svc.stop_timeout_s)
                running["mlflow"] = False
            if not running["mlflow"]:
                # Spawned before SeaweedFS is ready on purpose: both start in parallel.
                launched_ml = mlflow_server.start_mlflow(
                    sd,
                    s3_endpoint_url=s3_url,
                    credentials=credentials,
                    bucket=cfg.storage.bucket,
                    host=svc.host,
                    port=svc.mlflow_port,
                    region=cfg.storage.region,
                    timeout_s=svc.startup_timeout_s,
                    previous_port=state.mlflow.port if state.mlflow else None,
                    wait=False,
                )
                state.mlflow = launched_ml
            if launched_sw is not None:
                seaweedfs.wait_ready(launched_sw, credentials, buckets, svc.startup_timeout_s)
                say(f"seaweedfs  started  s3={launched_sw.s3_endpoint} "
                    f"buckets={','.join(buckets)} (pid {launched_sw.process.pid}, "
                    f"{time.monotonic() - t0:.1f}s)")
            else:
                say(f"seaweedfs  already running  s3={state.seaweedfs.s3_endpoint}")
            if launched_ml is not None:
                remaining = max(5.0, svc.startup_timeout_s - (time.monotonic() - t0))
                mlflow_server.wait_healthy(launched_ml, remaining)
                say(f"mlflow     started  {launched_ml.tracking_uri} "
                    f"(pid {launched_ml.process.pid}, {time.monotonic() - t0:.1f}s)")
            else:
                assert state.mlflow is not None
                say(f"mlflow     already running  {state.mlflow.tracking_uri}")
        except BaseException:
            # Leave nothing half-started behind; what was already running stays running.
            stop_processes(
                [p.process for p in (launched_sw, launched_ml) if p is not None], timeout_s=5.0
            )
            raise
        state.stopped_at = None
        _save_state(state)
        say(f"state      {sd / STATE_FILE} (logs in {sd / 'logs'})")
        return state


def services_down(cfg: Config, echo: Echo | None = print) -> dict[str, str]:
    """Stop the recorded services (verified PIDs only); a no-op when nothing runs.

    Both servers are signalled first and waited for together: SeaweedFS alone needs ~17 s to
    stop gracefully, so stopping in sequence would add MLflow's time on top.
    Returns ``{"seaweedfs": outcome, "mlflow": outcome}``.
    """
    say: Echo = echo or (lambda _msg: None)
    sd = state_dir_of(cfg)
    if not (sd / STATE_FILE).exists():
        say("services   not running (no state file)")
        return {}
    with _locked(sd):
        state = load_state(cfg)
        if state is None:
            say("services   not running (unreadable state file)")
            return {}
        named = {"seaweedfs": state.seaweedfs, "mlflow": state.mlflow}
        records = {name: inst.process for name, inst in named.items() if inst is not None}
        outcome_by_pid = stop_processes(records.values(), timeout_s=cfg.services.stop_timeout_s)
        result: dict[str, str] = {}
        for name, record in records.items():
            result[name] = outcome_by_pid.get(record.pid, "not running")
            say(f"{name:<10} {result[name]}")
        if state.seaweedfs is not None and not state.seaweedfs.is_running():
            seaweedfs._remove_stale_sockets(state.seaweedfs.ports)  # noqa: SLF001 - same package
        # Keep the file (ports are reused on the next `up`), marked stopped.
        state.stopped_at = _now()
        _save_state(state)
        return result


def _mask_dsn(dsn: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return dsn


def _http_answers(url: str, timeout_s: float = 2.0) -> bool:
    """True if anything HTTP answers at ``url`` (a 403 from S3 without credentials counts)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, urllib.error.URLError):
        return False


def services_status(cfg: Config) -> dict[str, Any]:
    """What runs, where, since when; safe to print (no secrets)."""
    sd = state_dir_of(cfg)
    state = load_state(cfg)
    out: dict[str, Any] = {
        "state_dir": str(sd),
        "state_file": str(sd / STATE_FILE),
        "logs": str(sd / "logs"),
        "services": {},
    }
    sw = state.seaweedfs if state else None
    ml = state.mlflow if state else None
    sw_running = bool(sw and sw.is_running())
    ml_running = bool(ml and ml.is_running())
    out["services"]["seaweedfs"] = {
        "running": sw_running,
        "pid": sw.process.pid if sw else None,
        "started_at": sw.started_at if sw else None,
        "s3_endpoint": sw.s3_endpoint if sw else None,
        "ports": sw.ports.__dict__ if sw else None,
        "healthy": bool(sw_running and sw and _http_answers(f"http://{sw.s3_endpoint}/")),
        "credentials_file": str(seaweedfs.credentials_path(sd)),
    }
    out["services"]["mlflow"] = {
        "running": ml_running,
        "pid": ml.process.pid if ml else None,
        "started_at": ml.started_at if ml else None,
        "tracking_uri": ml.tracking_uri if ml else None,
        "artifacts_destination": ml.artifacts_destination if ml else None,
        "healthy": bool(ml_running and ml and mlflow_server.is_healthy(ml.tracking_uri)),
    }
    # The consent registry is a sqlite file locally (no server to run); shown for completeness,
    # with any password in the DSN masked.
    out["consent"] = {"dsn": _mask_dsn(cfg.consent.dsn)}
    out["running"] = sw_running and ml_running
    return out


def config_with_live_endpoints(cfg: Config, state: ServicesState | None = None) -> Config:
    """``cfg`` with storage and MLflow pointing at the running local services.

    Raises RuntimeError when they are not running, rather than handing back a config that
    points at nothing.
    """
    state = state or load_state(cfg)
    if state is None or state.seaweedfs is None or state.mlflow is None:
        raise RuntimeError("local services are not running; run `duplexalign services up`")
    running = state.running()
    if not all(running.values()):
        down = ", ".join(name for name, ok in running.items() if not ok)
        raise RuntimeError(f"local services not running ({down}); run `duplexalign services up`")
    new = cfg.model_copy(deep=True)
    new.storage = new.storage.model_copy(
        update={
            "endpoint": state.seaweedfs.s3_endpoint,
            "secure": False,
            "credentials_file": str(state.credentials_file),
            "seaweedfs_master_url": state.seaweedfs.master_url,
        }
    )
    new.mlflow = new.mlflow.model_copy(update={"tracking_uri": state.mlflow.tracking_uri})
    return new


def vacuum_storage(cfg: Config) -> int | None:
    """Reclaim deleted bytes of the *local* SeaweedFS (after scrubbing / consent withdrawal).

    Returns bytes reclaimed, or None when no local SeaweedFS runs for this state dir (a cluster
    object store reclaims space on its own terms).
    """
    state = load_state(cfg)
    if state is None or state.seaweedfs is None or not state.seaweedfs.is_running():
        return None
    return seaweedfs.vacuum(state.seaweedfs.master_url, state.seaweedfs.data_dir)
