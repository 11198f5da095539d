"""The privacy audits find what they are meant to find (so a zero from them means something)."""

from __future__ import annotations

import json

import pytest

from components.common.audio import encode_wav
from components.contract import USER_AUDIO_METADATA
from pipelines.audit import count_pii, count_user_audio
from tests.support.conversations import tone

pytestmark = pytest.mark.integration

PLANTED = [("phone", "415-555-0142"), ("email", "maria.lopez@example.com"),
           ("address", "42 Elm Street"), ("name", "Maria Lopez")]


def test_user_audio_is_counted_in_every_version_and_on_disk(stage_store, tmp_path):
    wav = encode_wav(tone(0.5, 16000), 16000)
    stage_store.put_bytes("raw/b/c1/user.wav", wav)
    stage_store.put_bytes("conversations/c2/anything.bin", wav, metadata=USER_AUDIO_METADATA)
    stage_store.put_bytes("conversations/c3/model.wav", wav)  # model audio: not counted
    stage_store.delete("raw/b/c1/user.wav")  # a delete marker hides it; its version remains
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "leak.out").write_bytes(wav)
    count, where = count_user_audio(stage_store, [tmp_path / "root"])
    assert count == 3, where
    stage_store.delete_all_versions("raw/b/c1/user.wav")
    assert count_user_audio(stage_store, [tmp_path / "root"])[0] == 2


@pytest.mark.parametrize("text", [
    "call me on four one five, five five five, oh one four two",
    "write to maria dot lopez at example dot com",
    "I live at forty two elm street",
])
def test_planted_pii_is_found_in_spoken_form(stage_store, tmp_path, text):
    stage_store.put_json("transcripts/c.json", {"user_words": [{"word": w} for w in text.split()]})
    count, where = count_pii(stage_store, [tmp_path], PLANTED)
    assert count >= 1, where


def test_redacted_text_and_other_files_are_clean(stage_store, tmp_path):
    stage_store.put_json("transcripts/c.json", {"text": "call me on [PHONE], I am [PERSON]"})
    (tmp_path / "log.txt").write_text(json.dumps({"manifest": "scrub-abc"}))
    assert count_pii(stage_store, [tmp_path], PLANTED) == (0, [])
    (tmp_path / "log.txt").write_text("user said 415 555 0142")
    assert count_pii(stage_store, [tmp_path], PLANTED)[0] == 1


def test_pii_in_the_models_logged_text_stream_is_found(stage_cfg, stage_store, tmp_path):
    """Token ids are text too: an echoed name in a logged model_tokens.npz is decoded and found."""
    import numpy as np

    from components.contract import ModelTokens, WordStamp
    from components.streams.interleave import text_stream
    from components.streams.tokenizer import load_tokenizer

    stage_cfg.streams.cache_dir = str(tmp_path / "streams")
    tok = load_tokenizer(stage_cfg)
    words = [WordStamp(word=w, start=0.4 * i, end=0.4 * i + 0.3)
             for i, w in enumerate("Thanks, Maria Lopez, noted.".split())]
    text = text_stream(words, tok, 40)
    logged = ModelTokens(text, np.zeros((4, 40)), frame_rate=12.5, tokenizer_hash=tok.hash,
                         codec_hash="mimi-t", model_version="m/1")
    stage_store.put_bytes("conversations/c/model_tokens.npz", logged.to_bytes())
    count, where = count_pii(stage_store, [tmp_path / "none"], PLANTED, stage_cfg)
    assert count == 1 and "model_tokens.npz" in where[0], where
    assert count_pii(stage_store, [tmp_path / "none"], PLANTED)[0] == 0  # without the config
