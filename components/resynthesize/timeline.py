"""Speech on the conversation's timeline: fit a turn to its original span, place clips, mix.

Fitting. A resynthesised turn must occupy the span the original occupied (timing is what the
interruption and silence pairs are about). The TTS speaks the turn once at its natural rate; the
length scale that should make it last as long as the original is then found in log space. Piper's
duration does NOT scale linearly with its length scale, nor as a power of it (measured on the
resynthesis voice: x1.1 gives x1.02, x1.4 gives x1.17, x1.8 gives x1.48, x0.7 gives x0.73 — small
changes barely stretch it), so the first re-render guesses an elasticity and the next ones are
secant steps in log space (between the renders that bracket the target once there are such).
At most FIT_RESYNTHESES re-renders per turn (all cached on disk), stopping within
FIT_TOLERANCE_S; the length scale is clipped to [length_scale_min, length_scale_max], and the
render closest to the target wins. The clip is then placed so that its first word starts where the
original's first word started.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from components.common.audio import resample
from components.speech.backends import TtsBackend, speak_written
from components.speech.tts import Speech, TimedWord

FIT_TOLERANCE_S = 0.05  # good enough: stop re-rendering
FIT_RESYNTHESES = 3  # re-renders per turn at most, after the natural-rate one
MIN_FIT_SPAN_S = 0.25  # shorter originals (one short word) are spoken at the natural rate
ELASTICITY = 0.6  # first guess of d log(duration) / d log(length scale) (see above)


@dataclass
class Clip:
    """Speech placed on the timeline: its audio starts at `offset` seconds (may be < 0: the
    head is cut), its words are in timeline seconds."""

    audio: np.ndarray  # float32 mono at the track's rate
    offset: float
    words: list[TimedWord]
    length_scale: float = 1.0

    @property
    def start(self) -> float:
        return self.words[0].start if self.words else self.offset

    @property
    def end(self) -> float:
        return max((w.end for w in self.words), default=self.offset)


def speech_span(speech: Speech) -> float:
    voiced = [w for w in speech.words if w.end > w.start] or speech.words
    return max(w.end for w in voiced) - min(w.start for w in voiced)


def place(speech: Speech, first_word_at: float, rate: int, length_scale: float = 1.0) -> Clip:
    """The speech resampled to `rate`, shifted so its first word starts at `first_word_at`."""
    offset = first_word_at - speech.words[0].start
    audio = resample(speech.audio, speech.sample_rate, rate)
    words = [TimedWord(w.word, round(w.start + offset, 4), round(w.end + offset, 4))
             for w in speech.words]
    return Clip(audio=audio, offset=offset, words=words, length_scale=length_scale)


def fit_to_span(tts: TtsBackend, tokens: Sequence[tuple[str, str]], start: float, end: float, *,
                rate: int, fit: bool = True, scale_min: float = 0.6,
                scale_max: float = 1.8) -> Clip:
    """Say `tokens` ((written, spoken) pairs) so that they span [start, end]; see the module doc."""
    speech = speak_written(tts, tokens, 1.0)
    target = end - start
    best = (abs(speech_span(speech) - target), 1.0, speech)
    if fit and target >= MIN_FIT_SPAN_S:
        goal = math.log(target)
        points = [(0.0, math.log(max(speech_span(speech), 1e-3)))]  # (log scale, log duration)
        for _ in range(FIT_RESYNTHESES):
            if best[0] <= FIT_TOLERANCE_S:
                break
            scale = round(min(scale_max, max(scale_min, math.exp(_next_log_scale(points, goal)))), 3)
            if any(abs(math.log(scale) - p) < 1e-3 for p, _ in points):
                break  # clipped to a scale already tried: nothing more to gain
            attempt = speak_written(tts, tokens, scale)
            points.append((math.log(scale), math.log(max(speech_span(attempt), 1e-3))))
            error = abs(speech_span(attempt) - target)
            if error < best[0]:
                best = (error, scale, attempt)
    _, scale, speech = best
    return place(speech, start, rate, scale)


def _next_log_scale(points: list[tuple[float, float]], goal: float) -> float:
    """Secant step in log space: between the closest points on either side of the goal when the
    goal is bracketed (duration grows with the scale), else from the last two points (or, with
    one point, the initial elasticity)."""
    below = [p for p in points if p[1] <= goal]
    above = [p for p in points if p[1] > goal]
    if below and above:
        (l0, d0), (l1, d1) = max(below, key=lambda p: p[1]), min(above, key=lambda p: p[1])
    elif len(points) >= 2:
        (l0, d0), (l1, d1) = points[-2], points[-1]
    else:
        l1, d1 = points[-1]
        return l1 + (goal - d1) / ELASTICITY
    slope = (d1 - d0) / (l1 - l0) if abs(l1 - l0) > 1e-6 else ELASTICITY
    slope = min(1.5, max(0.2, slope))
    return l1 + (goal - d1) / slope


def render(duration_s: float, rate: int, clips: Sequence[Clip], base: np.ndarray | None = None) -> np.ndarray:
    """A mono track of `duration_s`: `base` (cut or zero-padded), plus every clip mixed in."""
    n = int(round(duration_s * rate))
    track = np.zeros(n, dtype=np.float32)
    if base is not None:
        m = min(n, len(base))
        track[:m] = base[:m]
    for clip in clips:
        a = int(round(clip.offset * rate))
        audio = clip.audio
        if a < 0:
            audio, a = audio[-a:], 0
        b = min(n, a + len(audio))
        if b > a:
            track[a:b] += audio[: b - a]
    return np.clip(track, -1.0, 1.0)


def mute(track: np.ndarray, rate: int, start: float, end: float) -> None:
    a, b = max(0, int(math.floor(start * rate))), min(len(track), int(math.ceil(end * rate)))
    if b > a:
        track[a:b] = 0.0


def cut(track: np.ndarray, rate: int, start: float, end: float) -> np.ndarray:
    a, b = max(0, int(math.floor(start * rate))), min(len(track), int(math.ceil(end * rate)))
    return track[a:b].copy() if b > a else np.zeros(0, dtype=np.float32)
