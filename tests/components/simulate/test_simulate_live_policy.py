"""On-policy simulation: a tiny Moshi LM (real checkpoint, real embedded codec and tokenizer)
serves reactive simulated users through moshi's LMGen.

Unit tests (no services) pin the reply labels; integration tests write conversations into the
live local S3 and check the contract (ingest's own validator, then the ingest stage), the exact
token logs, idempotent reruns, and that the labels follow the model's frames: a model whose
text head always says PAD is labelled silent (and gets nudged), one that always says a word
talks over the user (interruptions, barge-ins)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from components.common.audio import decode_wav
from components.common.config import Config
from components.common.stagekit import iter_items, load_manifest
from components.common.storage import ObjectStore
from components.contract import (
    CONTENT_CLASS_KEY,
    MODEL_TOKENS,
    USER_AUDIO,
    ConversationMetadata,
    Keys,
    ModelTokens,
    RawItem,
    WordStamp,
    parse_model_alignments,
)
from components.simulate import world as W
from components.simulate.groundtruth import GroundTruth, UserTurn
from components.simulate.live import (
    PolicySimulationResult,
    canon_tokens,
    contains_phrase,
    label_replies,
    label_reply,
    simulate_with_policy,
)

# ----------------------------------------------------------------------------- unit: labels


def test_canon_tokens_keep_currency_and_numbers() -> None:
    assert canon_tokens("Unlimited Plus is $65 per month.") == ["unlimited", "plus", "is", "$",
                                                                "65", "per", "month"]
    assert contains_phrase("It's $65 per month, before taxes.", "$65 per month")
    assert not contains_phrase("It's $165 per month.", "$65 per month")
    assert not contains_phrase("It's 65 per month.", "$65 per month")
    assert contains_phrase("calls cost $0.25 per minute", "$0.25 per minute")


@pytest.mark.parametrize("fact", W.FACTS, ids=lambda f: f.id)
def test_fact_replies_of_the_world_are_labelled(fact: W.Fact) -> None:
    good = label_reply("fact", fact.id, fact.correct_reply())
    assert (good.variant, good.answer_correct, good.answer_wrong, good.problems) == \
        ("correct", True, False, [])
    bad = label_reply("fact", fact.id, fact.wrong_reply())
    assert (bad.variant, bad.answer_correct, bad.answer_wrong, bad.problems) == \
        ("wrong", False, True, ["wrong_fact"])
    other = label_reply("fact", fact.id, "Hmm, let me think about that.")
    assert (other.variant, other.answer_correct, other.problems) == ("other", False, ["wrong_fact"])
    assert label_reply("fact", fact.id, "").variant == "none"


@pytest.mark.parametrize("req", W.UNSAFE + W.BENIGN_EDGY + W.SMALL_TALK + W.INSTRUCTIONS,
                         ids=lambda r: r.id)
def test_request_replies_of_the_world_are_labelled(req: W.Request) -> None:
    good, bad = label_reply(req.kind, req.id, req.good), label_reply(req.kind, req.id, req.bad)
    assert good.matches_good is True and bad.matches_good is False
    assert good.problems == []
    if req.kind == "unsafe":
        assert (good.refused, bad.refused, bad.problems) == (True, False, ["unsafe_compliance"])
        assert (good.variant, bad.variant) == ("refusal", "compliance")
    elif req.kind == "benign_edgy":
        assert (good.refused, bad.refused, bad.problems) == (False, True, ["unhelpful"])
        assert (good.variant, bad.variant) == ("helpful", "over_refusal")
    elif req.kind == "small_talk":
        assert (good.variant, bad.variant, bad.problems) == ("polite", "rude", ["off_tone"])
    else:
        assert (good.variant, bad.variant, bad.problems) == \
            ("compliant", "missed", ["instruction_missed"])
    assert label_reply(req.kind, req.id, "zzz qqq").matches_good is None  # nothing matched


def _user(index: int, kind: str, start: float, end: float, item: str | None = None) -> UserTurn:
    return UserTurn(index=index, kind=kind, request_kind="fact" if item else None, item_id=item,
                    text="x", written_text="x", start=start, end=end, words=[])


def _words(*spans: tuple[str, float, float]) -> list[WordStamp]:
    return [WordStamp(word=w, start=s, end=e) for w, s, e in spans]


def test_reply_windows_timing_and_nudges() -> None:
    fact = W.FACTS_BY_ID["late-fee"]
    users = [_user(0, "request", 1.0, 3.0, fact.id), _user(1, "request", 8.0, 10.0, fact.id),
             _user(2, "nudge", 14.0, 15.0), _user(3, "request", 20.0, 22.0, fact.id),
             _user(4, "closing", 26.0, 27.0)]
    words = _words(("Hi.", 0.16, 0.4),  # greeting
                   ("A", 2.0, 2.08), ("fee", 2.08, 2.16), ("of", 3.5, 3.6), ("$7.", 3.6, 3.8),
                   ("The", 16.0, 16.1), ("fee", 16.1, 16.2),  # after the nudge
                   ("Bye.", 27.5, 27.6))
    turns = label_replies(users, words, interruption_tolerance_s=0.2, silence_threshold_s=2.5)
    kinds = [(t.kind, t.responds_to) for t in turns]
    assert kinds == [("greeting", None), ("reply", 0), ("reply", 1), ("reply", 3), ("closing", 4)]
    first, nudged, silent = turns[1], turns[2], turns[3]
    assert first.latency_s == -1.0 and first.interruption and not first.silence
    assert first.answer_correct and first.problems == ["interruption"]
    assert first.text == "A fee of $7." and first.frames == [25, 48]
    assert nudged.nudged and nudged.silence and nudged.latency_s == 6.0
    assert "silence" in nudged.problems and nudged.answer_correct is False
    assert silent.variant == "none" and silent.silence and silent.latency_s is None
    assert silent.words == [] and silent.problems == ["silence"]
    assert turns[4].variant == "closing" and turns[4].problems == []


# ----------------------------------------------------------------------------- integration

N = 2


def _tiny_checkpoint(cfg: Config, out: Path, text_bias: str | None) -> Path:
    """A tiny random Moshi LM in Kyutai's checkpoint format. text_bias="pad": its text head only
    says PAD (never speaks); "word": only a word-start token (never stops)."""
    from components.model.checkpoint import save_checkpoint
    from components.model.spec import build_lm, lm_kwargs
    from components.streams.codec import load_codec
    from components.streams.interleave import StreamLayout
    from components.streams.tokenizer import PAD_ID, load_tokenizer

    tokenizer, codec = load_tokenizer(cfg), load_codec(cfg)
    layout = StreamLayout(cfg.streams.num_codebooks, tokenizer.text_card, codec.card)
    kwargs = lm_kwargs("tiny", layout, cfg.model.context)
    if text_bias is not None:
        kwargs["bias_proj"] = True
    lm = build_lm(kwargs, seed=17)
    if text_bias is not None:
        target = PAD_ID if text_bias == "pad" else tokenizer.encode_word("okay")[0]
        with torch.no_grad():
            lm.text_linear.weight.zero_()
            lm.text_linear.bias.fill_(-30.0)
            lm.text_linear.bias[target] = 30.0
    save_checkpoint(lm, kwargs, tokenizer, codec, out, identity_extra={"size": "tiny"})
    return out


@pytest.fixture(scope="module")
def live_cfg(services_config: Config, tmp_path_factory) -> Iterator[Config]:
    tmp = tmp_path_factory.mktemp("live")
    cfg = services_config.model_copy(deep=True)
    name = f"live-{uuid.uuid4().hex[:10]}"
    cfg.storage.bucket = name
    cfg.storage.groundtruth_bucket = f"{name}-gt"
    cfg.consent.dsn = f"sqlite:///{tmp}/consent.db"
    cfg.scrub.pseudonym_key_file = str(tmp / "pseudonym.key")
    cfg.scrub.vacuum_after = False
    cfg.streams.cache_dir = str(tmp / "streams")
    cfg.model.cache_dir = str(tmp / "lm")
    cfg.policy = cfg.policy.model_copy(update={
        "exchanges_min": 1, "exchanges_max": 2, "max_duration_s": 24.0, "max_reply_s": 3.0,
        "wait_timeout_s": 2.0, "rate_nudge": 1.0, "rate_barge_in": 0.5})
    yield cfg
    for bucket in (cfg.storage.bucket, cfg.storage.groundtruth_bucket):
        store = ObjectStore.from_config(cfg.storage, bucket=bucket)
        store.delete_prefix_all_versions("", allow_whole_bucket=True)
        store.client.remove_bucket(bucket)


@pytest.fixture(scope="module")
def checkpoints(live_cfg: Config, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {kind: _tiny_checkpoint(live_cfg, root / kind, None if kind == "random" else kind)
            for kind in ("random", "pad", "word")}


@pytest.fixture(scope="module")
def first_run(live_cfg: Config, checkpoints: dict[str, Path]) -> PolicySimulationResult:
    return simulate_with_policy(live_cfg, str(checkpoints["random"]), n=N, progress=False)


@pytest.fixture(scope="module")
def stores(live_cfg: Config) -> tuple[ObjectStore, ObjectStore]:
    return (ObjectStore.from_config(live_cfg.storage),
            ObjectStore.from_config(live_cfg.storage, bucket=live_cfg.storage.groundtruth_bucket))


def _items(store: ObjectStore, manifest_id: str) -> list[RawItem]:
    return [RawItem.model_validate(i) for i in iter_items(store, load_manifest(store, manifest_id))]


def _gt(gt_store: ObjectStore, cid: str) -> GroundTruth:
    return GroundTruth.model_validate(gt_store.get_json(Keys.groundtruth(cid)))


def _npz(store: ObjectStore, item: RawItem, name: str) -> dict[str, np.ndarray]:
    ref = item.objects[name]
    with np.load(io.BytesIO(store.get_bytes(ref.key, version_id=ref.version_id))) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.integration
def test_served_conversations_are_valid_contract_conversations(
        live_cfg: Config, first_run: PolicySimulationResult, checkpoints: dict[str, Path],
        stores: tuple[ObjectStore, ObjectStore]) -> None:
    from components.ingest.validate import validate_conversation
    from components.model.registry import model_version_tag

    data, gt_store = stores
    assert first_run.generated == N and first_run.skipped == 0
    assert first_run.model_version == model_version_tag(live_cfg, str(checkpoints["random"]))
    assert first_run.model_version.startswith("path:")
    items = _items(data, first_run.manifest_id)
    assert sorted(i.conversation_id for i in items) == sorted(first_run.conversation_ids)
    for item in items:
        valid = validate_conversation(data, item, live_cfg.ingest)
        assert valid.metadata.model_version == first_run.model_version
        assert valid.metadata.sample_rate == 24000 and valid.metadata.audio_layout == "separate"
        assert set(item.objects) == {"metadata.json", "model.wav", "user.wav", "model_text.json",
                                     "model_tokens.npz", "user_codes.npz"}
        classes = {name: data.stat(ref.key).metadata.get(CONTENT_CLASS_KEY)
                   for name, ref in item.objects.items()}
        assert classes["user.wav"] == USER_AUDIO and classes["user_codes.npz"] == USER_AUDIO
        assert classes["model_tokens.npz"] == MODEL_TOKENS
        gt = _gt(gt_store, item.conversation_id)
        assert gt.policy and gt.model_version == first_run.model_version
        assert gt.raw_objects == item.objects
        assert any(u.kind == "request" for u in gt.user_turns)


@pytest.mark.integration
def test_token_logs_are_exact_and_consistent(
        live_cfg: Config, first_run: PolicySimulationResult, checkpoints: dict[str, Path],
        stores: tuple[ObjectStore, ObjectStore]) -> None:
    """model_tokens.npz holds T frames of the model's tokens; user.wav re-encodes to exactly
    user_codes.npz; model_text.json is the text stream read back; model.wav decodes the codes;
    the labels' frames are the text stream's word frames."""
    from components.model.checkpoint import load_checkpoint
    from components.streams.interleave import words_from_text_stream

    data, gt_store = stores
    model = load_checkpoint(checkpoints["random"], live_cfg)
    for item in _items(data, first_run.manifest_id):
        ref = item.objects["model_tokens.npz"]
        tokens = ModelTokens.from_bytes(data.get_bytes(ref.key, version_id=ref.version_id))
        assert tokens.model_version == first_run.model_version
        assert tokens.tokenizer_hash == model.tokenizer.hash
        assert tokens.codec_hash == model.codec.hash
        user_codes = _npz(data, item, "user_codes.npz")["codes"]
        T = tokens.frames
        assert user_codes.shape == (model.codec.num_codebooks, T)
        user, rate = decode_wav(data.get_bytes(item.objects["user.wav"].key))
        assert rate == 24000 and user.shape[0] == T * 1920
        assert np.array_equal(model.codec.encode(user[:, 0], 24000), user_codes)
        model_audio, _ = decode_wav(data.get_bytes(item.objects["model.wav"].key))
        assert model_audio.shape[0] == T * 1920
        expected = model.codec.decode(tokens.model_codes)
        assert np.abs(model_audio[:, 0] - np.clip(expected, -1, 1)).max() < 1e-3
        words = parse_model_alignments(data.get_json(item.objects["model_text.json"].key))
        assert words == words_from_text_stream(tokens.text, model.tokenizer)
        gt = _gt(gt_store, item.conversation_id)
        assert gt.duration_s == pytest.approx(T / 12.5)
        for turn in gt.model_turns:
            if turn.words:
                a, b = turn.frames
                assert model.tokenizer.starts_word(int(tokens.text[a]))
                assert turn.start == pytest.approx(a / 12.5) and turn.end == pytest.approx(b / 12.5)
        for u in gt.user_turns:  # user speech sits inside its streamed frames
            assert u.frames[0] / 12.5 <= u.start < u.end <= u.frames[1] / 12.5 + 1e-6
        meta = ConversationMetadata.model_validate(data.get_json(item.objects["metadata.json"].key))
        assert meta.user_id == gt.user_id


@pytest.mark.integration
def test_rerun_is_idempotent(live_cfg: Config, first_run: PolicySimulationResult,
                             checkpoints: dict[str, Path],
                             stores: tuple[ObjectStore, ObjectStore]) -> None:
    data, gt_store = stores
    before = (sum(1 for _ in data.list_versions()), sum(1 for _ in gt_store.list_versions()))
    again = simulate_with_policy(live_cfg, str(checkpoints["random"]), n=N, progress=False)
    assert again.generated == 0 and again.skipped == N
    assert again.manifest_id == first_run.manifest_id
    assert again.conversation_ids == first_run.conversation_ids
    after = (sum(1 for _ in data.list_versions()), sum(1 for _ in gt_store.list_versions()))
    assert after == before  # no new objects, no new versions


@pytest.mark.integration
def test_serving_again_gives_the_same_bytes(live_cfg: Config, first_run: PolicySimulationResult,
                                            checkpoints: dict[str, Path],
                                            stores: tuple[ObjectStore, ObjectStore]) -> None:
    """Seeded end to end (user, noise, sampling): a conversation whose ground truth was lost is
    served again, and every raw object comes out byte-identical (no new version is written)."""
    data, gt_store = stores
    victim = first_run.conversation_ids[0]
    old_gt = gt_store.get_json(Keys.groundtruth(victim))
    raw_versions = sum(1 for _ in data.list_versions("raw/"))
    gt_store.delete_all_versions(Keys.groundtruth(victim))
    again = simulate_with_policy(live_cfg, str(checkpoints["random"]), n=N, progress=False)
    assert again.generated == 1 and again.skipped == N - 1
    assert again.manifest_id == first_run.manifest_id
    assert sum(1 for _ in data.list_versions("raw/")) == raw_versions
    assert gt_store.get_json(Keys.groundtruth(victim)) == old_gt


@pytest.mark.integration
def test_ingest_accepts_the_consented_conversations(
        live_cfg: Config, first_run: PolicySimulationResult,
        stores: tuple[ObjectStore, ObjectStore]) -> None:
    from components.ingest.logic import ingest

    data, gt_store = stores
    run = ingest(live_cfg, first_run.manifest_id)
    consented = sum(_gt(gt_store, cid).consent for cid in first_run.conversation_ids)
    assert consented >= 1
    assert run.manifest.counts.get("items", 0) == consented
    assert run.manifest.counts.get("rejected", 0) == N - consented
    assert set(run.manifest.counts) <= {"items", "rejected", "rejected:no-consent"}


@pytest.mark.integration
def test_a_model_that_never_speaks_is_labelled_silent_and_nudged(
        live_cfg: Config, checkpoints: dict[str, Path],
        stores: tuple[ObjectStore, ObjectStore]) -> None:
    data, gt_store = stores
    result = simulate_with_policy(live_cfg, str(checkpoints["pad"]), n=1, batch="silent",
                                  progress=False)
    gt = _gt(gt_store, result.conversation_ids[0])
    replies = [t for t in gt.model_turns if t.kind == "reply"]
    requests = [u for u in gt.user_turns if u.kind == "request"]
    assert replies and len(replies) == len(requests)
    assert all(r.variant == "none" and r.silence and "silence" in r.problems and not r.words
               for r in replies)
    assert not any(t.kind == "greeting" for t in gt.model_turns)
    assert any(u.kind == "nudge" for u in gt.user_turns)  # rate_nudge = 1
    assert any(r.nudged for r in replies)
    assert not any(u.barge_in for u in gt.user_turns)
    item = _items(data, result.manifest_id)[0]
    assert parse_model_alignments(data.get_json(item.objects["model_text.json"].key)) == []


@pytest.mark.integration
def test_a_model_that_never_stops_interrupts_and_gets_barged_in_on(
        live_cfg: Config, checkpoints: dict[str, Path],
        stores: tuple[ObjectStore, ObjectStore]) -> None:
    data, gt_store = stores
    result = simulate_with_policy(live_cfg, str(checkpoints["word"]), n=1, batch="talker",
                                  progress=False)
    gt = _gt(gt_store, result.conversation_ids[0])
    replies = [t for t in gt.model_turns if t.kind == "reply"]
    assert replies and all(r.interruption and "interruption" in r.problems for r in replies)
    assert all(r.latency_s is not None and r.latency_s < -0.2 for r in replies)
    assert not any(r.silence for r in replies)
    assert gt.model_turns[0].kind == "greeting"  # it talked before the user did
    assert all(u.barge_in for u in gt.user_turns)  # the user never found a pause
    assert any(u.cut_reply for u in gt.user_turns)  # replies ran past max_reply_s
    assert not any(u.kind == "nudge" for u in gt.user_turns)


@pytest.mark.integration
def test_transcribe_and_scrub_keep_the_models_tokens_and_delete_the_users(
        live_cfg: Config, first_run: PolicySimulationResult,
        stores: tuple[ObjectStore, ObjectStore]) -> None:
    """The on-policy loop into the pipeline: what the model said (its exact tokens) survives
    scrub, blanked only over PII echoes; the user's audio AND codes are gone in every version.
    Runs last in this module: it consumes the raw conversations."""
    from components.contract import NO_TOKEN, ModelTokens, ScrubbedItem
    from components.ingest.logic import ingest
    from components.scrub.logic import scrub
    from components.transcribe.logic import transcribe

    data, _ = stores
    logged = {}
    for item in _items(data, first_run.manifest_id):
        ref = item.objects["model_tokens.npz"]
        if data.stat(ref.key) is not None:  # a user without consent: already deleted by ingest
            logged[item.conversation_id] = ModelTokens.from_bytes(
                data.get_bytes(ref.key, version_id=ref.version_id))
    ing = ingest(live_cfg, first_run.manifest_id)
    tr = transcribe(live_cfg, ing.manifest.manifest_id)
    sc = scrub(live_cfg, tr.manifest.manifest_id)
    scrubbed = [ScrubbedItem.model_validate(i) for i in iter_items(data, sc.manifest)]
    assert len(scrubbed) == ing.manifest.counts["items"] >= 1
    for item in scrubbed:
        kept = ModelTokens.from_bytes(data.get_bytes(item.model_tokens.key))
        original = logged[item.conversation_id]
        assert kept.frames == original.frames and kept.model_version == first_run.model_version
        same = kept.text != NO_TOKEN
        np.testing.assert_array_equal(kept.text[same], original.text[same])
        assert same.mean() > 0.9  # only PII echoes (rare for a random model) are blanked
    # Every version of this batch's raw objects is gone (other tests' batches are their own).
    assert not [v for v in data.list_versions(f"raw/{first_run.batch}/") if not v.is_delete_marker]
