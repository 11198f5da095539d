"""The validate stage on a contract-valid chain in the live local stores (SeaweedFS, MLflow):
a clean chain passes; a corrupted one stops, naming the expectation, with the report and the
manifest written first; reruns are idempotent."""

from __future__ import annotations

import json
import uuid

import pytest

from components.common.config import flatten
from components.common.stagekit import iter_items, load_manifest, manifest_chain
from components.common.storage import ObjectStore
from components.contract import Keys
from components.validate.logic import ValidationFailed, validate_dataset
from tests.support import chain as chain_module
from tests.support.chain import AUDIO_CARD, TEXT_VOCAB, write_chain

pytestmark = pytest.mark.integration

USER_WORDS = ("berlin", "router", "hours")  # words of the chain's conversations


@pytest.fixture
def cfg(stage_cfg):
    stage_cfg.validation.text_vocab_size = TEXT_VOCAB
    stage_cfg.validation.audio_cardinality = AUDIO_CARD
    stage_cfg.validation.compare_champion = False  # other tests may register a champion
    stage_cfg.validation.log_to_mlflow = False
    return stage_cfg


def test_clean_chain_passes_and_rerun_is_idempotent(cfg) -> None:
    cfg.validation.log_to_mlflow = True
    chain = write_chain(cfg)
    tokenize_id = chain.manifests["tokenize"]
    outcome = validate_dataset(cfg, tokenize_id)
    assert outcome.critical_failed == [] and outcome.failed == [], outcome.failed
    outcome.raise_for_critical()  # no-op
    assert outcome.dataset_version == chain.dataset_version
    store = ObjectStore.from_config(cfg.storage)
    manifest = load_manifest(store, outcome.manifest_id)
    assert manifest.stage == "validate" and manifest.input_manifest_id == tokenize_id
    assert manifest.stats["dataset_version"] == chain.dataset_version
    assert manifest.stats["report"] == outcome.report_key == Keys.report(
        "validate", outcome.manifest_id, "validation.html")
    assert manifest.stats["critical_failed"] == [] and len(manifest.stats["passed"]) > 40
    assert list(manifest_chain(store, outcome.manifest_id))[-2:] == ["tokenize", "validate"]
    items = list(iter_items(store, manifest))
    assert {i["name"] for i in items} == set(manifest.stats["passed"])
    rows = manifest.stats["rows"]
    assert rows["pairs"] == rows["tensors"] == len(chain.pairs) == 10
    assert rows["conversations"] == len(chain.conversations)
    page = store.get_bytes(outcome.report_key).decode()
    assert "PASSED" in page
    for word in USER_WORDS:
        assert word not in page.lower()
    # nothing that names a user either (erasure has nothing to find in the gate's outputs)
    stored = page + json.dumps(manifest.model_dump(mode="json"))
    for name in [*chain.users.values(), *chain.conversations, *chain.pairs]:
        assert name not in stored
    assert outcome.mlflow_run_id

    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri).get_run(outcome.mlflow_run_id)
    assert run.data.tags["dataset_version"] == chain.dataset_version
    assert run.data.metrics["failed"] == 0 and run.data.metrics["passed"] == len(outcome.passed)
    assert run.info.run_name == f"validate {chain.dataset_version}"

    again = validate_dataset(cfg, tokenize_id)  # same outcome: same manifest, same MLflow run
    assert again.manifest_id == outcome.manifest_id
    assert again.mlflow_run_id == outcome.mlflow_run_id
    versions = [v for v in store.list_versions(Keys.manifest("validate", outcome.manifest_id))]
    assert len(versions) == 1


def test_raw_phone_number_in_a_transcript_stops_the_gate(cfg, capsys) -> None:
    phone = "555-867-5309"
    exchanges = list(chain_module.EXCHANGES)
    exchanges[0] = (f"my number is {phone} what is the capital of france",
                    *exchanges[0][1:])
    chain = write_chain(cfg, users={"alice": 1, "bob": 1}, exchanges=exchanges)
    outcome = validate_dataset(cfg, chain.manifests["tokenize"])
    assert outcome.stopped
    assert "texts.no_phone" in outcome.critical_failed
    store = ObjectStore.from_config(cfg.storage)
    # written BEFORE anything raises
    page = store.get_bytes(outcome.report_key).decode()
    assert "texts.no_phone" in page and "STOPPED" in page and phone not in page
    manifest = load_manifest(store, outcome.manifest_id)
    assert "texts.no_phone" in manifest.stats["critical_failed"]
    assert phone not in json.dumps(manifest.model_dump(mode="json"))
    with pytest.raises(ValidationFailed, match=r"texts\.no_phone"):
        outcome.raise_for_critical()

    # the CLI: JSON outcome on stdout, exit 1 naming the critical failure on stderr
    from pipelines.cli import main

    capsys.readouterr()
    code = main(["--profile", cfg.profile, "--set", f"services.state_dir={cfg.services.state_dir}",
                 "--set", f"storage.bucket={cfg.storage.bucket}",
                 "--set", f"validation.text_vocab_size={TEXT_VOCAB}",
                 "--set", f"validation.audio_cardinality={AUDIO_CARD}",
                 "--set", "validation.compare_champion=false",
                 "--set", "validation.log_to_mlflow=false",
                 "validate", "--tokenize-manifest", chain.manifests["tokenize"]])
    out, err = capsys.readouterr()
    assert code == 1
    assert json.loads(out.strip().splitlines()[-1])["manifest_id"] == outcome.manifest_id
    assert "texts.no_phone" in err and "STOPPED" in err


def test_kfp_component_writes_the_html_artefact_before_failing(cfg, tmp_path) -> None:
    from components.validate.component import validate_op

    exchanges = list(chain_module.EXCHANGES)
    exchanges[0] = ("mail me at jane.doe@example.com please", *exchanges[0][1:])
    chain = write_chain(cfg, users={"alice": 1}, exchanges=exchanges)
    overrides = {k: v for k, v in flatten(json.loads(cfg.to_json())).items()
                 if k.split(".")[0] in ("storage", "mlflow", "validation")}

    class Artefact:
        path = str(tmp_path / "validation.html")

    with pytest.raises(ValidationFailed, match=r"texts\.no_email"):
        validate_op.python_func(tokenize_manifest_id=chain.manifests["tokenize"],
                                profile=cfg.profile, overrides=json.dumps(overrides),
                                report=Artefact())
    page = (tmp_path / "validation.html").read_text()
    assert "texts.no_email" in page and "jane.doe" not in page


def test_champion_tokenizer_and_vocabulary_are_checked(cfg) -> None:
    from components.validate.logic import validate_tables
    from components.validate.tables import build_tables

    chain = write_chain(cfg, users={"alice": 1})
    store = ObjectStore.from_config(cfg.storage)
    tables = build_tables(store, chain.manifests["tokenize"],
                          champion=("tok-other", chain.codec_hash))
    identity = tables.tables["identity"]
    assert list(identity["source"]) == ["dataset", "champion"]
    cfg.validation.text_vocab_size = 50  # the chain's text ids go up to 99
    outcome = validate_tables(cfg, tables, store=store)
    assert sorted(outcome.critical_failed) == ["identity.tokenizer_hash_consistent",
                                               "tensors.text_ids_in_vocab"]


def test_champion_identity_comes_from_the_registry(stage_cfg, ci_cfg, tokenizer, codec,
                                                   tmp_path) -> None:
    """The stream identity the gate compares the dataset with is the one MLflow's registry
    records for the policy source's version (a tiny checkpoint registered for real)."""
    from components.model.registry import register_model
    from components.validate.logic import champion_identity
    from tests.components.train.synthetic import tiny_checkpoint

    cfg = stage_cfg.model_copy(deep=True)
    cfg.model.registered_name = f"t-validate-{uuid.uuid4().hex[:8]}"
    cfg.model.cache_dir = str(tmp_path / "lm-cache")
    cfg.streams = ci_cfg.streams.model_copy()
    assert champion_identity(cfg) is None  # nothing registered under this name yet
    folder = tiny_checkpoint(tmp_path / "champion", tokenizer, codec)
    register_model(cfg, folder, metrics={}, params={}, alias="champion", run_name="champion")
    assert champion_identity(cfg) == (tokenizer.hash, codec.hash)
    cfg.validation.compare_champion = False
    assert champion_identity(cfg) is None
