"""A fast stand-in for the piper voice: a tone per word, 60 ms per letter, exact word times."""

from __future__ import annotations

import numpy as np

from components.speech.tts import Speech, TimedWord


class ToneSynthesizer:
    def __init__(self, voice_id: str = "tone", freq: float = 200.0, rate: int = 22050):
        self.voice_id, self.freq, self.rate = voice_id, freq, rate
        self.calls = 0

    def speak(self, text: str) -> Speech:
        self.calls += 1
        t = 0.05
        words, chunks = [], [np.zeros(int(0.05 * self.rate), np.float32)]
        for word in text.split():
            dur = 0.06 * max(2, len(word))
            n = int(dur * self.rate)
            chunks.append((0.3 * np.sin(2 * np.pi * self.freq * np.arange(n) / self.rate)).astype(np.float32))
            words.append(TimedWord(word, round(t, 4), round(t + n / self.rate, 4)))
            t += n / self.rate
            gap = int((0.25 if word[-1] in ",.?!" else 0.08) * self.rate)
            chunks.append(np.zeros(gap, np.float32))
            t += gap / self.rate
        chunks.append(np.zeros(int(0.1 * self.rate), np.float32))
        return Speech(np.concatenate(chunks), self.rate, words)

    def synthesize(self, text: str):
        s = self.speak(text)
        return s.audio, s.sample_rate
