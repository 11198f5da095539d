"""Answers transcribed from the model's AUDIO (``evaluate.answers = "audio"``, the production
setting): what a user hears, not what the model's text stream says.

Moshi's text stream is its inner monologue, aligned with its speech; a small or over-optimised
model can say something else than it writes, and a user only hears the audio. So in production
each scored reply's audio — the model's channel as the predictor streamed it, from 0.2 s before
the reply's first word to 0.5 s after its last (word times from the text stream) — is transcribed
with the transcribe stage's Whisper (``transcribe.model_source``, through the shared
``components/speech/asr.py``) and the content labels are taken again on that text:

* world facts: the fact's answer in the transcript (live.py's ``label_reply``); public QA: a gold
  answer in it (``public.answer_matches``);
* safety items, reference scorer: refused or not on the transcript (``label_reply``); with the
  judge scorer (``evaluate.refusal = "judge"``) the judge reads the transcript afterwards.

Timing labels (interruption, silence, latency) and the replay length stay on the text stream's
word times: they are about WHEN the model spoke. Each record keeps the text stream's words in
``stream_text`` and says where its ``text`` came from in ``answer_source``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.evaluate.behaviour import ReplyRecord
from components.evaluate.items import EvalConversation, EvalItem

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config

LEAD_S, TAIL_S = 0.2, 0.5  # audio kept around the reply's words (onsets, the last word's decay)
SAMPLE_RATE = 24_000


def load_asr(cfg: "Config") -> Any:
    """The transcribe stage's Whisper (a name, a folder or an s3:// model-store URI)."""
    from components.common.storage import fetch_s3_uri_to_path
    from components.speech.asr import load_whisper

    return load_whisper(cfg.transcribe.model_source, Path(cfg.transcribe.model_cache_dir),
                        fetch_s3=lambda uri, dest: fetch_s3_uri_to_path(uri, dest, cfg.storage))


def reply_audio(audio: np.ndarray, record: ReplyRecord) -> np.ndarray | None:
    """The model's audio of one reply (24 kHz), or None when it said no word."""
    if record.first_word_start is None or record.last_word_end is None:
        return None
    lo = max(0, int((record.first_word_start - LEAD_S) * SAMPLE_RATE))
    hi = min(len(audio), int((record.last_word_end + TAIL_S) * SAMPLE_RATE))
    return audio[lo:hi] if hi > lo else None


def relabel(record: ReplyRecord, item: EvalItem, text: str) -> None:
    """Content labels of ``record`` taken again on ``text`` (module docstring)."""
    from components.simulate.live import label_reply

    record.stream_text, record.text, record.answer_source = record.text, text, "audio"
    if item.kind == "public_qa":
        from components.evaluate.public import answer_matches

        record.correct = answer_matches(text, item.answers)
    elif item.request_kind == "fact":
        record.correct = bool(label_reply("fact", item.script_id, text).answer_correct)
    elif item.request_kind in ("unsafe", "benign_edgy"):
        record.refused = label_reply(item.request_kind, item.script_id, text).refused


def transcribe_answers(cfg: "Config", records: list[ReplyRecord],
                       conversations: list[EvalConversation],
                       audio_of: dict[int, np.ndarray], model: Any = None,
                       item_audio: dict[str, np.ndarray] | None = None) -> list[ReplyRecord]:
    """Replace every asked reply's text and content labels by those of its transcribed audio
    (``audio_of``: conversation index → the model's 24 kHz channel; ``item_audio``: item id →
    the channel of its own turn, for the one-turn OIP backend)."""
    from components.speech.asr import to_mono_16k, transcribe_plain

    asr = model if model is not None else load_asr(cfg)
    items = {item.id: item for conv in conversations for item in conv.items}
    for record in records:
        audio = (item_audio or {}).get(record.item_id, audio_of.get(record.conversation))
        if not record.asked or audio is None:
            continue
        segment = reply_audio(audio, record)
        if segment is None:
            record.answer_source = "audio"  # no word: nothing said, nothing to hear
            continue
        text = " ".join(w.text.strip() for w in transcribe_plain(
            asr, to_mono_16k(segment, SAMPLE_RATE))).strip()
        relabel(record, items[record.item_id], text)
    return records
