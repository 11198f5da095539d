"""ingest → transcribe → scrub on real speech against the live S3 server: the user's voice is
gone in every version, PII is redacted on both sides, the model's echo is muted, and every
deletion and redaction is in the privacy ledger."""

from __future__ import annotations

import io

import numpy as np
import pytest

from components.common.audio import decode_wav
from components.common.stagekit import iter_items
from components.contract import NO_TOKEN, Keys, ModelTokens, ScrubbedItem, Transcript
from components.ingest.logic import ingest, seal_raw_batch
from components.scrub.logic import scrub
from components.scrub.pii import pii_occurs
from components.transcribe.logic import transcribe
from tests.support.stage import grant
from tests.support.conversations import put_conversation
from tests.support.speech import shifted, spoken, timeline

pytestmark = pytest.mark.integration

RATE = 48000  # not the canonical rate: scrub must resample the model channel to 24 kHz


def test_scrub_removes_user_audio_and_pii_everywhere(stage_cfg, stage_store):
    s = stage_store
    grant(stage_cfg, "user-7")
    user_audio, _ = spoken("Hi, my name is Maria Lopez and my phone number is "
                           "five five five, one two three, four five six seven.", RATE)
    echo_audio, echo_words = spoken("Thanks Maria, I will call 555-123-4567 today.", RATE, "model")
    reply_at = len(user_audio) / RATE + 0.6
    seconds = reply_at + len(echo_audio) / RATE + 1.0
    frames = int(np.ceil(seconds * 12.5))
    # The server's exact tokens: a word token on every frame the model speaks, PAD elsewhere.
    text = np.full(frames, 3, np.int32)
    text[int(reply_at * 12.5): int((reply_at + len(echo_audio) / RATE) * 12.5)] = 42
    logged = ModelTokens(text, np.full((4, frames), 7), frame_rate=12.5, tokenizer_hash="spm-t",
                         codec_hash="mimi-t", model_version="m/1")
    user_codes = io.BytesIO()
    np.savez(user_codes, codes=np.full((4, frames), 9, np.int32))
    put_conversation(s, "b1", "pii-call", rate=RATE, user="user-7", seconds=seconds,
                     user_audio=timeline(seconds, RATE, [(0.0, user_audio)]),
                     model=timeline(seconds, RATE, [(reply_at, echo_audio)]),
                     words=shifted(echo_words, reply_at),
                     raw_objects={"model_tokens.npz": logged.to_bytes(),
                                  "user_codes.npz": user_codes.getvalue()})
    raw_manifest = seal_raw_batch(s, "raw/b1/")

    ing = ingest(stage_cfg, raw_manifest)
    tr = transcribe(stage_cfg, ing.manifest.manifest_id)
    quarantined = Transcript.model_validate(s.get_json(Keys.quarantine_transcript("pii-call")))
    assert not quarantined.redacted and len(quarantined.user_words) >= 10
    sc = scrub(stage_cfg, tr.manifest.manifest_id)

    [item] = [ScrubbedItem.model_validate(i) for i in iter_items(s, sc.manifest)]
    # Every version of the raw conversation and of the unredacted transcript is gone.
    assert not list(s.list_versions("raw/"))
    assert not list(s.list_versions("quarantine/"))
    # Both sides redacted with typed placeholders; the PII is nowhere in the stored transcript.
    out = Transcript.model_validate(s.get_json(Keys.transcript("pii-call")))
    user_text = " ".join(w.word for w in out.user_words)
    model_text = " ".join(w.word for w in out.model_words)
    assert out.redacted and "[PHONE]" in user_text and "[PERSON]" in user_text
    assert "[PHONE]" in model_text and "[PERSON]" in model_text
    stored = s.get_bytes(Keys.transcript("pii-call")).decode()
    for value in ("555-123-4567", "Maria Lopez"):
        assert not pii_occurs(value, stored)
    # The model's audio is 24 kHz, silent where it echoed the number, speech elsewhere.
    audio, rate = decode_wav(s.get_bytes(Keys.conversation_audio("pii-call")))
    assert rate == 24000 and audio.shape[1] == 1
    phone = next(w for w in out.model_words if w.word == "[PHONE]")
    inside = audio[int(phone.start * rate): int(phone.end * rate), 0]
    assert inside.size > 0 and float(np.abs(inside).max()) == 0.0
    assert float(np.abs(audio[:, 0]).max()) > 0.05
    # Scrubbed metadata carries the pseudonym only.
    # The model's tokens are kept, with every frame of the echoed number and name blanked.
    kept = ModelTokens.from_bytes(s.get_bytes(item.model_tokens.key))
    assert item.model_tokens.key == Keys.conversation_tokens("pii-call")
    pf = int(phone.start * 12.5)
    assert kept.text[pf] == NO_TOKEN and (kept.model_codes[:, pf] == NO_TOKEN).all()
    assert (kept.text == 42).sum() > 0 and (kept.text == 3).sum() > 0  # the rest is untouched
    meta = s.get_json(Keys.conversation_metadata("pii-call"))
    assert meta["user_pseudonym"] == item.user_pseudonym and "user-7" not in str(meta)
    # The ledger names what was deleted and redacted (types and times, never the text).
    ledger = s.get_json(Keys.privacy_ledger("pii-call", f"scrub-{tr.manifest.manifest_id}"))
    deleted = {d["key"].rsplit("/", 1)[-1]: d["versions"] for d in ledger["deleted"]}
    assert deleted["audio.wav"] >= 1 and deleted["pii-call.json"] >= 1
    assert deleted["user_codes.npz"] >= 1 and deleted["model_tokens.npz"] >= 1
    assert {r["placeholder"] for r in ledger["redactions"]} >= {"[PHONE]", "[PERSON]"}
    assert "555" not in str(ledger["redactions"]) and ledger["muted_model_audio_s"] > 0.3

    again = scrub(stage_cfg, tr.manifest.manifest_id)  # idempotent
    assert again.manifest.manifest_id == sc.manifest.manifest_id and again.processed == 0
