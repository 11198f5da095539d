"""espeak-ng: the fallback TTS (Debian's ``espeak-ng`` binary, run as a subprocess).

Instant and robotic; it needs no model files, so it works wherever the Debian package is
installed (``make system-deps``). The binary writes a WAV to stdout (``--stdout``; its RIFF sizes
are 0x7fffffff placeholders because it streams, so the header is parsed by hand and the data
chunk runs to the end of the output). The text goes in on stdin (``--stdin``), never as an
argument, so a word starting with "-" is never read as an option.

Word times: the espeak-ng command line reports none (word events exist only in its C API), so
they are ESTIMATED: the voiced 10 ms frames of the output (within 35 dB of the loudest) are laid
end to end, each word gets a share of that voiced time proportional to its spoken length (letters;
a digit counts as ~3.5 letters, it is said as a word), and the shares are mapped back onto the
real timeline — pauses at punctuation thus fall between words, not inside them. Measured on
short sentences the estimate is within a word or so of the truth; good enough for a fallback, and
the resynthesize stage only needs a turn's first and last word times, which the voiced-frame
detection gets right.

Length scale: espeak's speed in words per minute (``-s``) is divided by it.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from components.speech.tts import Speech, TimedWord, TtsUnavailable

_LEAD_S = 0.05  # kept before the first word, as piper's clips
_TAIL_S = 0.15
_FRAME_S = 0.01
_FLOOR_DB = -35.0
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class EspeakVoice:
    name: str
    voice: str = "en-us"  # espeak-ng -v (language + "+variant")
    pitch: int = 50  # -p, 0..99
    speed_wpm: int = 165  # -s at length_scale 1 (espeak's default is 175)
    volume: float = 0.8  # peak level of an utterance


ESPEAK_USER_VOICE = EspeakVoice("espeak-user-m3", voice="en-us+m3", pitch=38)
ESPEAK_MODEL_VOICE = EspeakVoice("espeak-model-f2", voice="en-us+f2", pitch=62, volume=0.7)


@lru_cache(maxsize=2)
def _version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    words = out.stdout.decode(errors="replace").split()
    return next((w for w in words if w[:1].isdigit()), "unknown")


def parse_streamed_wav(data: bytes) -> tuple[np.ndarray, int]:
    """PCM16 mono WAV bytes whose RIFF/data sizes may be streaming placeholders → (audio, rate)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("espeak-ng did not write a WAV")
    pos, rate, channels, bits = 12, None, 1, 16
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = pos + 8
        if chunk == b"fmt ":
            _fmt, channels, rate, _brate, _align, bits = struct.unpack("<HHIIHH", data[body:body + 16])
        elif chunk == b"data":
            if rate is None or bits != 16:
                raise ValueError(f"unexpected espeak-ng WAV format (rate {rate}, {bits} bits)")
            pcm = np.frombuffer(data[body:len(data) - (len(data) - body) % (2 * channels)], "<i2")
            audio = pcm.reshape(-1, channels)[:, 0].astype(np.float32) / 32768.0
            return audio, int(rate)
        pos = body + size + (size & 1)
    raise ValueError("espeak-ng WAV has no data chunk")


def _spoken_weight(token: str) -> float:
    letters = sum(ch.isalpha() for ch in token)
    digits = sum(ch.isdigit() for ch in token)
    return max(1.0, letters + 3.5 * digits)


def estimate_word_times(audio: np.ndarray, rate: int, tokens: list[str]) -> list[tuple[float, float]]:
    """(start, end) per token: voiced time shared out by spoken length (see the module doc)."""
    hop = max(1, int(_FRAME_S * rate))
    n = len(audio) // hop
    if n == 0 or not tokens:
        return [(0.0, 0.0)] * len(tokens)
    rms = np.sqrt((audio[: n * hop].reshape(n, hop) ** 2).mean(axis=1) + 1e-12)
    voiced = np.flatnonzero(20 * np.log10(rms / rms.max()) > _FLOOR_DB)
    if len(voiced) == 0:
        return [(0.0, 0.0)] * len(tokens)
    weights = np.array([_spoken_weight(t) for t in tokens])
    bounds = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()]) * len(voiced)
    spans = []
    top = len(voiced) - 1
    for a, b in zip(bounds[:-1], bounds[1:]):
        lo = min(top, int(round(a)))
        hi = min(top, max(lo, int(round(b)) - 1))
        spans.append((float(voiced[lo]) * _FRAME_S, float(voiced[hi] + 1) * _FRAME_S))
    return spans


class EspeakSynthesizer:
    """espeak-ng behind the TtsBackend interface (deterministic: same text, same audio)."""

    backend = "espeak"

    def __init__(self, voice: EspeakVoice = ESPEAK_USER_VOICE, binary: str = "espeak-ng"):
        self.voice = voice
        self.binary = binary

    @property
    def voice_id(self) -> str:
        return f"espeak-ng-{_version(self.binary)}/{self.voice.name}"

    def check(self) -> None:
        if shutil.which(self.binary) is None:
            raise TtsUnavailable(f"{self.binary} is not installed (Debian package espeak-ng: "
                                 "`make system-deps` or `apt-get install -y espeak-ng`)")

    def speak(self, text: str, length_scale: float = 1.0) -> Speech:
        text = " ".join(text.split())
        if not text:
            raise ValueError("nothing to say")
        if length_scale <= 0:
            raise ValueError(f"length_scale must be > 0, got {length_scale}")
        self.check()
        speed = int(np.clip(round(self.voice.speed_wpm / length_scale), 80, 450))
        cmd = [self.binary, "-v", self.voice.voice, "-p", str(self.voice.pitch), "-s", str(speed),
               "--stdin", "--stdout"]
        try:
            out = subprocess.run(cmd, input=text.encode(), capture_output=True, timeout=_TIMEOUT_S,
                                 check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"espeak-ng took more than {_TIMEOUT_S:.0f}s") from None
        if out.returncode != 0:
            raise RuntimeError(f"espeak-ng failed ({out.returncode}): "
                               f"{out.stderr.decode(errors='replace')[:300]}")
        audio, rate = parse_streamed_wav(out.stdout)
        tokens = text.split()
        spans = estimate_word_times(audio, rate, tokens)
        start = min((s for s, e in spans if e > s), default=0.0)
        end = max((e for _, e in spans), default=len(audio) / rate)
        a = max(0, int((start - _LEAD_S) * rate))
        b = min(len(audio), int(np.ceil((end + _TAIL_S) * rate)))
        audio = audio[a:b]
        peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
        if peak > 1e-8:
            audio = audio * (self.voice.volume / peak)
        shift = a / rate
        words = [TimedWord(t, round(max(0.0, s - shift), 4), round(max(0.0, e - shift), 4))
                 for t, (s, e) in zip(tokens, spans)]
        return Speech(audio=audio.astype(np.float32), sample_rate=rate, words=words)
