"""Erasure of one user among three on a contract-valid chain in a live versioned bucket: the user
is nowhere afterwards (every object version, every manifest, the dataset, the re-scan), the
others are intact, the dataset is a new version, a rerun is a no-op, a dry run deletes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.common.consent import ConsentRegistry
from components.common.stagekit import (
    iter_items,
    iter_rejects,
    load_manifest,
    manifest_chain,
)
from components.common.storage import ObjectStore
from components.contract import Keys
from components.erase.logic import erase_user
from components.erase.scan import Identifiers, scan_bucket
from components.streams.pairset import PairDataset
from components.streams.pairset import load_manifest as load_dataset
from tests.support.chain import write_chain

pytestmark = pytest.mark.integration


@pytest.fixture
def cfg(stage_cfg, tmp_path):
    c = stage_cfg.model_copy(deep=True)
    c.pipeline.pipeline_root = str(tmp_path / "pipeline-root")
    c.erasure.local_roots = [str(tmp_path / "kfp-workspace"), str(tmp_path / "logs")]
    c.erasure.tts_cache_dirs = [str(tmp_path / "tts")]
    c.erasure.reclaim_space = False
    c.mlflow.experiment = f"erase-{tmp_path.name}"
    c.model.registered_name = f"erase-{tmp_path.name}"
    c.features.sqlite_path = str(tmp_path / "feast" / "online.db")
    c.features.registry = str(tmp_path / "feast" / "registry.db")
    return c


def _versions(store: ObjectStore) -> set[tuple[str, str | None]]:
    return {(v.key, v.version_id) for v in store.list_versions("")}


def _reference_cache(store: ObjectStore, version: str) -> str:
    key = f"train/reference-logps/{version}/abc.npz"
    store.put_bytes(key, b"logps")
    return key


def _local_copies(cfg, chain, user: str) -> dict[str, object]:
    from pathlib import Path

    conv = chain.conversations_of(user)[0]
    root = Path(cfg.pipeline.pipeline_root) / "run-1" / "report"
    root.mkdir(parents=True)
    (root / "pairs.html").write_text(f"<p>{conv}</p>")
    (root / "other.html").write_text("<p>nobody</p>")
    logs = Path(cfg.erasure.local_roots[1])
    logs.mkdir(parents=True)
    (logs / "pipeline.log").write_text(f"[judge] 1/5 {conv} done\n[judge] 2/5 someone done\n")
    tts = Path(cfg.erasure.tts_cache_dirs[0]) / "ab"
    tts.mkdir(parents=True)
    reply = chain.pairs[chain.pairs_of(user)[0]].chosen.text.split()
    meta = {"sample_rate": 24000, "words": [[w, 0.0, 0.1] for w in reply]}
    np.savez(tts / "user.npz", audio=np.zeros(4, np.int16), meta=np.array(json.dumps(meta)))
    meta = {"sample_rate": 24000, "words": [["unrelated", 0.0, 0.1], ["words", 0.1, 0.2]]}
    np.savez(tts / "other.npz", audio=np.zeros(4, np.int16), meta=np.array(json.dumps(meta)))
    return {"html": root / "pairs.html", "other_html": root / "other.html",
            "log": logs / "pipeline.log", "tts": tts / "user.npz", "tts_other": tts / "other.npz"}


def _features(cfg, chain) -> str:
    """Feast offline rows of the chain (components.features) and validate → features manifests
    after tokenize, as the pipeline writes them; returns the features manifest id."""
    from components.common.featurestore.store import write_rows
    from components.common.stagekit import ManifestWriter
    from components.features.logic import dataset_rows

    store = ObjectStore.from_config(cfg.storage)
    data = dataset_rows(cfg, chain.manifests["tokenize"])
    parts = {view: write_rows(cfg, view, rows, store=store) for view, rows in data["rows"].items()}
    from components.contract import Manifest

    validate_id = Manifest(stage="validate",
                           input_manifest_id=chain.manifests["tokenize"]).content_id()
    report = Keys.report("validate", validate_id, "validation.html")
    store.put_bytes(report, b"<html>all passed</html>", content_type="text/html")
    validate = ManifestWriter(store, "validate", chain.manifests["tokenize"]).close(
        {"dataset_version": chain.dataset_version, "passed": ["x"], "report": report})
    assert validate.manifest_id == validate_id
    features = ManifestWriter(store, "features", validate.manifest_id)
    for item in data["pairs"]:
        features.add_item(item)
    return features.close({"dataset_version": chain.dataset_version, "parts": parts}).manifest_id


def _trained_on(cfg, dataset_version: str) -> tuple[str, str]:
    """An MLflow training run tagged with the dataset and the model version it registered."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.mlflow.experiment)
    run = client.create_run(exp_id, run_name="train test",
                            tags={"dataset_version": dataset_version})
    client.create_registered_model(cfg.model.registered_name)
    mv = client.create_model_version(cfg.model.registered_name, f"runs:/{run.info.run_id}/model",
                                     run_id=run.info.run_id)
    return run.info.run_id, str(mv.version)


def test_erase_one_user_among_three(cfg):
    chain = write_chain(cfg)
    store = ObjectStore.from_config(cfg.storage)
    features_id = _features(cfg, chain)
    lineage_run = _trained_on(cfg, chain.dataset_version)
    bob = chain.users["bob"]
    bob_convs, bob_pairs = chain.conversations_of("bob"), chain.pairs_of("bob")
    others = [p for p in chain.pairs if p not in bob_pairs]
    ref_key = _reference_cache(store, chain.dataset_version)
    local = _local_copies(cfg, chain, "bob")
    # a second version of one of bob's objects: every version must go
    store.put_json(Keys.transcript(bob_convs[0]), {"overwritten": True})
    ids = Identifiers(bob, frozenset(bob_convs), frozenset(bob_pairs))
    before = scan_bucket(store, ids)
    assert not before.clean

    report = erase_user(cfg, user_id="bob", request_id="req-1")

    assert sorted(report.conversations) == sorted(bob_convs)
    assert sorted(report.pairs) == sorted(bob_pairs)
    assert report.clean, report.rescan
    # every version of every object naming bob is gone (the ledger alone names him)
    after = scan_bucket(store, ids, exclude=())
    assert {f.key for f in after.findings} <= {Keys.erasure_ledger("req-1"),
                                               Keys.erasure_ledger("req-1", "html")}
    for key in (Keys.transcript(bob_convs[0]), Keys.conversation_metadata(bob_convs[0]),
                Keys.pair_object(bob_pairs[0], "user.wav"), ref_key):
        assert not [v for v in store.list_versions(key) if v.key == key], key
    # the chain is rewritten without bob, walkable from the new tokenize manifest
    lineage = report.rewrites["lineage"]
    new_tokenize = lineage[chain.manifests["tokenize"]]
    chain_after = manifest_chain(store, new_tokenize)
    assert list(chain_after) == ["scrub", "judge", "pairs", "resynthesize", "tokenize"]
    for stage, manifest in chain_after.items():
        assert manifest.manifest_id == lineage[chain.manifests[stage]]
        assert store.stat(Keys.manifest(stage, chain.manifests[stage])) is None
        text = json.dumps(list(iter_items(store, manifest))) + \
            json.dumps([r.model_dump() for r in iter_rejects(store, manifest)])
        assert bob not in text and not any(c in text for c in bob_convs)
        assert manifest.stats["erasure"]["request_id"] == "req-1"
    # validate and features follow tokenize: rewritten, naming the new dataset and Feast parts
    features_after = manifest_chain(store, lineage[features_id])
    assert list(features_after)[-2:] == ["validate", "features"]
    assert features_after["tokenize"].manifest_id == new_tokenize
    new_features = features_after["features"]
    # the validate report follows its manifest (it names nobody)
    new_validate = features_after["validate"]
    assert new_validate.stats["report"] == Keys.report("validate", new_validate.manifest_id,
                                                       "validation.html")
    assert store.get_bytes(new_validate.stats["report"]) == b"<html>all passed</html>"
    assert new_features.stats["dataset_version"] == lineage[chain.dataset_version]
    assert sorted(i["pair_id"] for i in iter_items(store, new_features)) == sorted(
        p for p in chain.pairs if p not in bob_pairs)
    for key in new_features.stats["parts"].values():
        assert store.stat(key) is not None, key
    from components.common.featurestore.store import read_offline, scan_entities

    assert scan_entities(cfg, user_pseudonyms=[bob], conversation_ids=bob_convs,
                         pair_ids=bob_pairs)["found"] == 0
    pairs_rows = read_offline(cfg, "pair_features")
    assert sorted(pairs_rows["pair_id"]) == sorted(p for p in chain.pairs if p not in bob_pairs)
    assert report.feast["status"] == "erased" and report.feast["removed"]["offline_rows"] > 0
    # broken lineage: the run and the model version trained on the old dataset version
    broken = report.broken_lineage
    assert broken["datasets"] == [chain.dataset_version]
    assert [r["run_id"] for r in broken["runs"]] == [lineage_run[0]]
    assert [v["version"] for v in broken["model_versions"]] == [lineage_run[1]]
    tokenize = chain_after["tokenize"]
    assert sorted(i["pair_id"] for i in iter_items(store, tokenize)) == sorted(others)
    # the dataset is a new version without bob's pairs; the old one and its cache are gone
    new_version = tokenize.stats["pairs_dataset"]
    assert new_version == lineage[chain.dataset_version] != chain.dataset_version
    assert store.stat(Keys.pair_dataset_manifest(chain.dataset_version)) is None
    dataset = PairDataset(store, new_version)
    assert sorted(p.pair_id for p in dataset) == sorted(others)
    assert load_dataset(store, new_version).input_manifest_id == \
        chain_after["resynthesize"].manifest_id
    assert tokenize.stats["pairs_dataset_pairs"] == len(others)
    assert report.rewrites["datasets"][0]["reference_logps"] == "deleted"
    # the others are intact
    for conv in chain.conversations_of("alice") + chain.conversations_of("carol"):
        assert store.stat(Keys.transcript(conv)) is not None
        assert store.stat(Keys.conversation_metadata(conv)) is not None
        assert store.stat(Keys.privacy_ledger(conv, "run-test")) is not None
    for pid in others:
        assert store.stat(Keys.pair_object(pid, "resynthesis.json")) is not None
    assert len(list(iter_items(store, chain_after["scrub"]))) == 3
    # local copies: the report and bob's cached speech gone, the log without his line
    assert not local["html"].exists() and local["other_html"].exists()
    assert not local["tts"].exists() and local["tts_other"].exists()
    assert local["log"].read_text() == "[judge] 2/5 someone done\n"
    # consent withdrawn, the others' untouched
    with ConsentRegistry.from_dsn(cfg.consent.dsn) as registry:
        assert not registry.has_consent(bob)
        assert registry.has_consent(chain.users["alice"])
    # ledger
    entry = store.get_json(Keys.erasure_ledger("req-1"))
    assert entry["pseudonym"] == bob and entry["rescan"]["clean"] is True
    assert entry["removed"]["pairs"] >= 4 * len(bob_pairs)
    text = json.dumps(entry).replace(bob, "")
    for conv in bob_convs:  # the test's conversation ids carry the raw id: not the ledger's doing
        text = text.replace(conv, "")
    assert '"bob"' not in text and "bob" not in text  # the raw id is never recorded

    # a rerun finds nothing left and changes nothing
    versions = _versions(store)
    again = erase_user(cfg, pseudonym=bob, request_id="req-2")
    assert again.clean and not again.removed and not again.rewrites["manifests"]
    assert _versions(store) - versions == {
        (v.key, v.version_id) for v in store.list_versions("ledger/erasure/req-2")}
    assert load_manifest(store, new_tokenize).manifest_id == new_tokenize


def test_dry_run_deletes_nothing(cfg):
    chain = write_chain(cfg, users={"alice": 1, "bob": 1})
    store = ObjectStore.from_config(cfg.storage)
    versions = _versions(store)
    report = erase_user(cfg, user_id="alice", dry_run=True)
    assert report.dry_run and report.ledger_key is None
    assert _versions(store) == versions
    assert report.conversations == chain.conversations_of("alice")
    actions = {e["action"] for entries in report.found.values() for e in entries}
    assert actions <= {"would delete", "would redact"} and actions
    assert {m["stage"] for m in report.rewrites["manifests"]} == \
        {"scrub", "judge", "pairs", "resynthesize", "tokenize"}
    with ConsentRegistry.from_dsn(cfg.consent.dsn) as registry:
        assert registry.has_consent(chain.users["alice"])


def test_unknown_user_is_a_no_op(cfg):
    write_chain(cfg, users={"alice": 1})
    store = ObjectStore.from_config(cfg.storage)
    versions = _versions(store)
    report = erase_user(cfg, user_id="nobody", request_id="req-x")
    assert report.conversations == [] and report.clean and not report.removed
    assert _versions(store) - versions == {
        (v.key, v.version_id) for v in store.list_versions("ledger/erasure/req-x")}
