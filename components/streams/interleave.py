"""Moshi's token streams: the text stream from timestamped words, the 1 + 2q row layout, delays.

One frame is 80 ms (12.5 Hz). Per frame Moshi reads/writes one text token (its "inner
monologue": the words it is saying, in writing) and q audio codes for itself and q for the user.

Text placement follows the public fine-tuning code (moshi-finetune): a word's tokens are queued
at its start frame floor(start * 12.5) and emitted one per frame; frames with nothing to emit are
PAD (3), and the PAD frame right before a word's first token becomes end-of-padding (EPAD, 0) so
the model learns to announce that it is about to speak. When a word has more tokens than frames
before the next word, the rest spill over and the next word starts later: text is never dropped
while frames remain, and word order is kept.

The inverse (`words_from_text_stream`) reads words back: a word starts at a token whose piece
begins with "▁" and ends one frame after its last token. With no spill-over, the start frames
round-trip exactly, so word timing read from a stream is the timing that was written into it.

Rows are [text, model q, user q], undelayed (aligned in time) everywhere in this project; `delay`
applies Moshi's per-row delays exactly as `moshi.models.lm._delay_sequence` does (the form the LM
consumes), `undelay` takes them off again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from components.contract import MODEL_SAMPLE_RATE, WordStamp
from components.streams.tokenizer import EPAD_ID, PAD_ID

if TYPE_CHECKING:
    from components.streams.tokenizer import TextTokenizer

FRAME_RATE = 12.5
FRAME_SIZE = int(MODEL_SAMPLE_RATE / FRAME_RATE)  # 1920 samples of 24 kHz audio per 80 ms frame
MOSHI_DELAYS_8 = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
# start * frame_rate is computed in floats: 0.24 s * 12.5 may come out as 2.9999999999999996.
# A start written as frame / frame_rate must land back on that frame, so allow this much slack.
_FRAME_EPS = 1e-6


def moshi_delays(num_codebooks: int) -> list[int]:
    """Moshi's delays for q codebooks per side: text 0; per side, level 0 (semantic) 0 and the
    acoustic levels 1 frame later."""
    if num_codebooks < 1:
        raise ValueError("num_codebooks must be >= 1")
    return [0] + ([0] + [1] * (num_codebooks - 1)) * 2


@dataclass(frozen=True)
class StreamLayout:
    """Shape of one conversation's streams: 1 text row, q model rows, q user rows."""

    num_codebooks: int  # per side (q)
    text_card: int
    card: int  # codec codebook size

    @property
    def delays(self) -> list[int]:
        return moshi_delays(self.num_codebooks)

    @property
    def rows(self) -> int:
        return 1 + 2 * self.num_codebooks

    @property
    def initial_tokens(self) -> list[int]:
        """Moshi's initial token per row (what `delay` puts in the delayed slots)."""
        return [self.text_card] + [self.card] * (2 * self.num_codebooks)


# ----------------------------------------------------------------------------- text stream


def start_frame(start: float, frame_rate: float = FRAME_RATE) -> int:
    """The frame a word starting at ``start`` seconds is queued at: the first t with
    start * fr < t + 1, i.e. floor(start * fr)."""
    return max(0, math.floor(start * frame_rate + _FRAME_EPS))


def text_stream(words: Sequence[WordStamp], tokenizer: "TextTokenizer", n_frames: int,
                frame_rate: float = FRAME_RATE) -> np.ndarray:
    """int64 [n_frames] text stream of ``words`` (see the module docstring for the rule).

    Words are placed in order of start time (stable for ties). A word containing spaces becomes
    several words (SentencePiece starts a piece with "▁" at each space). Tokens that would fall
    at or after ``n_frames`` are cut.
    """
    out = np.full(n_frames, PAD_ID, dtype=np.int64)
    ordered = sorted(words, key=lambda w: w.start)
    encoded = tokenizer.sp.encode([w.word for w in ordered]) if ordered else []
    cursor = 0  # first frame not yet holding a token
    for word, ids in zip(ordered, encoded):
        if not ids:
            continue
        t = max(start_frame(word.start, frame_rate), cursor)
        if t >= n_frames:
            break
        if t > 0 and out[t - 1] == PAD_ID:
            out[t - 1] = EPAD_ID
        n = min(len(ids), n_frames - t)
        out[t : t + n] = ids[:n]
        cursor = t + n
    return out


def words_from_text_stream(tokens: np.ndarray, tokenizer: "TextTokenizer",
                           frame_rate: float = FRAME_RATE, first_frame: int = 0) -> list[WordStamp]:
    """Words with times read back from a text stream: a word starts at the frame of a "▁" piece
    and ends one frame after its last token; times are (first_frame + frame) / frame_rate.

    PAD, EPAD, other control ids and ids outside the vocabulary (Moshi's initial token, -1) carry
    no text. Continuation pieces before the first "▁" piece belong to a word that began before
    this window (see `left_truncate`) and are skipped: their text would be a fragment.
    """
    words: list[WordStamp] = []
    ids: list[int] = []
    begin = last = 0

    def flush() -> None:
        text = tokenizer.decode(ids).strip()
        if text:
            words.append(WordStamp(word=text, start=(first_frame + begin) / frame_rate,
                                   end=(first_frame + last + 1) / frame_rate))

    for t, tok in enumerate(np.asarray(tokens).reshape(-1).tolist()):
        if tokenizer.starts_word(tok):
            if ids:
                flush()
            ids, begin, last = [tok], t, t
        elif ids and 0 <= tok < tokenizer.text_card and not tokenizer.is_control(tok):
            ids.append(tok)
            last = t
    if ids:
        flush()
    return words


# ----------------------------------------------------------------------------- rows


def assemble(text: np.ndarray, model_codes: np.ndarray, user_codes: np.ndarray) -> np.ndarray:
    """int64 [1 + 2q, T]: text, the model's q codebooks, the user's q codebooks (undelayed)."""
    text = np.asarray(text).reshape(1, -1)
    model_codes, user_codes = np.asarray(model_codes), np.asarray(user_codes)
    if model_codes.ndim != 2 or model_codes.shape != user_codes.shape:
        raise ValueError(f"model codes {model_codes.shape} and user codes {user_codes.shape} "
                         "must both be [q, T]")
    if model_codes.shape[1] != text.shape[1]:
        raise ValueError(f"text has {text.shape[1]} frames, codes have {model_codes.shape[1]}")
    return np.concatenate([text, model_codes, user_codes], axis=0).astype(np.int64)


def split(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of `assemble`: (text [T], model codes [q, T], user codes [q, T])."""
    codes = np.asarray(codes)
    k = codes.shape[0]
    if codes.ndim != 2 or k < 3 or k % 2 == 0:
        raise ValueError(f"expected [1 + 2q, T] codes, got {codes.shape}")
    q = (k - 1) // 2
    return codes[0], codes[1 : 1 + q], codes[1 + q :]


def left_truncate(codes: np.ndarray, context: int) -> tuple[np.ndarray, int]:
    """Keep the last ``context`` frames (the last axis; the model's context window) and return
    them with the absolute index of the first kept frame (0 when nothing was cut)."""
    if context < 1:
        raise ValueError("context must be >= 1")
    n = np.asarray(codes).shape[-1]
    if n <= context:
        return codes, 0
    return codes[..., n - context :], n - context


# ----------------------------------------------------------------------------- delays


def _per_row(value: int | Sequence[int], k: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.int64).reshape(-1)
    if arr.size == 1:
        return np.full(k, int(arr[0]), dtype=np.int64)
    if arr.size != k:
        raise ValueError(f"expected one value or {k}, got {arr.size}")
    return arr


def delay(codes: np.ndarray, delays: Sequence[int], initial: int | Sequence[int]) -> np.ndarray:
    """Row k shifted right by delays[k] frames, its first delays[k] frames set to initial[k]; the
    last delays[k] frames fall off (same length). Works on [K, T] and [B, K, T]; equals
    `moshi.models.lm._delay_sequence(delays, codes, initial)`."""
    codes = np.asarray(codes)
    k, t = codes.shape[-2], codes.shape[-1]
    if len(delays) != k:
        raise ValueError(f"{len(delays)} delays for {k} rows")
    init = _per_row(initial, k)
    out = np.empty_like(codes)
    for row, d in enumerate(delays):
        if d < 0:
            raise ValueError("delays must be >= 0")
        d = min(d, t)
        out[..., row, :d] = init[row]
        out[..., row, d:] = codes[..., row, : t - d]
    return out


def undelay(codes: np.ndarray, delays: Sequence[int], fill: int | Sequence[int] = -1) -> np.ndarray:
    """Inverse of `delay`: row k shifted left by delays[k]; its last delays[k] frames (which the
    delayed form does not hold) set to ``fill``. undelay(delay(x))[k, :T - d_k] == x[k, :T - d_k]
    and delay(undelay(y), delays, initial) == y for any y that `delay` produced with ``initial``."""
    codes = np.asarray(codes)
    k, t = codes.shape[-2], codes.shape[-1]
    if len(delays) != k:
        raise ValueError(f"{len(delays)} delays for {k} rows")
    fills = _per_row(fill, k)
    out = np.empty_like(codes)
    for row, d in enumerate(delays):
        if d < 0:
            raise ValueError("delays must be >= 0")
        d = min(d, t)
        out[..., row, : t - d] = codes[..., row, d:]
        out[..., row, t - d :] = fills[row]
    return out
