"""Rendering and the rollout steps as manifest edits, every manifest validated against the
vendored KServe InferenceService CRD (tests/data/crds/)."""

from __future__ import annotations

import copy

import pytest

from components.common.config import Config, load_config
from components.deploy.crd import ManifestInvalid, validate_manifest
from components.deploy.gitops import changed_paths
from components.deploy.inferenceservice import (
    StepRefused,
    canary_manifest,
    init_manifest,
    promote_manifest,
    read_state,
    render_inferenceservice,
    rollback_manifest,
)
from tests.components.deploy.conftest import CHALLENGER, CHAMPION, CRD

P = "/spec/predictor"
M = "/metadata/annotations/duplexalign.io~1"


@pytest.fixture
def cfg() -> Config:
    return load_config("ci")


def test_render_is_a_valid_serverless_custom_predictor(cfg: Config) -> None:
    isvc = init_manifest(cfg, CHAMPION)
    validate_manifest(isvc, CRD)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    pred = isvc["spec"]["predictor"]
    (container,) = pred["containers"]
    assert container["env"][:3] == [{"name": "STORAGE_URI", "value": CHAMPION.storage_uri},
                                    {"name": "DUPLEXALIGN_PROFILE", "value": "production"},
                                    {"name": "DUPLEXALIGN_CONFIG",
                                     "value": "/etc/duplexalign/config.yaml"}]
    # secrets only by reference to existing Secrets, under the names the config reads
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"][3:]}
    assert refs == {cfg.storage.access_key_env: {"name": "duplexalign-s3", "key": "access-key"},
                    cfg.storage.secret_key_env: {"name": "duplexalign-s3", "key": "secret-key"},
                    cfg.scrub.pseudonym_key_env: {"name": "duplexalign-pseudonym", "key": "key"},
                    cfg.consent.dsn_env: {"name": "duplexalign-consent-db", "key": "dsn"}}
    assert all("value" not in e for e in container["env"][3:])
    # the restricted Pod Security Standard: non-root, read-only root, no capabilities
    # (on the container: Knative refuses a pod securityContext without a feature flag)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}
    assert "securityContext" not in pred and "terminationGracePeriodSeconds" not in pred
    assert pred["timeout"] == cfg.deploy.request_timeout_s  # Knative's revision timeout
    assert container["image"] == "ghcr.io/duplexalign/duplexalign-cuda:0.1.0"
    assert [p["containerPort"] for p in container["ports"]] == [8080]  # ONE port (Knative)
    assert container["command"] == ["python", "-m", "serving"]
    args = container["args"]
    assert args[args.index("--model-source") + 1] == "/mnt/models"
    assert args[args.index("--model-version") + 1] == "duplexalign-moshi/4"  # metrics' label
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pred["serviceAccountName"] == cfg.deploy.service_account
    assert (pred["minReplicas"], pred["maxReplicas"]) == (cfg.deploy.min_replicas,
                                                          cfg.deploy.max_replicas)
    assert "canaryTrafficPercent" not in pred
    assert pred["annotations"]["duplexalign.io/model-version"] == "duplexalign-moshi/4"
    assert isvc["metadata"]["labels"]["duplexalign.io/registry-version"] == "4"
    state = read_state(isvc)
    assert (state.served, state.previous, state.phase) == (CHAMPION, None, "stable")


def test_cpu_render_has_no_gpu(cfg: Config) -> None:
    cpu = cfg.model_copy(update={"deploy": cfg.deploy.model_copy(update={"gpu": False})})
    isvc = init_manifest(cpu, CHAMPION)
    validate_manifest(isvc, CRD)
    assert "nvidia.com/gpu" not in str(isvc)


def test_the_crd_catches_what_kubectl_would_refuse(cfg: Config) -> None:
    isvc = init_manifest(cfg, CHAMPION)
    typo = copy.deepcopy(isvc)
    typo["spec"]["predictor"]["canaryTrafficPrecent"] = 10
    with pytest.raises(ManifestInvalid, match="canaryTrafficPrecent"):
        validate_manifest(typo, CRD)
    wrong_type = copy.deepcopy(isvc)
    wrong_type["spec"]["predictor"]["canaryTrafficPercent"] = "10"
    with pytest.raises(ManifestInvalid, match="canaryTrafficPercent"):
        validate_manifest(wrong_type, CRD)
    no_name = copy.deepcopy(isvc)
    del no_name["spec"]["predictor"]["containers"][0]["name"]
    with pytest.raises(ManifestInvalid, match="'name' is a required property"):
        validate_manifest(no_name, CRD)
    no_predictor = copy.deepcopy(isvc)
    del no_predictor["spec"]["predictor"]
    with pytest.raises(ManifestInvalid, match="'predictor' is a required property"):
        validate_manifest(no_predictor, CRD)


def test_canary_then_promote_as_manifest_diffs(cfg: Config) -> None:
    stable = init_manifest(cfg, CHAMPION)
    canary = canary_manifest(cfg, stable, CHALLENGER, 10, "manifests/serving/decisions/x.json")
    promoted = promote_manifest(canary)
    for m in (canary, promoted):
        validate_manifest(m, CRD)
    # the canary: the challenger's template (a new revision) at 10%, the champion recorded
    assert changed_paths(stable, canary) == sorted([
        f"{M}gate-decision",
        f"{M}model-version", f"{M}previous-model-version", f"{M}previous-registry-name",
        f"{M}previous-registry-version", f"{M}previous-storage-uri",
        f"{M}previous-weights-sha256", f"{M}registry-version", f"{M}storage-uri",
        f"{M}weights-sha256",
        "/metadata/labels/duplexalign.io~1registry-version",
        f"{P}/annotations/duplexalign.io~1model-version",
        f"{P}/canaryTrafficPercent",
        f"{P}/containers/0/args/5",  # --model-version
        f"{P}/containers/0/env/0/value",
        f"{P}/labels/duplexalign.io~1model-version",
    ])
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert canary["spec"]["predictor"]["containers"][0]["env"][0]["value"] == \
        CHALLENGER.storage_uri
    # promotion removes the field and touches nothing else: no new revision
    assert changed_paths(canary, promoted) == [f"{P}/canaryTrafficPercent"]
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    assert read_state(promoted).phase == "stable"


def test_canary_then_rollback_as_two_manifest_diffs(cfg: Config) -> None:
    stable = init_manifest(cfg, CHAMPION)
    canary = canary_manifest(cfg, stable, CHALLENGER, 25)
    zero = rollback_manifest(cfg, canary)  # commit 1: instant, traffic back on the champion
    restored = rollback_manifest(cfg, zero)  # commit 2: the champion's URI again
    for m in (zero, restored):
        validate_manifest(m, CRD)
    assert changed_paths(canary, zero) == [f"{P}/canaryTrafficPercent"]
    assert zero["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert read_state(zero).phase == "rolled-back-traffic"
    # commit 2 is the champion's manifest again, plus the record of what was rolled back
    assert changed_paths(stable, restored) == [f"{M}rolled-back"]
    assert restored["metadata"]["annotations"]["duplexalign.io/rolled-back"] == \
        "duplexalign-moshi/5"
    assert restored["spec"]["predictor"]["containers"][0]["env"][0]["value"] == \
        CHAMPION.storage_uri
    assert "canaryTrafficPercent" not in restored["spec"]["predictor"]


def test_steps_refuse_what_does_not_apply(cfg: Config) -> None:
    stable = init_manifest(cfg, CHAMPION)
    canary = canary_manifest(cfg, stable, CHALLENGER, 10)
    with pytest.raises(StepRefused, match="no canary to promote"):
        promote_manifest(stable)
    with pytest.raises(StepRefused, match="nothing to roll back"):
        rollback_manifest(cfg, stable)
    with pytest.raises(StepRefused, match="in progress"):
        canary_manifest(cfg, canary, CHALLENGER, 10)
    with pytest.raises(StepRefused, match="already what the manifest serves"):
        canary_manifest(cfg, stable, CHAMPION, 10)
    with pytest.raises(StepRefused, match="1..99"):
        canary_manifest(cfg, stable, CHALLENGER, 100)
    with pytest.raises(StepRefused, match="was rolled back"):
        promote_manifest(rollback_manifest(cfg, canary))
    with pytest.raises(ValueError, match="not rendered by `duplexalign deploy`"):
        read_state({"kind": "InferenceService", "metadata": {}, "spec": {}})


def test_every_rendered_variant_validates(cfg: Config) -> None:
    """Every step's manifest, for GPU and CPU and a plain s3:// source, is CRD-valid."""
    from components.deploy.inferenceservice import ServedModel

    plain = ServedModel("s3:s3://models/x/", "s3://models/x/")
    for gpu in (True, False):
        c = cfg.model_copy(update={"deploy": cfg.deploy.model_copy(update={"gpu": gpu})})
        for served, nxt in ((CHAMPION, CHALLENGER), (CHAMPION, plain)):
            s = render_inferenceservice(c, served)
            k = canary_manifest(c, s, nxt, 5, "d.json")
            for m in (s, k, promote_manifest(k), rollback_manifest(c, k),
                      rollback_manifest(c, rollback_manifest(c, k))):
                validate_manifest(m, CRD)
