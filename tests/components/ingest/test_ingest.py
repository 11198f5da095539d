"""ingest against the live S3 server: every kind of bad input gets its own per-item result."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest

from components.common.audio import encode_wav
from components.common.stagekit import iter_items, iter_rejects
from components.contract import IngestedItem, ModelTokens
from components.ingest.logic import ingest, seal_raw_batch
from tests.support.stage import grant
from tests.support.conversations import put_conversation, tone, truncated, wav_header, write_long_wav

pytestmark = pytest.mark.integration


def _rejects(store, manifest) -> dict[str, str]:
    return {r.item.split("~")[-1]: r.code for r in iter_rejects(store, manifest)}


def _token_logs(frames: int) -> dict[str, bytes]:
    """A Moshi server's per-frame logs: the model's tokens and the user's codes."""
    logged = ModelTokens(np.full(frames, 3), np.zeros((4, frames)), frame_rate=12.5,
                         tokenizer_hash="spm-t", codec_hash="mimi-t", model_version="m/1")
    codes = io.BytesIO()
    np.savez(codes, codes=np.zeros((4, frames), np.int32))
    return {"model_tokens.npz": logged.to_bytes(), "user_codes.npz": codes.getvalue()}


def test_good_conversations_pass_and_bad_ones_get_a_reason_each(stage_cfg, stage_store):
    s = stage_store
    grant(stage_cfg, "user-1", "user-2")
    put_conversation(s, "b1", "good-stereo")
    put_conversation(s, "b1", "good-separate-44k", layout="separate", rate=44100)
    put_conversation(s, "b1", "rate-odd", rate=11025)
    put_conversation(s, "b1", "truncated", raw_objects={"audio.wav": truncated(
        encode_wav(np.stack([tone(2, 24000), tone(2, 24000)], axis=1), 24000))})
    put_conversation(s, "b1", "mono-as-stereo", raw_objects={"audio.wav": encode_wav(tone(2, 24000), 24000)})
    put_conversation(s, "b1", "no-user-channel", layout="separate", skip=("user.wav",))
    put_conversation(s, "b1", "zero-frames", raw_objects={"audio.wav": wav_header(2, 24000, 0)})
    put_conversation(s, "b1", "empty-object", raw_objects={"audio.wav": b""})
    put_conversation(s, "b1", "bad-json", meta_override=b'{"conversation_id": "bad-json",')
    put_conversation(s, "b1", "not-utf8", meta_override=b'{"user_id": "\xff\xfe"}')
    put_conversation(s, "b1", "missing-field", meta_override={"model_version": ""})
    put_conversation(s, "b1", "words-past-end", words=[("late", 30.0, 30.5)])
    put_conversation(s, "b1", "no-consent", user="user-without-consent")
    put_conversation(s, "b1", "good-with-tokens", raw_objects=_token_logs(25))  # 2 s at 12.5 Hz
    put_conversation(s, "b1", "tokens-too-short", raw_objects=_token_logs(8))
    put_conversation(s, "b1", "tokens-garbage", raw_objects={"model_tokens.npz": b"not a zip"})
    put_conversation(s, "b2", "good-stereo")  # duplicate conversation id in another folder
    manifest_id = seal_raw_batch(s, "raw/")

    result = ingest(stage_cfg, manifest_id)
    m = result.manifest
    ingested = {IngestedItem.model_validate(i).conversation_id for i in iter_items(s, m)}
    assert ingested == {"good-stereo", "good-separate-44k", "good-with-tokens"}
    assert _rejects(s, m) == {
        "rate-odd": "unsupported-rate",
        "truncated": "truncated-audio",
        "mono-as-stereo": "missing-channel",
        "no-user-channel": "missing-channel",
        "zero-frames": "zero-length",
        "empty-object": "zero-length",
        "bad-json": "bad-json",
        "not-utf8": "bad-encoding",
        "missing-field": "bad-metadata",
        "words-past-end": "bad-alignments",
        "no-consent": "no-consent",
        "tokens-too-short": "bad-tokens",
        "tokens-garbage": "bad-tokens",
        "good-stereo": "duplicate",
    }
    assert m.counts["items"] + m.counts["rejected"] == 17  # nothing lost, nothing doubled
    # No consent: every version of every raw object is gone.
    assert not list(s.list_versions("raw/b1/no-consent/"))
    report = s.get_json(f"reports/ingest/{m.manifest_id}/rejects.json")
    assert {r["code"] for r in report["rejects"]} >= {"truncated-audio", "no-consent"}
    assert all(r["reason"] for r in report["rejects"])

    again = ingest(stage_cfg, manifest_id)  # idempotent: same manifest, nothing reprocessed
    assert again.manifest.manifest_id == m.manifest_id
    assert again.processed == 0


def test_one_hour_conversation_is_validated_in_bounded_memory(stage_cfg, stage_store, tmp_path):
    grant(stage_cfg, "user-1")
    prefix = put_conversation(stage_store, "long", "one-hour", layout="separate", rate=8000,
                              skip=("model.wav", "user.wav"),
                              meta_override={"sample_rate": 8000})
    for name in ("model.wav", "user.wav"):
        path = write_long_wav(tmp_path / name, 3600.0, rate=8000)
        stage_store.put_file(prefix + name, path)
        path.unlink()
    manifest_id = seal_raw_batch(stage_store, "raw/long/")

    tracemalloc.start()
    result = ingest(stage_cfg, manifest_id)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    items = [IngestedItem.model_validate(i) for i in iter_items(stage_store, result.manifest)]
    assert [i.duration_s for i in items] == [3600.0]
    assert peak < 20 * 1024 * 1024, f"ingest held {peak / 2**20:.1f} MiB for a 115 MB conversation"


def test_an_object_gone_after_sealing_is_a_per_item_reject(stage_cfg, stage_store):
    grant(stage_cfg, "user-1")
    put_conversation(stage_store, "g", "kept")
    prefix = put_conversation(stage_store, "g", "vanished")
    manifest_id = seal_raw_batch(stage_store, "raw/g/")
    stage_store.delete_all_versions(prefix + "model_text.json")
    result = ingest(stage_cfg, manifest_id)
    assert _rejects(stage_store, result.manifest) == {"vanished": "missing-object"}
    assert result.manifest.counts["items"] == 1


def test_a_scheduled_seal_takes_only_conversations_not_yet_ingested(stage_cfg, stage_store):
    """A recurring run seals raw/ itself (pending_only): what a previous run ingested is left
    out, so nothing is ingested twice."""
    grant(stage_cfg, "user-1")
    put_conversation(stage_store, "week1", "first")
    ingest(stage_cfg, seal_raw_batch(stage_store, "raw/week1/"))
    put_conversation(stage_store, "week2", "second")
    pending = seal_raw_batch(stage_store, "raw/", pending_only=True)
    m = ingest(stage_cfg, pending).manifest
    assert {IngestedItem.model_validate(i).conversation_id
            for i in iter_items(stage_store, m)} == {"second"}
    everything = seal_raw_batch(stage_store, "raw/")  # the plain seal still pins both
    assert everything != pending
