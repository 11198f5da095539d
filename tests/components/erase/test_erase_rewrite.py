"""Rewrites on small hand-built buckets: a manifest only whose stats name the user keeps its id
and is replaced in place (no old version left); a retention ledger loses only the user's keys;
the CLI prints one JSON line and exits 0 on a clean re-scan."""

from __future__ import annotations

import json

import pytest
import yaml

from components.common.stagekit import ManifestWriter, iter_items, load_manifest
from components.common.storage import ObjectStore
from components.contract import Keys
from components.erase.logic import erase_user
from components.erase.rewrite import rewrite_without
from components.erase.scan import Identifiers
from tests.support.chain import write_chain

pytestmark = pytest.mark.integration

P = "p-" + "b" * 32


@pytest.fixture
def cfg(stage_cfg, tmp_path):
    c = stage_cfg.model_copy(deep=True)
    c.pipeline.pipeline_root = str(tmp_path / "pipeline-root")
    c.erasure.local_roots = [str(tmp_path / "logs")]
    c.erasure.tts_cache_dirs = [str(tmp_path / "tts")]
    c.erasure.reclaim_space = False
    c.features.sqlite_path = str(tmp_path / "feast" / "online.db")
    c.features.registry = str(tmp_path / "feast" / "registry.db")
    c.mlflow.experiment = f"erase-{tmp_path.name}"
    return c


def test_stats_only_mention_is_replaced_in_place(cfg):
    store = ObjectStore.from_config(cfg.storage)
    writer = ManifestWriter(store, "report", None)
    writer.add_item({"conversation_id": "conv-9", "n": 1})
    m = writer.close({"examples": ["conv-1", "conv-9"], "worst": "conv-1", "n": 2})
    ids = Identifiers(P, frozenset({"conv-1"}))
    plan = rewrite_without(store, ids, request_id="r1")
    assert [c.old_id for c in plan.manifests] == [m.manifest_id]
    assert plan.manifests[0].new_id == m.manifest_id  # same items and input: same id
    key = Keys.manifest("report", m.manifest_id)
    (version,) = [v for v in store.list_versions(key) if v.key == key]
    again = load_manifest(store, m.manifest_id)
    assert again.stats["examples"] == ["conv-9"] and again.stats["worst"] == "[erased]"
    assert again.stats["erasure"]["request_id"] == "r1"
    assert list(iter_items(store, again)) == [{"conversation_id": "conv-9", "n": 1}]
    assert not rewrite_without(store, ids, request_id="r2").manifests  # nothing left to do


def test_user_keys_leave_the_retention_ledger(cfg):
    chain = write_chain(cfg, users={"alice": 1, "bob": 1})
    store = ObjectStore.from_config(cfg.storage)
    (a,), (b,) = chain.conversations_of("alice"), chain.conversations_of("bob")
    ledger = Keys.retention_ledger("retention-1")
    store.put_json(ledger, {"prefixes": [{"prefix": "quarantine/", "versions": 2, "keys": [
        Keys.quarantine_transcript(a), Keys.quarantine_transcript(b)]}]})
    report = erase_user(cfg, user_id="bob", request_id="req-r")
    assert report.clean
    assert [e["action"] for e in report.found["ledger/retention"]] == ["redacted"]
    entry = store.get_json(ledger)
    assert entry["prefixes"][0]["keys"] == [Keys.quarantine_transcript(a)]
    assert len([v for v in store.list_versions(ledger) if v.key == ledger]) == 1


def test_cli_erase(cfg, tmp_path, capsys):
    from pipelines.cli import main

    chain = write_chain(cfg, users={"alice": 1, "bob": 1})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    assert main(["--config", str(path), "erase", "--user", "alice", "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert dry["dry_run"] and dry["conversations"] == 1 and dry["ledger"] is None
    assert main(["--config", str(path), "erase", "--pseudonym", chain.users["alice"],
                 "--request-id", "cli-1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["rescan_clean"] is True and out["ledger"] == Keys.erasure_ledger("cli-1")
    assert out["manifests_rewritten"] == 5 and out["datasets_rewritten"] == 1


def test_no_consent_rejects_and_orphan_shards(cfg):
    """A conversation dropped at ingest (no consent) is known only by its privacy ledger entry
    and a reject: both go. A manifest shard no manifest references (a crashed run) goes too."""
    from components.contract import ItemError, PrivacyLedgerEntry

    chain = write_chain(cfg, users={"alice": 1, "bob": 1})
    store = ObjectStore.from_config(cfg.storage)
    bob = chain.users["bob"]
    writer = ManifestWriter(store, "ingest", None)
    writer.add_reject(ItemError(item="conv-dropped", code="no-consent", reason="no consent"))
    writer.add_reject(ItemError(item="conv-other", code="no-consent", reason="no consent"))
    ingest = writer.close({})
    store.put_json(Keys.privacy_ledger("conv-dropped", "run-1"), PrivacyLedgerEntry(
        conversation_id="conv-dropped", user_pseudonym=bob, run="run-1",
        at="2026-11-01T00:00:00Z", deleted=[], redactions=[],
        muted_model_audio_s=0.0).model_dump(mode="json"))
    rejects = Keys.report("ingest", ingest.manifest_id, "rejects.json")
    store.put_json(rejects, {"rejects": [{"item": "conv-dropped", "code": "no-consent"},
                                         {"item": "conv-other", "code": "no-consent"}]})
    orphan = Keys.manifest_shard("ingest", "0" * 64)
    store.put_bytes(orphan, json.dumps({"conversation_id": "conv-dropped"}).encode())

    report = erase_user(cfg, pseudonym=bob, request_id="req-n")
    assert "conv-dropped" in report.conversations and report.clean
    new_ingest = load_manifest(store, report.rewrites["lineage"][ingest.manifest_id])
    from components.common.stagekit import iter_rejects

    assert [r.item for r in iter_rejects(store, new_ingest)] == ["conv-other"]
    assert not list(store.list_versions(orphan))
    assert store.stat(Keys.privacy_ledger("conv-dropped", "run-1")) is None
    # the shared JSON report follows its manifest and keeps the other conversation's entry
    moved = Keys.report("ingest", new_ingest.manifest_id, "rejects.json")
    assert store.get_json(moved) == {"rejects": [{"item": "conv-other", "code": "no-consent"}]}
    assert not list(store.list_versions(rejects))
    assert len(list(store.list_versions(moved))) == 1


def test_a_crashed_erasure_is_finished_by_a_rerun(cfg, monkeypatch):
    """Killed after the bucket sweep (the conversations' metadata gone): the rerun still knows
    the ids from the first ledger entry and finishes the local copies."""
    from pathlib import Path

    import components.erase.logic as erase_logic

    chain = write_chain(cfg, users={"alice": 1, "bob": 1})
    (conv,) = chain.conversations_of("bob")
    log_file = Path(cfg.erasure.local_roots[0]) / "run.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_text(f"{conv} judged\nother judged\n")

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(erase_logic, "_clean_local", crash)
    with pytest.raises(RuntimeError):
        erase_user(cfg, user_id="bob", request_id="req-c1")
    monkeypatch.undo()
    store = ObjectStore.from_config(cfg.storage)
    assert store.stat(Keys.conversation_metadata(conv)) is None
    assert store.get_json(Keys.erasure_ledger("req-c1"))["status"] == "started"
    report = erase_user(cfg, user_id="bob", request_id="req-c2")
    assert report.conversations == [conv] and report.clean
    assert log_file.read_text() == "other judged\n"


def test_unchanged_pairs_keep_their_reference_logps(cfg):
    """A dataset whose input was rewritten but whose pairs all stay: a new version (it names the
    new input) with the same shards, and the reference log-probs copied to it, not recomputed."""
    from components.streams.pairset import load_manifest as load_dataset
    from components.streams.pairset import write_dataset
    from tests.support.chain import _tensors

    store = ObjectStore.from_config(cfg.storage)
    scrub = ManifestWriter(store, "scrub", None)
    scrub.add_item({"conversation_id": "conv-a", "user_pseudonym": "p-a"})
    scrub.add_item({"conversation_id": "conv-x", "user_pseudonym": P})  # made no pair
    scrub_id = scrub.close({}).manifest_id
    resynth = ManifestWriter(store, "resynthesize", scrub_id)
    resynth.add_item({"pair": {"pair_id": "a" * 24, "conversation_id": "conv-a"}})
    resynth_id = resynth.close({}).manifest_id
    ds = write_dataset(store, [_tensors("a" * 24, "content", 1)], input_manifest_id=resynth_id,
                       tokenizer_hash="t", codec_hash="c", num_codebooks=4, context_frames=48,
                       trailing_pad_frames=0)
    tokenize_id = ManifestWriter(store, "tokenize", resynth_id).close(
        {"pairs_dataset": ds.version, "pairs_dataset_pairs": 1}).manifest_id
    store.put_bytes(f"train/reference-logps/{ds.version}/k.npz", b"logps")

    plan = rewrite_without(store, Identifiers(P, frozenset({"conv-x"})), request_id="r")
    lineage = plan.lineage
    assert set(lineage) == {scrub_id, resynth_id, tokenize_id, ds.version}
    new = load_dataset(store, lineage[ds.version])
    assert new.shards == ds.shards and new.input_manifest_id == lineage[resynth_id]
    assert plan.datasets[0].reference_logps == "copied"
    assert store.get_bytes(f"train/reference-logps/{new.version}/k.npz") == b"logps"
    assert not list(store.list_versions(f"train/reference-logps/{ds.version}/"))
    assert all(store.stat(k) is not None for k in ds.shards)  # shared shards stay
    assert load_manifest(store, lineage[tokenize_id]).stats["pairs_dataset"] == new.version
