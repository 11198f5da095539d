"""simulate against the live local S3 server and consent registry: contract, ground-truth
separation, consent, idempotent reruns, resume, and server-side replication."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from components.common.audio import HEADER_PROBE_BYTES, check_wav_object, decode_wav
from components.common.config import Config
from components.common.consent import ConsentRegistry
from components.common.privacy import load_pseudonym_key, pseudonymise
from components.common.stagekit import iter_items, load_manifest
from components.common.storage import ObjectStore
from components.contract import (
    CONTENT_CLASS_KEY,
    REQUIRED_OBJECTS,
    USER_AUDIO,
    ConversationMetadata,
    KbDocument,
    Keys,
    RawItem,
    audio_objects,
    parse_model_alignments,
)
from components.simulate import world as W
from components.simulate.generate import SimulationResult, replicate_corpus, simulate_conversations
from components.simulate.groundtruth import GroundTruth, iter_groundtruth, load_planted_pii

pytestmark = pytest.mark.integration

N = 3


@pytest.fixture(scope="module")
def sim_cfg(services_config: Config, tmp_path_factory) -> Config:
    tmp = tmp_path_factory.mktemp("simulate")
    cfg = services_config.model_copy(deep=True)
    name = f"sim-{uuid.uuid4().hex[:10]}"
    cfg.storage.bucket = name
    cfg.storage.groundtruth_bucket = f"{name}-gt"
    cfg.consent.dsn = f"sqlite:///{tmp}/consent.db"
    cfg.scrub.pseudonym_key_file = str(tmp / "pseudonym.key")
    return cfg


@pytest.fixture(scope="module")
def first_run(sim_cfg: Config) -> SimulationResult:
    return simulate_conversations(sim_cfg, n=N, progress=False)


@pytest.fixture(scope="module")
def stores(sim_cfg: Config) -> Iterator[tuple[ObjectStore, ObjectStore]]:
    data = ObjectStore.from_config(sim_cfg.storage)
    gt = ObjectStore.from_config(sim_cfg.storage, bucket=sim_cfg.storage.groundtruth_bucket)
    yield data, gt
    for store in (data, gt):  # free the buckets (each holds server volumes) for later tests
        store.delete_prefix_all_versions("", allow_whole_bucket=True)
        store.client.remove_bucket(store.bucket)


def _items(store: ObjectStore, manifest_id: str) -> list[RawItem]:
    return [RawItem.model_validate(i) for i in iter_items(store, load_manifest(store, manifest_id))]


def _versions(store: ObjectStore, prefix: str = "") -> int:
    return sum(1 for _ in store.list_versions(prefix))


def test_every_object_follows_the_contract(first_run, stores):
    data, _ = stores
    items = _items(data, first_run.manifest_id)
    assert sorted(i.conversation_id for i in items) == sorted(first_run.conversation_ids)
    assert first_run.generated == N and first_run.skipped == 0
    for item in items:
        assert item.prefix == Keys.raw_prefix(first_run.batch, item.conversation_id)
        meta = ConversationMetadata.model_validate(data.get_json(item.objects["metadata.json"].key))
        assert meta.conversation_id == item.conversation_id
        assert meta.model_version == "scripted-v0" and meta.user_id.startswith("user-")
        assert set(item.objects) == set(REQUIRED_OBJECTS) | set(audio_objects(meta.audio_layout))
        for name, ref in item.objects.items():
            info = data.stat(ref.key)
            assert info is not None and ref.version_id == info.version_id and ref.size == info.size
        durations = []
        for name in audio_objects(meta.audio_layout):
            ref = item.objects[name]
            raw = data.get_bytes(ref.key, version_id=ref.version_id)
            wav = check_wav_object(raw[:HEADER_PROBE_BYTES], len(raw))
            assert wav.sample_rate == meta.sample_rate and wav.bits_per_sample == 16
            assert wav.channels == (2 if meta.audio_layout == "stereo" else 1)
            durations.append(wav.duration_s)
            user_audio = name in ("audio.wav", "user.wav")
            assert (data.stat(ref.key).metadata.get(CONTENT_CLASS_KEY) == USER_AUDIO) == user_audio
        assert max(durations) - min(durations) < 1e-3
        words = parse_model_alignments(data.get_json(item.objects["model_text.json"].key))
        assert words and words[-1].end <= durations[0]


def test_ground_truth_lives_only_in_its_own_bucket(first_run, stores, sim_cfg):
    data, gt_store = stores
    gts = [GroundTruth.model_validate(gt_store.get_json(Keys.groundtruth(cid)))
           for cid in first_run.conversation_ids]
    assert [g.conversation_id for g in gts] == first_run.conversation_ids
    keys = [info.key for info in data.list("")]
    assert all(k.startswith(("raw/", "kb/", "manifests/")) for k in keys), keys
    assert not any(k.startswith("conversations/") for k in keys)
    secret_strings = {"good_text", "problems", "user_pseudonym", "echoed_pii", "replica_of"}
    unechoed = {p.written for g in gts for p in g.pii if not p.echoed}
    unechoed |= {u.text for g in gts for u in g.user_turns}  # what the user said, verbatim
    for key in keys:
        if key.endswith(".json") or key.endswith(".jsonl"):
            text = data.get_bytes(key).decode()
            assert not any(f'"{s}"' in text for s in secret_strings), key
            assert not any(value in text for value in unechoed), key
    # the model's text carries what the model said, including echoed PII (scrub redacts it)
    for g in gts:
        assert all(g.model_turns[p.echo_turn].text for p in g.pii if p.echoed)
    planted = load_planted_pii(sim_cfg, first_run.conversation_ids)
    assert {(p.type, p.written) for g in gts for p in g.pii} <= set(planted)
    assert len(planted) == len(set(planted))
    assert sorted(g.conversation_id for g in iter_groundtruth(sim_cfg) if g.replica_of is None) == \
        sorted(first_run.conversation_ids)


def test_consent_is_registered_by_pseudonym(first_run, stores, sim_cfg):
    _, gt_store = stores
    key = load_pseudonym_key(sim_cfg.scrub)
    registry = ConsentRegistry.from_dsn(sim_cfg.consent.dsn)
    try:
        states = {}
        for cid in first_run.conversation_ids:
            gt = GroundTruth.model_validate(gt_store.get_json(Keys.groundtruth(cid)))
            pseudonym = pseudonymise(gt.user_id, key)
            assert gt.user_pseudonym == pseudonym
            assert registry.get(pseudonym) is not None
            assert registry.has_consent(pseudonym) == gt.consent
            states[gt.user_id] = gt.consent
    finally:
        registry.close()
    assert False in states.values() and True in states.values()
    assert first_run.users_without_consent >= 1


def test_the_knowledge_base_is_published(first_run, stores):
    data, _ = stores
    for doc in W.KB_DOCUMENTS:
        assert KbDocument.model_validate(data.get_json(Keys.kb_document(doc.doc_id))) == doc


def test_rerun_is_a_noop_and_a_lost_conversation_is_redone_identically(first_run, stores, sim_cfg):
    data, gt_store = stores
    before = (_versions(data), _versions(gt_store))
    before_raw = _versions(data, "raw/")
    again = simulate_conversations(sim_cfg, n=N, progress=False)
    assert again.manifest_id == first_run.manifest_id
    assert (again.generated, again.skipped) == (0, N)
    assert (_versions(data), _versions(gt_store)) == before  # no new objects, no new versions

    # lose one conversation's ground truth (the completion marker) and one raw object
    victim = _items(data, first_run.manifest_id)[0]
    name = sorted(victim.objects)[0]
    etags = {n: data.stat(r.key).etag for n, r in victim.objects.items()}
    gt_before = gt_store.get_json(Keys.groundtruth(victim.conversation_id))
    gt_store.delete_all_versions(Keys.groundtruth(victim.conversation_id))
    data.delete_all_versions(victim.objects[name].key)
    redo = simulate_conversations(sim_cfg, n=N, progress=False)
    assert (redo.generated, redo.skipped) == (1, N - 1)
    gt_after = gt_store.get_json(Keys.groundtruth(victim.conversation_id))
    # Identical content; only the lost object's pinned version differs.
    lost_before, lost_after = gt_before["raw_objects"].pop(name), gt_after["raw_objects"].pop(name)
    assert gt_after == gt_before and lost_after["etag"] == lost_before["etag"]
    assert {n: data.stat(r.key).etag for n, r in victim.objects.items()} == etags  # same bytes
    # only the lost object was rewritten (plus the new raw manifest that pins its new version)
    assert _versions(data, "raw/") == before_raw
    assert redo.manifest_id != first_run.manifest_id


def test_replicate_corpus_copies_server_side(first_run, stores, sim_cfg):
    data, gt_store = stores
    current = simulate_conversations(sim_cfg, n=N, progress=False)  # a no-op: today's manifest
    source = {i.conversation_id: i for i in _items(data, current.manifest_id)}
    manifest_id = replicate_corpus(sim_cfg, current.manifest_id, copies=2, progress=False)
    copies = _items(data, manifest_id)
    assert len(copies) == 2 * N
    assert len({c.conversation_id for c in copies}) == 2 * N
    for item in copies:
        original_id = item.conversation_id.rsplit("-r", 1)[0]
        original = source[original_id]
        assert set(item.objects) == set(original.objects)
        meta = ConversationMetadata.model_validate(data.get_json(item.objects["metadata.json"].key))
        assert meta.conversation_id == item.conversation_id
        for name, ref in item.objects.items():
            if name != "metadata.json":
                assert ref.etag == data.stat(original.objects[name].key).etag
            if name in ("audio.wav", "user.wav"):
                assert data.stat(ref.key).metadata.get(CONTENT_CLASS_KEY) == USER_AUDIO
        gt = GroundTruth.model_validate(gt_store.get_json(Keys.groundtruth(item.conversation_id)))
        assert gt.replica_of == original_id and gt.conversation_id == item.conversation_id
    audio = data.get_bytes(copies[0].objects[sorted(n for n in copies[0].objects if n.endswith(".wav"))[0]].key)
    assert decode_wav(audio)[0].size > 0
    versions = _versions(data)
    assert replicate_corpus(sim_cfg, current.manifest_id, copies=2, progress=False) == manifest_id
    assert _versions(data) == versions
    summary = json.loads(json.dumps(first_run.summary()))  # plain JSON figures, no content
    assert summary["conversations"] == N and "conversation_ids" not in summary
