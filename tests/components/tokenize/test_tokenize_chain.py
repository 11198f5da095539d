"""resynthesize → tokenize on the resynthesize tests' conversation (real piper speech, real
resynthesis): what the resynthesize stage writes is what the tokenize stage reads, for the
logged and the resynthesised rejected side."""

from __future__ import annotations

import numpy as np
import pytest

from components.common.stagekit import ManifestWriter, iter_items, iter_rejects
from components.contract import MODEL_SAMPLE_RATE, Keys, ModelTokens, ObjectRef
from components.resynthesize.logic import resynthesize
from components.streams.pairset import PairDataset
from components.streams.tokenizer import load_tokenizer
from components.tokenize.logic import tokenize, transcript_text
from tests.components.resynthesize.conftest import CID, build_conversation

pytestmark = pytest.mark.integration


def _inputs(store, conv, tokenizer, codec) -> dict:
    """The scrubbed conversation's objects, with model tokens of the configured stream format
    (text from the redacted words, PII frames blanked, codes of the logged model audio)."""
    frames = -(-len(conv.model_audio) // 1920)
    tokens = ModelTokens(transcript_text(conv.transcript.model_words, tokenizer, frames),
                         codec.encode(conv.model_audio, MODEL_SAMPLE_RATE), frame_rate=12.5,
                         tokenizer_hash=tokenizer.hash, codec_hash=codec.hash,
                         model_version="model-v1")
    from components.common.audio import encode_wav

    keys = {"transcript": Keys.transcript(CID), "judgement": Keys.judgement(CID, "jv1"),
            "model_audio": Keys.conversation_audio(CID), "model_tokens": Keys.conversation_tokens(CID)}
    versions = {
        "transcript": store.put_json(keys["transcript"], conv.transcript.model_dump(mode="json")),
        "judgement": store.put_json(keys["judgement"], conv.judgement.model_dump(mode="json")),
        "model_audio": store.put_bytes(keys["model_audio"],
                                       encode_wav(conv.model_audio, MODEL_SAMPLE_RATE)),
        "model_tokens": store.put_bytes(keys["model_tokens"], tokens.to_bytes()),
    }
    refs = {n: ObjectRef(key=keys[n], version_id=v).model_dump(mode="json")
            for n, v in versions.items()}
    return {"judge_manifest_id": "judge-test", **refs, "_tokens": tokens}


# The default (logged rejected side) only, to bound the folder's time: the resynthesised control
# costs another ~25 s of TTS; it is covered on synthetic inputs by test_tokenize_stage, and this
# test passes with "resynthesized" added here.
@pytest.mark.parametrize("rejected_audio", ["logged"])
def test_resynthesize_then_tokenize(stage_cfg, stage_store, codec, rejected_audio):
    s = stage_store
    conv = build_conversation()
    tok = load_tokenizer(stage_cfg)
    provenance = _inputs(s, conv, tok, codec)
    tokens = provenance.pop("_tokens")
    writer = ManifestWriter(s, "pairs", None)
    for pair in conv.pairs.values():
        writer.add_item(pair.model_copy(update={"provenance": provenance}).model_dump(mode="json"))
    stage_cfg.resynthesize.rejected_audio = rejected_audio
    resynth = resynthesize(stage_cfg, writer.close().manifest_id)
    assert resynth.manifest.counts["items"] == 3, list(iter_rejects(s, resynth.manifest))

    run = tokenize(stage_cfg, resynth.manifest.manifest_id)
    assert run.manifest.counts["items"] == 3, [r.model_dump() for r in iter_rejects(s, run.manifest)]
    records = {r["pair_id"]: r for r in iter_items(s, run.manifest)}
    dataset = PairDataset(s, run.manifest.stats["pairs_dataset"])
    assert dataset.manifest.counts == {"content": 1, "interruption": 1, "silence": 1}
    q = codec.num_codebooks
    for p in dataset:
        r = records[p.pair_id]
        assert r["rejected_source"] == ("logged-tokens" if rejected_audio == "logged"
                                        else "resynthesized")
        (clo, chi), (rlo, rhi) = p.chosen_window, p.rejected_window
        assert clo == rlo and chi > clo and rhi > rlo
        # the shared context: logged tokens, identical on both sides, before the window
        off = r["offset"]
        assert np.array_equal(p.chosen[:, :clo], p.rejected[:, :clo])
        assert np.array_equal(p.rejected[0, :clo], tokens.text[off:off + clo])
        assert np.array_equal(p.rejected[1:1 + q, :clo], tokens.model_codes[:, off:off + clo])
        assert np.array_equal(p.chosen[1 + q:], p.rejected[1 + q:])
        # the chosen reply's words are in its window, and never a placeholder
        said = tok.decode([int(t) for t in p.chosen[0, clo:chi] if t >= 0])
        assert said and "[" not in said
        if p.type == "silence":
            assert (clo, chi) == (rlo, rhi)
        elif rejected_audio == "logged":  # the model's exact tokens in its window
            assert np.array_equal(p.rejected[0], tokens.text[off:off + p.frames][:p.frames]) or \
                p.frames > tokens.frames - off


def test_both_rejected_audio_variants_of_one_pairs_manifest_stay_apart(stage_cfg, stage_store,
                                                                        codec):
    """The audio-source control runs resynthesize and tokenize a second time on the same pairs
    manifest: its items are marked apart (processed, not skipped as done), its tensors are keyed
    by the audio they were built from, and the logged variant's dataset is unchanged by it."""
    s = stage_store
    conv = build_conversation()
    provenance = _inputs(s, conv, load_tokenizer(stage_cfg), codec)
    provenance.pop("_tokens")
    writer = ManifestWriter(s, "pairs", None)
    for pair in conv.pairs.values():
        writer.add_item(pair.model_copy(update={"provenance": provenance}).model_dump(mode="json"))
    pairs_id = writer.close().manifest_id

    def variant(rejected_audio: str):
        cfg = stage_cfg.model_copy(deep=True)
        cfg.resynthesize.rejected_audio = rejected_audio
        resynth = resynthesize(cfg, pairs_id)
        return resynth, tokenize(cfg, resynth.manifest.manifest_id)

    logged_resynth, logged = variant("logged")
    control_resynth, control = variant("resynthesized")
    assert control_resynth.processed == 3 and control_resynth.skipped == 0
    assert control_resynth.manifest.manifest_id != logged_resynth.manifest.manifest_id
    logged_version = logged.manifest.stats["pairs_dataset"]
    assert control.manifest.stats["pairs_dataset"] != logged_version
    sources = {r["rejected_source"] for r in iter_items(s, control.manifest)}
    assert sources == {"resynthesized"}
    # the logged variant again: nothing redone, the same dataset (its tensors were not replaced)
    again_resynth, again = variant("logged")
    assert again_resynth.processed == 0
    assert again.manifest.stats["pairs_dataset"] == logged_version
    logged_pairs = {p.pair_id: p for p in PairDataset(s, logged_version)}
    for p in PairDataset(s, control.manifest.stats["pairs_dataset"]):
        if p.type != "silence":  # a silence pair's rejected side has no words to resynthesise
            assert not np.array_equal(p.rejected, logged_pairs[p.pair_id].rejected)
