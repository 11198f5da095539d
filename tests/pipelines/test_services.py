"""The local platform manager: up / status / idempotency / down, PID safety, MLflow → S3."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from components.common.config import load_config
from components.common.storage import ObjectStore, load_s3_credentials
from pipelines.services import seaweedfs
from pipelines.services.manager import (
    config_with_live_endpoints,
    services_down,
    services_status,
    services_up,
)
from pipelines.services.procutil import ProcessRecord, start_ticks

pytestmark = pytest.mark.integration


def _cfg(state_dir: Path):
    return load_config(
        "ci",
        overrides=[
            f"services.state_dir={state_dir}",
            "services.s3_port=0",
            "services.mlflow_port=0",
            f"consent.dsn=sqlite:///{state_dir}/consent.db",
        ],
    )


def test_up_status_up_again_down(tmp_path: Path, services_config) -> None:
    """A second, independent instance next to the session's one (ports never collide)."""
    cfg = _cfg(tmp_path / "state")
    lines: list[str] = []
    state = services_up(cfg, echo=lines.append)
    assert state.seaweedfs is not None and state.mlflow is not None
    try:
        assert any(line.startswith("seaweedfs  started") for line in lines)
        assert any(line.startswith("mlflow     started") for line in lines)
        status = services_status(cfg)
        assert status["running"] is True
        assert status["services"]["seaweedfs"]["healthy"] and status["services"]["mlflow"]["healthy"]
        assert status["services"]["seaweedfs"]["s3_endpoint"] != services_config.storage.endpoint

        # Secrets: generated, private, reused; never on a command line.
        sd = Path(cfg.services.state_dir)
        creds_file = sd / "secrets" / "s3-credentials.json"
        assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(seaweedfs.identities_path(sd).stat().st_mode) == 0o600
        secret = json.loads(creds_file.read_text())["secret_key"]
        for inst in (state.seaweedfs, state.mlflow):
            assert inst is not None
            proc = psutil.Process(inst.process.pid)
            for p in [proc, *proc.children(recursive=True)]:
                assert secret not in " ".join(p.cmdline())
        assert secret not in (sd / "services.json").read_text()
        for log in (sd / "logs").glob("*.log"):
            assert secret not in log.read_text(errors="replace"), f"secret leaked into {log}"

        # Up again: a no-op (same PIDs, nothing started).
        t0 = time.monotonic()
        lines.clear()
        again = services_up(cfg, echo=lines.append)
        assert again.seaweedfs is not None and again.mlflow is not None
        assert time.monotonic() - t0 < 2.0
        assert again.seaweedfs.process.pid == state.seaweedfs.process.pid
        assert again.mlflow.process.pid == state.mlflow.process.pid
        assert all("already running" in line for line in lines)

        # The live config reaches this instance, the session's instance is unaffected.
        live = config_with_live_endpoints(cfg)
        assert load_s3_credentials(live.storage)[1] == secret
        s = ObjectStore.from_config(live.storage, prefix=f"t-{uuid.uuid4().hex[:6]}")
        s.put_bytes("k", b"v")
        assert s.get_bytes("k") == b"v"
        assert ObjectStore.from_config(services_config.storage).exists("no-such-key") is False
    finally:
        result = services_down(cfg, echo=None)
    assert result == {"seaweedfs": "terminated", "mlflow": "terminated"}
    assert not psutil.pid_exists(state.seaweedfs.process.pid) or \
        psutil.Process(state.seaweedfs.process.pid).status() == psutil.STATUS_ZOMBIE
    assert services_status(cfg)["running"] is False
    assert services_down(cfg, echo=None) == {"seaweedfs": "not running", "mlflow": "not running"}
    with pytest.raises(RuntimeError, match="services up"):
        config_with_live_endpoints(cfg)


def test_stale_state_file_never_kills_a_stranger(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "state")
    sd = Path(cfg.services.state_dir)
    sd.mkdir(parents=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks = start_ticks(stranger.pid)
        create = psutil.Process(stranger.pid).create_time()
        # 1) The PID was recycled: same PID and even a matching command line, other start time.
        recycled = ProcessRecord(stranger.pid, create - 100, ["time.sleep"], (ticks or 0) - 1000)
        # 2) Same PID and start time (as if the file were forged), but not our server's command.
        foreign = ProcessRecord(stranger.pid, create, ["mlflow", "server", f"sqlite:///{sd}"], ticks)
        ports = dict.fromkeys(
            ["s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc"], 1)
        state = {
            "version": 1,
            "state_dir": str(sd),
            "seaweedfs": {"state_dir": str(sd), "host": "127.0.0.1", "ports": ports,
                          "process": recycled.to_dict(), "started_at": "2020-01-01T00:00:00+00:00"},
            "mlflow": {"state_dir": str(sd), "host": "127.0.0.1", "port": 1,
                       "process": foreign.to_dict(), "started_at": "2020-01-01T00:00:00+00:00"},
        }
        (sd / "services.json").write_text(json.dumps(state))

        status = services_status(cfg)
        assert status["running"] is False
        assert not status["services"]["seaweedfs"]["running"]
        assert not status["services"]["mlflow"]["running"]
        assert services_down(cfg, echo=None) == {"seaweedfs": "not running", "mlflow": "not running"}
        time.sleep(0.2)
        assert stranger.poll() is None, "a stranger process was killed"
    finally:
        stranger.kill()
        stranger.wait()


def test_mlflow_artifact_lands_in_the_s3_bucket(services_config) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=services_config.mlflow.tracking_uri)
    exp_id = client.create_experiment(f"test-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp_id)
    client.log_text(run.info.run_id, "hello from a test", "notes/hello.txt")
    client.set_terminated(run.info.run_id)

    store = ObjectStore.from_config(services_config.storage)
    key = f"mlflow-artifacts/{exp_id}/{run.info.run_id}/artifacts/notes/hello.txt"
    assert store.get_bytes(key) == b"hello from a test"
    # And MLflow reads it back through its artifact proxy.
    assert client.download_artifacts(run.info.run_id, "notes/hello.txt")
