"""Deploy test fixtures: the vendored InferenceService CRD, a GitOps checkout, sample models."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from components.common.config import Config, load_config
from components.deploy.inferenceservice import ServedModel

CRD = (Path(__file__).resolve().parents[2] / "data" / "crds"
       / "serving.kserve.io_inferenceservices.yaml")

CHAMPION = ServedModel("duplexalign-moshi/4", "s3://duplexalign/mlflow-artifacts/1/aaa/artifacts/"
                       "checkpoint/", "duplexalign-moshi", "4", "a" * 64)
CHALLENGER = ServedModel("duplexalign-moshi/5", "s3://duplexalign/mlflow-artifacts/1/bbb/"
                         "artifacts/checkpoint/", "duplexalign-moshi", "5", "b" * 64)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def gitops_repo(tmp_path: Path) -> Path:
    """A GitOps checkout with one commit on main (identity local to the repo)."""
    repo = tmp_path / "gitops"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "test")
    git(repo, "config", "user.email", "test@example.invalid")
    (repo / "README.md").write_text("gitops\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "init")
    return repo


@pytest.fixture
def deploy_cfg(gitops_repo: Path) -> Config:
    return load_config("ci", overrides=[f"deploy.gitops_repo={gitops_repo}"])


def promote_record(challenger: str, champion: str, verdict: str = "promote") -> dict:
    """A decision record as components/evaluate/gate.py stores it (the fields deploy reads)."""
    return {"verdict": verdict, "reasons": [f"{verdict}: test record"],
            "champion": {"model_version": champion}, "challenger": {"model_version": challenger},
            "key": f"reports/gate/{challenger.replace('/', '-')}/decision.json",
            "mlflow_run_id": "0123abcd", "thresholds": {}, "metrics": {}}


def live_object(manifest: dict, *, generation: int = 2, observed: int | None = 2,
                ready: bool = True, created: str = "duplexalign-moshi-predictor-00002",
                ready_rev: str | None = None, latest_percent: int = 100,
                previous_rev: str = "duplexalign-moshi-predictor-00001") -> dict:
    """What ``kubectl get isvc -o json`` shows for ``manifest`` once KServe reconciled it:
    server metadata, Ready condition, the predictor's revisions and Knative traffic split."""
    import copy

    obj = copy.deepcopy(manifest)
    obj["metadata"].update({"generation": generation, "resourceVersion": "4711",
                            "uid": "0b9e6a52-0000-4000-8000-000000000001"})
    traffic = [{"revisionName": created, "latestRevision": True, "percent": latest_percent,
                "tag": "latest"}]
    if latest_percent < 100:
        traffic.append({"revisionName": previous_rev, "latestRevision": False,
                        "percent": 100 - latest_percent, "tag": "prev"})
    obj["status"] = {
        "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                        "lastTransitionTime": "2026-11-27T10:00:00Z"}],
        "components": {"predictor": {"latestCreatedRevision": created,
                                     "latestReadyRevision": ready_rev or created,
                                     "traffic": traffic}},
        "url": "http://duplexalign-moshi.duplexalign.example.com",
    }
    if observed is not None:
        obj["status"]["observedGeneration"] = observed
    return obj
