"""The reply-window, splice and truncation rules of the tokenize stage, on the real world
tokenizer's text streams (no services)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from components.contract import NO_TOKEN, PairSide, WordStamp
from components.streams.interleave import start_frame, text_stream
from components.streams.tokenizer import EPAD_ID, PAD_ID
from components.tokenize.logic import (
    Windows,
    reply_end_frame,
    reply_windows,
    side_window_end,
    splice,
    transcript_text,
    truncate,
    window_start,
)

T = 150
REPLY = "Unlimited Plus is 65 dollars"


def timed(text: str, start: float, step: float = 0.4) -> list[WordStamp]:
    return [WordStamp(word=w, start=round(start + i * step, 3), end=round(start + i * step + 0.3, 3))
            for i, w in enumerate(text.split())]


def side(text: str, start: float, source: Any = "logged") -> PairSide:
    ws = timed(text, start)
    return PairSide(text=text, start=ws[0].start, end=ws[-1].end, words=ws, source=source)


def no_reply(at: float) -> PairSide:
    return PairSide(text="", start=at, end=at, words=[], source="none")


@pytest.fixture
def interruption(tokenizer):
    """The model answered at 2.0 s, over the user; the chosen reply moved to 5.0 s."""
    rejected, chosen = side(REPLY, 2.0), side(REPLY, 5.0, "moved")
    rej_text = text_stream(rejected.words, tokenizer, T)
    lo = window_start(chosen, rejected)
    ch_text = splice(rej_text, text_stream(chosen.words, tokenizer, T), lo)
    return chosen, rejected, ch_text, rej_text


def test_interruption_windows_start_at_the_earlier_reply_and_end_per_side(interruption):
    chosen, rejected, ch_text, rej_text = interruption
    w = reply_windows(ch_text, rej_text, chosen, rejected, next_user_start=None, trailing_pad=4)
    lo = start_frame(2.0) - 1  # the end-of-padding frame before the rejected reply's first word
    assert w == Windows((lo, 87 + 4), (lo, 49 + 4))  # ends: ceil(6.9 * 12.5), ceil(3.9 * 12.5)
    assert rej_text[lo] == EPAD_ID and rej_text[lo + 1] not in (PAD_ID, EPAD_ID)
    # The chosen side stays silent (PAD) from lo until the end-of-padding before its first word.
    first = start_frame(5.0)
    assert (ch_text[lo:first - 1] == PAD_ID).all() and ch_text[first - 1] == EPAD_ID
    # K trailing frames after each reply are PAD: stopping is scored.
    assert (ch_text[87:91] == PAD_ID).all() and (rej_text[49:53] == PAD_ID).all()
    assert rej_text[w.rejected[1] - 1] != EPAD_ID and ch_text[w.chosen[1] - 1] != EPAD_ID


def test_a_later_rejected_reply_still_starts_the_windows_at_the_earlier_start(tokenizer):
    chosen, rejected = side(REPLY, 3.0, "rewritten"), side("Sure thing", 4.0)
    ch = text_stream(chosen.words, tokenizer, T)
    rej = text_stream(rejected.words, tokenizer, T)
    w = reply_windows(ch, rej, chosen, rejected, next_user_start=None, trailing_pad=2)
    assert w.chosen[0] == w.rejected[0] == start_frame(3.0) - 1


def test_silence_pair_rejected_window_is_the_chosen_span(tokenizer):
    chosen, rejected = side(REPLY, 5.0, "composed"), no_reply(5.0)
    silent = np.full(T, PAD_ID, dtype=np.int64)  # the model said nothing
    ch = splice(silent, text_stream(chosen.words, tokenizer, T), window_start(chosen, rejected))
    w = reply_windows(ch, silent, chosen, rejected, next_user_start=None, trailing_pad=4)
    assert w.chosen == w.rejected == (start_frame(5.0) - 1, 87 + 4)


@pytest.mark.parametrize("k", [0, 1, 6])
def test_k_trailing_pad_frames(interruption, k):
    chosen, rejected, ch_text, rej_text = interruption
    w = reply_windows(ch_text, rej_text, chosen, rejected, next_user_start=None, trailing_pad=k)
    assert w.chosen[1] == 87 + k and w.rejected[1] == 49 + k


def test_cut_at_the_next_user_turn(interruption):
    chosen, rejected, ch_text, rej_text = interruption
    # The user speaks again at 7.0 s (frame 87): no trailing PAD frames fit for the chosen side.
    w = reply_windows(ch_text, rej_text, chosen, rejected, next_user_start=7.0, trailing_pad=4)
    assert w.chosen[1] == start_frame(7.0) == 87 and w.rejected[1] == 53
    # ... at 6.0 s: the chosen reply itself is cut there.
    w = reply_windows(ch_text, rej_text, chosen, rejected, next_user_start=6.0, trailing_pad=4)
    assert w.chosen[1] == start_frame(6.0)


def test_cut_at_the_sequence_end(tokenizer):
    chosen, rejected = side(REPLY, 5.0, "composed"), no_reply(5.0)
    n = 89  # the data ends two frames after the reply
    ch = text_stream(chosen.words, tokenizer, n)
    w = reply_windows(ch, np.full(n, PAD_ID), chosen, rejected, next_user_start=None, trailing_pad=4)
    assert w.chosen[1] == w.rejected[1] == n


def test_trailing_frames_stop_before_the_end_of_padding_of_a_next_word(tokenizer):
    chosen, rejected = side(REPLY, 5.0, "moved"), side(REPLY, 2.0)
    later = WordStamp(word="Anything", start=89 / 12.5, end=89 / 12.5 + 0.4)  # EPAD at frame 88
    ch = text_stream([*chosen.words, later], tokenizer, T)
    assert ch[88] == EPAD_ID
    rej = text_stream(rejected.words, tokenizer, T)
    w = reply_windows(ch, rej, chosen, rejected, next_user_start=None, trailing_pad=4)
    assert w.chosen[1] == 88 and ch[w.chosen[1] - 1] == PAD_ID


def test_never_ends_on_end_of_padding_even_when_cut_after_one():
    text = np.full(20, PAD_ID, dtype=np.int64)
    text[5:8] = 50
    text[9] = EPAD_ID  # a word announced at frame 10 (cut away)
    assert side_window_end(text, 0.8, lo=4, trailing_pad=4, cut=10) == 9


def test_reply_end_extends_over_tokens_that_spill_past_the_audio():
    text = np.full(30, PAD_ID, dtype=np.int64)
    text[10:15] = [40, 41, 42, 43, 44]  # the audio ends at frame 12, the tokens at 15
    assert reply_end_frame(text, 12 / 12.5) == 15
    assert side_window_end(text, 12 / 12.5, lo=9, trailing_pad=3, cut=30) == 18
    text[16] = NO_TOKEN  # a blanked frame is not PAD: the trailing frames stop there
    assert side_window_end(text, 12 / 12.5, lo=9, trailing_pad=3, cut=30) == 16


def test_window_start_includes_the_end_of_padding_frame_and_clamps_at_zero():
    assert window_start(side("Hi", 0.0), no_reply(0.0)) == 0
    assert window_start(side("Hi", 1.0), side("Hello", 0.5)) == start_frame(0.5) - 1
    with pytest.raises(ValueError):
        window_start(no_reply(1.0), no_reply(1.0))


def test_splice_keeps_the_prefix_before_lo_and_the_tail_after(interruption, tokenizer):
    chosen, rejected, ch_text, rej_text = interruption
    lo = window_start(chosen, rejected)
    assert (ch_text[:lo] == rej_text[:lo]).all()
    assert (ch_text[lo:] == text_stream(chosen.words, tokenizer, T)[lo:]).all()
    codes = splice(np.zeros((4, 10)), np.ones((4, 12)), 3)
    assert codes.shape == (4, 12) and (codes[:, :3] == 0).all() and (codes[:, 3:] == 1).all()
    with pytest.raises(ValueError):
        splice(np.zeros((4, 2)), np.ones((4, 12)), 3)


def test_left_truncation_keeps_the_last_context_frames_and_shifts_the_windows():
    rows = np.arange(3 * 120).reshape(3, 120)
    w = Windows((24, 91), (24, 53))
    c, r, shifted, offset = truncate(rows, rows + 1, w, context=80)
    assert offset == 91 - 80 == 11 and c.shape == r.shape == (3, 80)
    assert (c[:, 0] == rows[:, 11]).all() and (c[:, -1] == rows[:, 90]).all()
    assert shifted == Windows((13, 80), (13, 42))
    # a window starting before the cut starts at the first kept frame
    c, _, shifted, offset = truncate(rows, rows, w, context=50)
    assert offset == 41 and shifted == Windows((0, 50), (0, 12)) and c.shape == (3, 50)
    # no cut when everything fits
    c, _, shifted, offset = truncate(rows, rows, w, context=256)
    assert offset == 0 and shifted == w and c.shape == (3, 91)


def test_transcript_text_blanks_placeholders(tokenizer):
    words = timed("My number is [PHONE] okay", 1.0)
    text = transcript_text(words, tokenizer, 60)
    phone, okay = words[3], words[4]
    lo, hi = start_frame(phone.start) - 1, start_frame(okay.start) - 1  # up to okay's EPAD
    assert (text[lo:hi] == NO_TOKEN).all() and text[hi] == EPAD_ID
    assert (text[:lo] != NO_TOKEN).all() and (text[hi:] != NO_TOKEN).all()
    assert tokenizer.decode([t for t in text.tolist() if t >= 0]) == "My number is okay"
