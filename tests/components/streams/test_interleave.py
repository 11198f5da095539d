"""Interleaving: text streams from timestamped words and back, the 1 + 2q layout, Moshi's delays."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import math  # noqa: E402
import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from moshi.models import loaders  # noqa: E402
from moshi.models.lm import _delay_sequence, _undelay_sequence  # noqa: E402

from components.contract import WordStamp  # noqa: E402
from components.streams.interleave import (  # noqa: E402
    FRAME_RATE,
    MOSHI_DELAYS_8,
    StreamLayout,
    assemble,
    delay,
    left_truncate,
    moshi_delays,
    split,
    start_frame,
    text_stream,
    undelay,
    words_from_text_stream,
)
from components.streams.tokenizer import (  # noqa: E402
    EPAD_ID,
    PAD_ID,
    TextTokenizer,
    train_world_tokenizer,
    world_corpus,
)


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return train_world_tokenizer(1000)


@pytest.fixture(scope="module")
def vocab_words() -> list[str]:
    return sorted({w for s in world_corpus() for w in s.split()})


def _q(t: float) -> float:
    """A start quantised to its frame."""
    return math.floor(t * FRAME_RATE) / FRAME_RATE


def _spaced(words: list[str], tok: TextTokenizer, rng: random.Random, t0: float = 0.3) -> list[WordStamp]:
    """Words far enough apart that each one's tokens fit, with a free frame before the next."""
    out, frame = [], math.floor(t0 * FRAME_RATE)
    for w in words:
        start = (frame + rng.uniform(0.0, 0.99)) / FRAME_RATE  # anywhere inside the frame
        n = len(tok.encode_word(w))
        out.append(WordStamp(word=w, start=start, end=start + n / FRAME_RATE))
        frame += n + 1 + rng.randrange(3)
    return out


def _stream_invariants(stream: np.ndarray, tok: TextTokenizer) -> None:
    """EPAD only right before a word's first token; never PAD right before a word."""
    for t, tid in enumerate(stream.tolist()):
        if tid == EPAD_ID:
            assert t + 1 < len(stream) and tok.starts_word(int(stream[t + 1])), t
        if tok.starts_word(tid) and t > 0:
            assert stream[t - 1] != PAD_ID, t


# ----------------------------------------------------------------------------- layout and delays


def test_moshi_delays_and_layout() -> None:
    assert moshi_delays(8) == MOSHI_DELAYS_8 == loaders._lm_kwargs["delays"]
    assert moshi_delays(1) == [0, 0, 0]
    assert moshi_delays(4) == [0, 0, 1, 1, 1, 0, 1, 1, 1]
    layout = StreamLayout(num_codebooks=4, text_card=1000, card=256)
    assert layout.rows == 9 and layout.delays == moshi_delays(4)
    assert layout.initial_tokens == [1000] + [256] * 8
    with pytest.raises(ValueError):
        moshi_delays(0)


@pytest.mark.parametrize("q", [1, 4, 8])
def test_delay_matches_moshi(q: int) -> None:
    rng = np.random.default_rng(q)
    layout = StreamLayout(num_codebooks=q, text_card=1000, card=2048)
    codes = rng.integers(0, 2048, size=(3, layout.rows, 37), dtype=np.int64)
    initial = torch.tensor(layout.initial_tokens).view(1, -1, 1).expand(3, -1, -1)
    ours = delay(codes, layout.delays, layout.initial_tokens)
    theirs = _delay_sequence(layout.delays, torch.from_numpy(codes.copy()), initial).numpy()
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(delay(codes[1], layout.delays, layout.initial_tokens), theirs[1])

    back = undelay(ours, layout.delays, fill=-1)
    ref, mask = _undelay_sequence(layout.delays, torch.from_numpy(ours.copy()), fill_value=-1)
    np.testing.assert_array_equal(back, ref.numpy())
    # undelay inverts delay wherever the delayed form holds the code, and delay(undelay(y)) == y
    valid = mask.numpy()
    np.testing.assert_array_equal(back[valid], codes[valid])
    assert (back[~valid] == -1).all()
    np.testing.assert_array_equal(delay(back, layout.delays, layout.initial_tokens), ours)


def test_assemble_split_8_plus_8(tok: TextTokenizer) -> None:
    """The conformance layout: 1 text + 8 model + 8 user codebooks, Moshi's delays."""
    rng = np.random.default_rng(0)
    words = _spaced(["Hi,", "this", "is", "Nova", "from", "Northwind", "Mobile."], tok, random.Random(0))
    n = 60
    text = text_stream(words, tok, n)
    model = rng.integers(0, 2048, size=(8, n))
    user = rng.integers(0, 2048, size=(8, n))
    codes = assemble(text, model, user)
    assert codes.shape == (17, n) and codes.dtype == np.int64
    t2, m2, u2 = split(codes)
    np.testing.assert_array_equal(t2, text)
    np.testing.assert_array_equal(m2, model)
    np.testing.assert_array_equal(u2, user)
    layout = StreamLayout(num_codebooks=8, text_card=tok.text_card, card=2048)
    assert layout.delays == loaders._lm_kwargs["delays"]
    assert layout.rows == loaders._lm_kwargs["n_q"] + 1 == codes.shape[0]
    initial = torch.tensor(layout.initial_tokens).view(1, -1, 1)
    theirs = _delay_sequence(layout.delays, torch.from_numpy(codes[None].copy()), initial)[0]
    np.testing.assert_array_equal(delay(codes, layout.delays, layout.initial_tokens), theirs.numpy())
    assert [w.word for w in words_from_text_stream(split(codes)[0], tok)] == [w.word for w in words]
    with pytest.raises(ValueError):
        assemble(text, model, user[:7])
    with pytest.raises(ValueError):
        assemble(text[:-1], model, user)
    with pytest.raises(ValueError):
        split(codes[:16])


# ----------------------------------------------------------------------------- text stream


def test_start_frame_is_exact_on_frame_times() -> None:
    for k in range(5000):
        assert start_frame(k / FRAME_RATE) == k
        assert start_frame((k + 0.999) / FRAME_RATE) == k


def test_text_stream_by_hand(tok: TextTokenizer) -> None:
    hi, there = tok.encode_word("Hi"), tok.encode_word("there")
    assert len(hi) == 1 and len(there) == 1
    words = [WordStamp(word="Hi", start=0.0, end=0.2), WordStamp(word="there", start=0.25, end=0.5)]
    stream = text_stream(words, tok, 8)
    # "Hi" at frame 0 (nothing before it), "there" at floor(0.25 * 12.5) = 3, EPAD on frame 2
    assert stream.tolist() == [hi[0], PAD_ID, EPAD_ID, there[0], PAD_ID, PAD_ID, PAD_ID, PAD_ID]
    assert stream.dtype == np.int64
    assert text_stream([], tok, 5).tolist() == [PAD_ID] * 5
    # a word starting right after another one's last token gets no EPAD (there is no PAD there)
    back_to_back = [WordStamp(word="Hi", start=0.0, end=0.08), WordStamp(word="there", start=0.08, end=0.2)]
    assert text_stream(back_to_back, tok, 3).tolist() == [hi[0], there[0], PAD_ID]


def test_round_trip_spaced_words(tok: TextTokenizer, vocab_words: list[str]) -> None:
    """(a) words → stream → words: the same words, starts quantised to frames."""
    rng = random.Random(1)
    words = _spaced(rng.sample(vocab_words, 200), tok, rng)
    n = math.ceil(words[-1].end * FRAME_RATE) + 5
    stream = text_stream(words, tok, n)
    back = words_from_text_stream(stream, tok)
    assert [w.word for w in back] == [w.word for w in words]
    for orig, got in zip(words, back):
        assert got.start == pytest.approx(_q(orig.start), abs=1e-9)
        assert got.end == pytest.approx(got.start + len(tok.encode_word(orig.word)) / FRAME_RATE)
    _stream_invariants(stream, tok)
    # (c) every word has a PAD frame before it, so every word is announced by EPAD
    starts = [i for i, t in enumerate(stream.tolist()) if tok.starts_word(t)]
    assert all(stream[i - 1] == EPAD_ID for i in starts)
    assert int((stream == EPAD_ID).sum()) == len(words)
    # written back, the read words give the same stream again
    np.testing.assert_array_equal(text_stream(back, tok, n), stream)


def test_overflow_shifts_later_but_keeps_everything(tok: TextTokenizer, vocab_words: list[str]) -> None:
    """(b) long many-token words packed tight: they spill into later frames, nothing is lost."""
    long_words = [w for w in vocab_words if len(tok.encode_word(w)) >= 5]
    assert len(long_words) >= 20
    rng = random.Random(2)
    chosen = rng.sample(long_words, 20)
    words = [WordStamp(word=w, start=0.5 + 0.08 * i, end=0.5 + 0.08 * i + 0.05) for i, w in enumerate(chosen)]
    total = sum(len(tok.encode_word(w)) for w in chosen)
    n = 7 + total + 3
    stream = text_stream(words, tok, n)
    back = words_from_text_stream(stream, tok)
    assert [w.word for w in back] == chosen
    assert int(np.isin(stream, [PAD_ID, EPAD_ID], invert=True).sum()) == total
    assert all(b.start >= _q(w.start) - 1e-9 for w, b in zip(words, back))
    assert all(a.end <= b.start for a, b in zip(back, back[1:]))
    assert back[0].start == pytest.approx(_q(words[0].start))  # the first one is on time
    # tokens are contiguous from the first word's frame: one EPAD, then no gaps
    first = start_frame(words[0].start)
    assert stream[first - 1] == EPAD_ID and (stream[first : first + total] != PAD_ID).all()
    _stream_invariants(stream, tok)


def test_stream_is_cut_at_n_frames(tok: TextTokenizer) -> None:
    words = _spaced(["Unlimited", "Plus", "is", "$65", "per", "month."], tok, random.Random(3))
    full = words_from_text_stream(text_stream(words, tok, 200), tok)
    cut_at = start_frame(words[3].start) + 1  # in the middle of "$65" (2 tokens)
    stream = text_stream(words, tok, cut_at)
    assert len(stream) == cut_at
    back = words_from_text_stream(stream, tok)
    assert [w.word for w in back][:3] == [w.word for w in full][:3] and len(back) == 4
    assert back[3].word != "$65" and "$65".startswith(back[3].word)  # the cut word's first piece


def test_left_truncate_gives_absolute_times(tok: TextTokenizer, vocab_words: list[str]) -> None:
    """(d) the last `context` frames are kept; first_frame puts the words back at absolute times."""
    rng = random.Random(4)
    words = _spaced(rng.sample(vocab_words, 80), tok, rng)
    n = math.ceil(words[-1].end * FRAME_RATE) + 2
    stream = text_stream(words, tok, n)
    full = words_from_text_stream(stream, tok)
    context = n // 3
    kept, offset = left_truncate(stream, context)
    assert offset == n - context and len(kept) == context
    np.testing.assert_array_equal(kept, stream[offset:])
    window = words_from_text_stream(kept, tok, first_frame=offset)
    expected = [w for w in full if w.start >= offset / FRAME_RATE - 1e-9]
    assert window == expected
    # the same cut on the assembled rows
    codes = assemble(stream, np.zeros((4, n), np.int64), np.ones((4, n), np.int64))
    kept_codes, offset2 = left_truncate(codes, context)
    assert offset2 == offset and kept_codes.shape == (9, context)
    np.testing.assert_array_equal(kept_codes[0], kept)
    same, zero = left_truncate(codes, n)
    assert zero == 0 and same.shape == codes.shape
    with pytest.raises(ValueError):
        left_truncate(codes, 0)


def test_window_starting_mid_word_skips_the_fragment(tok: TextTokenizer) -> None:
    words = [WordStamp(word="aisha.kowalski@example.org.", start=0.0, end=1.0),
             WordStamp(word="Thanks.", start=2.0, end=2.3)]
    stream = text_stream(words, tok, 40)
    assert len(tok.encode_word(words[0].word)) > 3
    kept, offset = left_truncate(stream, 40 - 2)
    window = words_from_text_stream(kept, tok, first_frame=offset)
    assert [(w.word, w.start) for w in window] == [("Thanks.", 2.0)]


@pytest.mark.parametrize("seed", range(6))
def test_random_conversations_round_trip(tok: TextTokenizer, vocab_words: list[str], seed: int) -> None:
    """(e) random word lists from the world, random timing (tight and loose): order and text are
    kept; a word lands on its own start frame unless the previous word's tokens still occupy it."""
    rng = random.Random(seed)
    words, t = [], rng.uniform(0.0, 1.0)
    for _ in range(rng.randint(1, 150)):
        w = rng.choice(vocab_words)
        dur = rng.uniform(0.05, 0.8)
        words.append(WordStamp(word=w, start=t, end=t + dur))
        t += rng.choice([0.0, 0.03, dur, dur + rng.uniform(0.0, 2.0)])
    total = sum(len(tok.encode_word(w.word)) for w in words)
    n = start_frame(words[-1].start) + total + 1
    stream = text_stream(words, tok, n)
    back = words_from_text_stream(stream, tok)
    assert [w.word for w in back] == [w.word for w in words]
    assert int(np.isin(stream, [PAD_ID, EPAD_ID], invert=True).sum()) == total
    cursor = 0  # first frame after the previous word's tokens
    for w, b in zip(words, back):
        frame = max(start_frame(w.start), cursor)
        assert b.start == pytest.approx(frame / FRAME_RATE)
        # (c) announced by EPAD exactly when the frame before it holds no token
        if frame > cursor:
            assert stream[frame - 1] == EPAD_ID
        elif frame > 0:
            assert stream[frame - 1] not in (PAD_ID, EPAD_ID)
        cursor = frame + len(tok.encode_word(w.word))
        assert b.end == pytest.approx(cursor / FRAME_RATE)
    _stream_invariants(stream, tok)


def test_words_from_stream_ignores_initial_and_missing_tokens(tok: TextTokenizer) -> None:
    hi = tok.encode_word("Hi")[0]
    stream = np.array([tok.text_card, -1, PAD_ID, EPAD_ID, hi, PAD_ID])
    expected = [WordStamp(word="Hi", start=4 / FRAME_RATE, end=5 / FRAME_RATE)]
    assert words_from_text_stream(stream, tok) == expected
