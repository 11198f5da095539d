"""Answers read from the model's audio (evaluate.answers = "audio"): real speech, real Whisper
(tiny.en, the transcribe stage's loader), the world's labeller."""

from __future__ import annotations

import numpy as np

from components.common.config import load_config
from components.evaluate.answers import reply_audio, transcribe_answers
from components.evaluate.behaviour import ReplyRecord
from components.evaluate.items import EvalConversation, EvalItem, held_out_items
from components.simulate import world as W
from tests.support.speech import spoken, timeline

RATE = 24_000


def _record(item: EvalItem, start: float, end: float, text: str) -> ReplyRecord:
    return ReplyRecord(conversation=0, item_id=item.id, kind=item.kind, world_id=item.world_id,
                       user_end=start - 0.5, first_word_start=start, last_word_end=end,
                       text=text, words=len(text.split()))


def test_reply_audio_is_the_window_around_the_words() -> None:
    audio = np.arange(10 * RATE, dtype=np.float32)
    item = held_out_items()[0]
    window = reply_audio(audio, _record(item, 2.0, 3.0, "x"))
    assert window is not None and window[0] == int(1.8 * RATE) and len(window) == int(1.7 * RATE)
    silent = ReplyRecord(conversation=0, item_id=item.id, kind=item.kind, world_id=item.world_id)
    assert reply_audio(audio, silent) is None


def test_answers_come_from_what_the_model_said_aloud(tiny_en_model) -> None:
    """The text stream says a wrong number; the audio says the fact's answer: with answers from
    the audio the reply counts as correct, and the text stream's words are kept beside it."""
    cfg = load_config("ci")
    item = next(i for i in held_out_items() if any(ch.isdigit() for ch in i.answer or ""))
    fact = W.FACTS_BY_ID[item.world_id]
    clip, words = spoken(fact.correct_reply(), RATE, side="model")
    start = 1.0
    audio = timeline(start + len(clip) / RATE + 1.0, RATE, [(start, clip)])
    record = _record(item, start + words[0][1], start + words[-1][2], "it costs 999 euros")
    warmup = EvalItem("warmup:x:0", "warmup", "x", "hello")
    conv = EvalConversation(index=0, seed=1, warmup=warmup, items=(item,))
    (out,) = transcribe_answers(cfg, [record], [conv], {0: audio}, model=tiny_en_model)
    assert out.answer_source == "audio" and out.stream_text == "it costs 999 euros"
    assert out.correct is True, (out.text, fact.answer)
    # the same reply read from its text stream would have been wrong
    from components.simulate.live import label_reply

    assert not label_reply("fact", item.script_id, "it costs 999 euros").answer_correct
