"""Real speech for stage tests: piper voices (the simulator's TTS) placed on a timeline."""

from __future__ import annotations

import numpy as np

from components.common.audio import resample
from components.speech.tts import model_synthesizer, user_synthesizer


def timeline(seconds: float, rate: int, clips: list[tuple[float, np.ndarray]]) -> np.ndarray:
    out = np.zeros(int(seconds * rate), dtype=np.float32)
    for start, clip in clips:
        a = int(start * rate)
        out[a:a + len(clip)] += clip[: len(out) - a]
    return out


def spoken(text: str, rate: int, side: str = "user") -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """(audio at `rate`, [(word, start, end)]) for `text` in the user's or the model's voice."""
    speech = (user_synthesizer() if side == "user" else model_synthesizer()).speak(text)
    audio = resample(speech.audio, speech.sample_rate, rate)
    return audio, [(w.word, w.start, w.end) for w in speech.words]


def shifted(words: list[tuple[str, float, float]], offset: float) -> list[tuple[str, float, float]]:
    return [(w, s + offset, e + offset) for w, s, e in words]
