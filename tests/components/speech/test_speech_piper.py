"""The piper voice: real speech, word times that match the audio, determinism, the disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from components.speech.onnx_patch import patch_piper_model
from components.speech.tts import (
    MODEL_VOICE,
    USER_VOICE,
    PiperSynthesizer,
    default_voice_paths,
    match_words,
)


def _voiced_segments(audio: np.ndarray, rate: int, floor_db: float = -35.0) -> list[tuple[float, float]]:
    """Stretches of 10 ms frames within floor_db of the loudest frame (gaps < 80 ms merged)."""
    hop = int(0.01 * rate)
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    rms = np.sqrt((frames**2).mean(axis=1) + 1e-12)
    on = 20 * np.log10(rms / rms.max()) > floor_db
    segments: list[tuple[float, float]] = []
    start = None
    for i, voiced in enumerate(list(on) + [False]):
        if voiced and start is None:
            start = i
        elif not voiced and start is not None:
            if segments and start * 0.01 - segments[-1][1] < 0.08:
                segments[-1] = (segments[-1][0], i * 0.01)
            else:
                segments.append((start * 0.01, i * 0.01))
            start = None
    return segments


def _f0(audio: np.ndarray, rate: int) -> float:
    estimates = []
    for i in range(0, len(audio) - 2048, 1024):
        x = audio[i : i + 2048]
        if np.sqrt(np.mean(x**2)) < 0.05:
            continue
        corr = np.correlate(x, x, "full")[2047:]
        lo, hi = int(rate / 400), int(rate / 60)
        estimates.append(rate / (lo + int(np.argmax(corr[lo:hi]))))
    return float(np.median(estimates))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tts-cache")


@pytest.mark.parametrize("voice", [USER_VOICE, MODEL_VOICE], ids=lambda v: v.name)
def test_word_times_match_the_speech_within_0_15_s(voice, cache_dir):
    speech = PiperSynthesizer(voice, cache_dir).speak("One. Two. Three. Four. Seven. Nine.")
    assert speech.audio.dtype == np.float32 and speech.audio.ndim == 1
    assert speech.sample_rate == 22050
    segments = _voiced_segments(speech.audio, speech.sample_rate)
    assert len(segments) == len(speech.words) == 6
    for word, (start, end) in zip(speech.words, segments):
        assert abs(word.start - start) < 0.15 and abs(word.end - end) < 0.15, (word, start, end)


def test_a_sentence_gets_one_plausible_time_per_token(cache_dir):
    text = "Hi, my number is four one five, five five five, zero one four two. Can you help me with roaming of the eSIM?"
    speech = PiperSynthesizer(USER_VOICE, cache_dir).speak(text)
    words = speech.words
    assert [w.word for w in words] == text.split()
    assert words[0].start == pytest.approx(0.05, abs=0.01)  # trimmed to 50 ms before speech
    assert words[-1].end <= speech.duration_s
    for a, b in zip(words, words[1:]):
        assert a.start <= a.end <= b.start + 1e-6
    assert 1.5 < len(words) / (words[-1].end - words[0].start) < 5.0  # words per second
    for w in words:
        assert 0.0 <= w.end - w.start < 1.2


def test_model_voice_is_another_voice(cache_dir):
    text = "Thanks for calling Northwind Mobile, how can I help you today?"
    user = PiperSynthesizer(USER_VOICE, cache_dir).speak(text)
    model = PiperSynthesizer(MODEL_VOICE, cache_dir).speak(text)
    assert _f0(model.audio, model.sample_rate) > 1.1 * _f0(user.audio, user.sample_rate)
    assert model.duration_s != pytest.approx(user.duration_s, abs=0.01)


def test_synthesis_is_deterministic_and_cached(tmp_path):
    text = "Your bill is due twenty one days after it's issued."
    first = PiperSynthesizer(USER_VOICE, tmp_path)
    a = first.speak(text)
    assert (first.cache_misses, first.cache_hits) == (1, 0)
    assert len(list(tmp_path.rglob("*.npz"))) == 1
    b = first.speak(text)
    assert first.cache_hits == 1
    np.testing.assert_array_equal(a.audio, b.audio)  # a cache hit is bit-identical to the render
    assert a.words == b.words
    fresh = PiperSynthesizer(USER_VOICE, None).speak(text)  # no cache: a new render, same noise
    np.testing.assert_array_equal(a.audio, fresh.audio)
    audio, rate = PiperSynthesizer(USER_VOICE, tmp_path).synthesize(text)
    np.testing.assert_array_equal(audio, a.audio)
    assert rate == 22050
    assert PiperSynthesizer(MODEL_VOICE, tmp_path).cache_key(text) != first.cache_key(text)


def test_graph_patch_exposes_durations_and_noise_inputs():
    model_path, _ = default_voice_paths()
    with open(model_path, "rb") as fh:
        patched = patch_piper_model(fh.read())
    assert patched.alignment_output is not None
    assert len(patched.noise_inputs) == 2


def test_match_words_handles_merges_and_splits():
    # "of the" merged into one group; "eSIM" split into two
    assert match_words([2, 2, 4], [4, 4]) == [(0, 1), (0, 1), (1, 2)]
    assert match_words([3, 4, 5], [3, 2, 3, 5]) == [(0, 1), (1, 3), (3, 4)]
    assert match_words([3, 3, 3], [3, 3, 3]) == [(0, 1), (1, 2), (2, 3)]


def test_a_turn_said_in_parts_keeps_each_sentence_identical_and_on_the_frame_grid(cache_dir):
    from components.speech.tts import FRAME_S, speak_parts

    tts = PiperSynthesizer(USER_VOICE, cache_dir)
    request = "How much is the Unlimited Plus plan?"
    alone = tts.speak(request)
    turn = speak_parts(tts, ["Hi, um,", request], pause_frames=4)
    frame = int(round(FRAME_S * turn.sample_rate))
    first = tts.speak("Hi, um,")
    at = -(-len(first.audio) // frame) * frame + 4 * frame  # padded to frames, then the pause
    assert at % frame == 0
    np.testing.assert_array_equal(turn.audio[at: at + len(alone.audio)], alone.audio)
    assert [w.word for w in turn.words] == [w.word for w in first.words + alone.words]
    shifted = turn.words[len(first.words)]
    assert shifted.start == pytest.approx(alone.words[0].start + at / turn.sample_rate, abs=1e-3)
    np.testing.assert_array_equal(speak_parts(tts, [request]).audio, alone.audio)
