"""Direct mode through the Kubernetes API, against a fake API server on a real loopback HTTP
server (fake_kube.py) with a kubeconfig pointing at it."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterator

import pytest

from components.common.config import Config, load_config
from components.deploy.crd import validate_manifest
from components.deploy.direct import NoKubeconfig, apply_manifest, get_inferenceservice
from components.deploy.inferenceservice import canary_manifest, init_manifest, promote_manifest
from components.deploy.logic import DeployRefused, deploy
from tests.components.deploy.conftest import CHALLENGER, CHAMPION, CRD, live_object
from tests.components.deploy.fake_kube import FakeKube, start_fake_kube

ISVC = "/apis/serving.kserve.io/v1beta1/namespaces/duplexalign/inferenceservices"


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    k = start_fake_kube(secrets.token_hex(8))
    yield k
    assert k.server is not None
    k.server.shutdown()
    k.server.server_close()


@pytest.fixture
def direct_cfg(kube: FakeKube, tmp_path: Path) -> Config:
    return load_config("ci", overrides=[
        "deploy.mode=direct", f"deploy.kubeconfig={kube.kubeconfig(tmp_path / 'kubeconfig')}",
        f"deploy.gitops_repo={tmp_path / 'unused'}"])


def test_apply_creates_then_replaces_whole(direct_cfg: Config, kube: FakeKube) -> None:
    assert get_inferenceservice(direct_cfg) is None
    stable = init_manifest(direct_cfg, CHAMPION)
    made = apply_manifest(direct_cfg, stable)
    assert (made.action, made.generation) == ("created", 1)
    assert apply_manifest(direct_cfg, stable).action == "unchanged"
    canary = canary_manifest(direct_cfg, stable, CHALLENGER, 10)
    assert apply_manifest(direct_cfg, canary).generation == 2
    # promotion removes the field on the server too (a whole replace, not a merge patch)
    promoted = promote_manifest(canary)
    assert apply_manifest(direct_cfg, promoted).generation == 3
    live = get_inferenceservice(direct_cfg)
    assert live is not None and "canaryTrafficPercent" not in live["spec"]["predictor"]
    assert live["spec"] == promoted["spec"]
    assert [m for m, _ in kube.requests] == ["GET", "GET", "POST", "GET", "GET", "PUT", "GET",
                                             "PUT", "GET"]


def test_no_kubeconfig_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config("ci", overrides=["deploy.mode=direct"])
    with pytest.raises(NoKubeconfig, match="needs a kubeconfig"):
        get_inferenceservice(cfg)


def test_wrong_token_is_refused(direct_cfg: Config, kube: FakeKube) -> None:
    from kubernetes.client.exceptions import ApiException

    kube.token = "rotated"
    with pytest.raises(ApiException) as err:
        get_inferenceservice(direct_cfg)
    assert err.value.status == 401


def test_deploy_steps_in_direct_mode(direct_cfg: Config, kube: FakeKube, tmp_path: Path) -> None:
    """deploy(): plans against the LIVE object, applies only with apply=True, status by GET."""
    from components.deploy.direct import manifest_view
    from components.deploy.gitops import plan_step
    from tests.components.deploy.conftest import promote_record

    # init/canary resolve models from the registry; served= is plan_step's seam for that, so
    # apply the plans the same way deploy() does
    plan = plan_step(direct_cfg, "init", served=CHAMPION, current_manifest={})
    apply_manifest(direct_cfg, plan.manifest)
    live = get_inferenceservice(direct_cfg)

    record = promote_record(CHALLENGER.model_version, CHAMPION.model_version)
    plan = plan_step(direct_cfg, "canary", served=CHALLENGER, decision=record,
                     current_manifest=manifest_view(live), percent=15)
    assert apply_manifest(direct_cfg, plan.manifest).action == "replaced"
    kube.set_status("duplexalign", direct_cfg.deploy.name,
                    live_object(plan.manifest, latest_percent=15)["status"])
    validate_manifest(get_inferenceservice(direct_cfg), CRD)

    # status over the API: healthy canary, nothing to move
    during = deploy(direct_cfg, "status")
    assert during.finalize["health"]["healthy"] and during.finalize["step"] == "canary"
    # promote without --apply: a plan only, the cluster unchanged
    before = len([r for r in kube.requests if r[0] == "PUT"])
    dry = deploy(direct_cfg, "promote", decision=record)
    assert dry.applied is None
    assert dry.change["changed_paths"] == ["/spec/predictor/canaryTrafficPercent"]
    assert len([r for r in kube.requests if r[0] == "PUT"]) == before
    # rollback commit 1 applied directly: 0% at once
    rolled = deploy(direct_cfg, "rollback", apply=True)
    assert rolled.applied["action"] == "replaced"
    assert get_inferenceservice(direct_cfg)["spec"]["predictor"]["canaryTrafficPercent"] == 0
    with pytest.raises(DeployRefused, match="--commit is for GitOps mode"):
        deploy(direct_cfg, "rollback", commit=True)
    assert not (tmp_path / "unused").exists()  # direct mode writes no GitOps files
