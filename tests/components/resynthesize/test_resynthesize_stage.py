"""The resynthesize stage against the live S3 server: a pairs manifest in, pair audio and records
out, clear per-item errors, and a rerun that repays and rewrites nothing."""

from __future__ import annotations

import pytest

from components.common.audio import decode_wav, encode_wav
from components.common.stagekit import ManifestWriter, iter_items, iter_rejects
from components.contract import (
    MODEL_SAMPLE_RATE,
    Keys,
    ModelTokens,
    ObjectRef,
    ResynthesisRecord,
    ResynthesizedPair,
)
from components.resynthesize.logic import resynthesize
from components.speech.tts import TtsUnavailable
from tests.components.resynthesize.conftest import CID, Conversation

pytestmark = pytest.mark.integration


def _ref(store, key: str, version: str | None) -> dict:
    return ObjectRef(key=key, version_id=version).model_dump(mode="json")


def _write_inputs(store, conv: Conversation) -> dict:
    transcript_key, judgement_key = Keys.transcript(CID), Keys.judgement(CID, "jv1")
    audio_key, tokens_key = Keys.conversation_audio(CID), Keys.conversation_tokens(CID)
    tokens = ModelTokens([3] * 10, [[7] * 10], frame_rate=12.5, tokenizer_hash="t",
                         codec_hash="c", model_version="model-v1")
    return {
        "judge_manifest_id": "judge-test",
        "transcript": _ref(store, transcript_key, store.put_json(
            transcript_key, conv.transcript.model_dump(mode="json"))),
        "judgement": _ref(store, judgement_key, store.put_json(
            judgement_key, conv.judgement.model_dump(mode="json"))),
        "model_audio": _ref(store, audio_key, store.put_bytes(
            audio_key, encode_wav(conv.model_audio, MODEL_SAMPLE_RATE), "audio/wav")),
        "model_tokens": _ref(store, tokens_key, store.put_bytes(tokens_key, tokens.to_bytes())),
    }


def test_stage_writes_pair_audio_and_reruns_idempotently(stage_cfg, stage_store,
                                                         conversation: Conversation) -> None:
    s = stage_store
    provenance = _write_inputs(s, conversation)
    short_key = "conversations/short/model.wav"
    short = _ref(s, short_key, s.put_bytes(short_key, encode_wav(
        conversation.model_audio[: 5 * MODEL_SAMPLE_RATE], MODEL_SAMPLE_RATE), "audio/wav"))
    pairs = [p.model_copy(update={"provenance": provenance}) for p in conversation.pairs.values()]
    broken = [
        pairs[0].model_copy(update={"pair_id": "missing-audio", "provenance": {
            **provenance, "model_audio": {"key": "conversations/nope/model.wav"}}}),
        pairs[0].model_copy(update={"pair_id": "short-audio",
                                    "provenance": {**provenance, "model_audio": short}}),
        pairs[0].model_copy(update={"pair_id": "no-refs", "provenance": {}}),
    ]
    writer = ManifestWriter(s, "pairs", None)
    for pair in pairs + broken:
        writer.add_item(pair.model_dump(mode="json"))
    pairs_manifest = writer.close()

    run = resynthesize(stage_cfg, pairs_manifest.manifest_id)
    assert run.processed == 6 and run.skipped == 0
    assert run.manifest.counts["items"] == 3
    codes = {e.item: e.code for e in iter_rejects(s, run.manifest)}
    assert codes == {"missing-audio": "missing-input", "short-audio": "audio-shorter-than-alignments",
                     "no-refs": "bad-provenance"}
    assert run.manifest.stats["tts_user"].startswith("piper:")
    assert run.manifest.stats["fit_error_s"]["max"] <= 0.15

    outputs = [ResynthesizedPair.model_validate(i) for i in iter_items(s, run.manifest)]
    assert [o.pair.pair_id for o in outputs] == [p.pair_id for p in pairs]
    for out in outputs:
        record = ResynthesisRecord.model_validate(s.get_json(out.record.key))
        assert out.record.key == Keys.pair_object(out.pair.pair_id, "resynthesis.json")
        assert record.chosen == out.pair.chosen and record.rejected_audio == "logged"
        lengths = set()
        for ref, name in ((out.user_audio, "user.wav"), (out.chosen_model_audio, "chosen_model.wav"),
                          (out.rejected_model_audio, "rejected_model.wav")):
            assert ref.key == Keys.pair_object(out.pair.pair_id, name)
            audio, rate = decode_wav(s.get_bytes(ref.key, version_id=ref.version_id))
            assert rate == MODEL_SAMPLE_RATE and audio.shape[1] == 1
            lengths.add(audio.shape[0])
        assert lengths == {int(round(record.duration_s * MODEL_SAMPLE_RATE))}
        assert out.model_tokens is not None and out.model_tokens.key == Keys.conversation_tokens(CID)
        assert out.pair.chosen.start >= record.user_speech_end
        assert "[" not in out.pair.chosen.text
    user_meta = s.stat(outputs[0].user_audio.key).metadata
    assert user_meta.get("duplexalign-content") == "synthetic-speech"

    # rerun: nothing processed, same manifest, no new object versions
    versions = sorted((v.key, v.version_id) for v in s.list_versions("pairs/"))
    again = resynthesize(stage_cfg, pairs_manifest.manifest_id)
    assert again.processed == 0 and again.skipped == 6
    assert again.manifest.manifest_id == run.manifest.manifest_id
    # a lost marker (crash between outputs and marker): redone, outputs not rewritten
    s.delete_all_versions(Keys.item_state("resynthesize", pairs_manifest.manifest_id, pairs[1].pair_id))
    redo = resynthesize(stage_cfg, pairs_manifest.manifest_id)
    assert redo.processed == 1 and redo.manifest.manifest_id == run.manifest.manifest_id
    assert sorted((v.key, v.version_id) for v in s.list_versions("pairs/")) == versions


def test_stage_resynthesized_rejected_side_drops_the_logged_tokens(stage_cfg, stage_store,
                                                                   conversation: Conversation) -> None:
    s = stage_store
    provenance = _write_inputs(s, conversation)
    writer = ManifestWriter(s, "pairs", None)
    writer.add_item(conversation.pairs["B"].model_copy(update={"provenance": provenance})
                    .model_dump(mode="json"))
    manifest = writer.close()
    stage_cfg.resynthesize.rejected_audio = "resynthesized"
    run = resynthesize(stage_cfg, manifest.manifest_id)
    [out] = [ResynthesizedPair.model_validate(i) for i in iter_items(s, run.manifest)]
    assert out.model_tokens is None  # the rejected audio is TTS now: tokenize re-encodes it
    record = ResynthesisRecord.model_validate(s.get_json(out.record.key))
    assert record.rejected_audio == "resynthesized"
    # the moved chosen reply is the same (resynthesised) speech as the rejected one, moved
    assert [w.word for w in out.pair.chosen.words] == [w.word for w in out.pair.rejected.words]


def test_a_backend_that_cannot_run_fails_the_run_once(stage_cfg, stage_store) -> None:
    writer = ManifestWriter(stage_store, "pairs", None)
    manifest = writer.close()
    stage_cfg.resynthesize.model_tts = "kyutai"
    stage_cfg.resynthesize.kyutai_voice = "voice.safetensors"
    stage_cfg.resynthesize.kyutai_tts_source = f"s3://{stage_cfg.storage.bucket}/models/kyutai-tts/"
    with pytest.raises(TtsUnavailable, match="no Kyutai TTS checkpoint at s3://"):
        resynthesize(stage_cfg, manifest.manifest_id)
