"""Against the session's live MLflow + SeaweedFS: registry aliases → verified s3:// URIs, the
whole GitOps flow through ``deploy()``, and alias moves only after a healthy rollout."""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path

import pytest
import yaml

from components.common.config import Config
from components.contract import Keys
from components.deploy.crd import validate_manifest
from components.deploy.logic import deploy
from components.deploy.sources import SourceNotDeployable, resolve_source, storage_uri
from tests.components.deploy.conftest import CRD, git, live_object, promote_record
from tests.components.model.conftest import ci_cfg, codec, tokenizer  # noqa: F401 (fixtures)
from tests.components.train.synthetic import tiny_checkpoint

pytestmark = pytest.mark.integration
MANIFEST = "manifests/serving/inferenceservice.yaml"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, tokenizer, codec) -> Path:  # noqa: F811
    return tiny_checkpoint(tmp_path_factory.mktemp("deploy-ckpt") / "ckpt", tokenizer, codec)


@pytest.fixture
def live_cfg(services_config: Config, gitops_repo: Path, tmp_path: Path) -> Config:
    """Live services, a registered model name of its own, the test's GitOps checkout."""
    return services_config.model_copy(update={
        "model": services_config.model.model_copy(update={
            "registered_name": f"deploy-moshi-{uuid.uuid4().hex[:8]}",
            "cache_dir": str(tmp_path / "lm-cache")}),
        "deploy": services_config.deploy.model_copy(update={"gitops_repo": str(gitops_repo)})})


@pytest.fixture
def versions(live_cfg: Config, ckpt: Path) -> tuple[str, str]:
    """v1 = champion, v2 = challenger (the same tiny weights, two registered versions)."""
    from components.model.registry import register_model

    v1 = register_model(live_cfg, ckpt, metrics={}, params={}, alias="champion", run_name="v1")
    v2 = register_model(live_cfg, ckpt, metrics={}, params={}, alias="challenger", run_name="v2")
    return v1, v2


def _aliases(cfg: Config) -> dict[str, str]:
    from mlflow import MlflowClient

    model = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri).get_registered_model(
        cfg.model.registered_name)
    return {a: str(v) for a, v in (model.aliases or {}).items()}


def _outcome(cfg: Config, version: str) -> str | None:
    from mlflow import MlflowClient

    mv = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri).get_model_version(
        cfg.model.registered_name, version)
    return (mv.tags or {}).get("deploy_outcome")


def _merge_and_status(cfg: Config, repo: Path, result, tmp_path: Path, **status) -> Path:
    """Merge the change's branch (the human's approval) and save the synced object's status."""
    git(repo, "merge", "-q", "--ff-only", result.branch)
    manifest = yaml.safe_load((repo / MANIFEST).read_text())
    path = tmp_path / f"isvc-{uuid.uuid4().hex[:6]}.json"
    obj = live_object(manifest, **status)
    validate_manifest(obj, CRD)  # the status half too: what kubectl shows fits the CRD
    path.write_text(json.dumps(obj))
    return path


def test_aliases_resolve_to_real_s3_uris(live_cfg: Config, versions: tuple[str, str],
                                         ckpt: Path, tmp_path: Path) -> None:
    from components.common.storage import ObjectStore, parse_s3_uri
    from components.model.checkpoint import CHECKPOINT_FILES

    v1, v2 = versions
    name = live_cfg.model.registered_name
    champion = resolve_source(live_cfg, "champion")
    assert champion.model_version == f"{name}/{v1}" and champion.registry_version == v1
    assert champion.uri.startswith(f"s3://{live_cfg.storage.bucket}/mlflow-artifacts/")
    assert champion.uri.endswith("/artifacts/checkpoint/")
    assert champion.objects == len(CHECKPOINT_FILES)
    assert storage_uri(live_cfg, f"models:/{name}@challenger") == \
        storage_uri(live_cfg, f"models:/{name}/{v2}") != champion.uri
    # the objects are really there, byte for byte what was registered
    bucket, prefix = parse_s3_uri(champion.uri)
    listed = ObjectStore.from_config(live_cfg.storage, bucket, prefix=prefix)
    assert sorted(i.key for i in listed.list("")) == sorted(CHECKPOINT_FILES)
    assert listed.get_bytes("config.json") == (ckpt / "config.json").read_bytes()
    # an s3:// folder is taken as is (verified), a local folder or an empty prefix is refused
    assert storage_uri(live_cfg, champion.uri.rstrip("/")) == champion.uri
    with pytest.raises(SourceNotDeployable, match="local folder"):
        storage_uri(live_cfg, str(ckpt))
    with pytest.raises(SourceNotDeployable, match="holds nothing"):
        storage_uri(live_cfg, f"s3://{bucket}/no/such/prefix/")


def test_promotion_moves_champion_only_once_healthy(live_cfg: Config, versions, store,
                                                    gitops_repo: Path, tmp_path: Path) -> None:
    v1, v2 = versions
    name = live_cfg.model.registered_name
    init = deploy(live_cfg, "init", commit=True)
    assert init.manifest_path == str(gitops_repo / MANIFEST)
    _merge_and_status(live_cfg, gitops_repo, init, tmp_path, generation=1, observed=1)
    with pytest.raises(Exception, match=f"no gate decision for {name}/{v2}"):
        deploy(live_cfg, "canary", store=store)
    record = promote_record(f"{name}/{v2}", f"{name}/{v1}")
    store.put_json(Keys.gate_decision(f"{name}/{v2}"), record)
    canary = deploy(live_cfg, "canary", percent=10, commit=True, store=store)
    assert canary.change["changed_paths"]
    validate_manifest(yaml.safe_load(git(gitops_repo, "show", f"{canary.commit}:{MANIFEST}")),
                      CRD)
    status = _merge_and_status(live_cfg, gitops_repo, canary, tmp_path, latest_percent=10,
                               ready_rev="duplexalign-moshi-predictor-00001")
    during = deploy(live_cfg, "status", status_file=status)
    assert not during.finalize["health"]["healthy"]
    assert "latest created revision" in during.finalize["health"]["reasons"][0]
    healthy_canary = _merge_and_status(live_cfg, gitops_repo, canary, tmp_path, latest_percent=10)
    assert deploy(live_cfg, "status", status_file=healthy_canary).finalize["moved"] == {}
    assert _aliases(live_cfg) == {"champion": v1, "challenger": v2}

    promote = deploy(live_cfg, "promote", commit=True, store=store)
    assert promote.change["changed_paths"] == ["/spec/predictor/canaryTrafficPercent"]
    # synced but the controller has not caught up (generation 3 seen as 2): nothing moves
    stale = _merge_and_status(live_cfg, gitops_repo, promote, tmp_path, generation=3, observed=2,
                              latest_percent=10)
    result = deploy(live_cfg, "status", status_file=stale).finalize
    assert not result["health"]["healthy"] and result["moved"] == {}
    assert _aliases(live_cfg)["champion"] == v1
    healthy = tmp_path / "healthy.json"
    healthy.write_text(json.dumps(live_object(
        yaml.safe_load((gitops_repo / MANIFEST).read_text()), generation=3, observed=3)))
    done = deploy(live_cfg, "status", status_file=healthy).finalize
    assert done["health"]["healthy"] and done["step"] == "promote"
    assert done["moved"] == {"previous-champion": v1, "champion": v2}
    assert _aliases(live_cfg) == {"champion": v2, "previous-champion": v1, "challenger": v2}
    assert _outcome(live_cfg, v2) == "promoted"
    again = deploy(live_cfg, "status", status_file=healthy).finalize  # idempotent
    assert again["moved"] == {} and _aliases(live_cfg)["previous-champion"] == v1


def test_rollback_moves_no_alias(live_cfg: Config, versions, store, gitops_repo: Path,
                                 tmp_path: Path) -> None:
    from components.deploy.cli import add_arguments, run_cli

    v1, v2 = versions
    name = live_cfg.model.registered_name
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run_cli(live_cfg, parser.parse_args(["--init", "--commit"])) == 0
    git(gitops_repo, "merge", "-q", "--ff-only",
        git(gitops_repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/deploy/"))
    store.put_json(Keys.gate_decision(f"{name}/{v2}"), promote_record(f"{name}/{v2}",
                                                                      f"{name}/{v1}"))
    canary = deploy(live_cfg, "canary", percent=30, commit=True, store=store)
    _merge_and_status(live_cfg, gitops_repo, canary, tmp_path, latest_percent=30)
    first = deploy(live_cfg, "rollback", commit=True)
    assert first.change["changed_paths"] == ["/spec/predictor/canaryTrafficPercent"]
    zero = _merge_and_status(live_cfg, gitops_repo, first, tmp_path, latest_percent=0)
    result = deploy(live_cfg, "status", status_file=zero).finalize
    assert result["health"]["healthy"] and result["step"] == "rollback"
    assert result["moved"] == {} and result["tagged"] == {f"{name}/{v2}": "rolled-back"}
    second = deploy(live_cfg, "rollback", commit=True)
    restored = _merge_and_status(live_cfg, gitops_repo, second, tmp_path, generation=4,
                                 observed=4, created="duplexalign-moshi-predictor-00003")
    final = deploy(live_cfg, "status", status_file=restored).finalize
    assert final["health"]["healthy"] and final["moved"] == {}
    assert _aliases(live_cfg) == {"champion": v1, "challenger": v2}
    assert _outcome(live_cfg, v2) == "rolled-back"
    on_disk = yaml.safe_load((gitops_repo / MANIFEST).read_text())
    env = on_disk["spec"]["predictor"]["containers"][0]["env"][0]["value"]
    assert env == storage_uri(live_cfg, "champion")


def test_gitops_mode_never_applies(live_cfg: Config) -> None:
    from components.deploy.logic import DeployRefused

    with pytest.raises(DeployRefused, match="never applies"):
        deploy(live_cfg, "init", apply=True)


def test_mlflow3_logged_model_sources_resolve(live_cfg: Config, ckpt: Path) -> None:
    """A version whose source is MLflow 3's ``models:/m-<id>`` (a logged model, what
    ``mlflow.<flavor>.log_model`` registers) resolves to the logged model's s3:// artefacts."""
    from mlflow import MlflowClient

    from components.model.checkpoint import CHECKPOINT_FILES
    from components.model.registry import _ensure_registered_model, _experiment_id

    client = MlflowClient(tracking_uri=live_cfg.mlflow.tracking_uri)
    logged = client.create_logged_model(_experiment_id(client, live_cfg.mlflow.experiment),
                                        name="tiny")
    client.log_model_artifacts(logged.model_id, str(ckpt))
    client.finalize_logged_model(logged.model_id, "READY")
    name = live_cfg.model.registered_name
    _ensure_registered_model(client, name)
    mv = client.create_model_version(name, source=f"models:/{logged.model_id}",
                                     model_id=logged.model_id)
    assert mv.source.startswith("models:/m-")
    src = resolve_source(live_cfg, f"models:/{name}/{mv.version}")
    assert src.uri.startswith(f"s3://{live_cfg.storage.bucket}/mlflow-artifacts/")
    assert logged.model_id in src.uri and src.objects == len(CHECKPOINT_FILES)
    assert storage_uri(live_cfg, f"models:/{logged.model_id}") == src.uri
