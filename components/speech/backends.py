"""One interface over the TTS backends, and the voices the resynthesize stage speaks with.

    class TtsBackend(Protocol):
        backend: str        # "piper" | "espeak" | "kyutai"
        voice_id: str       # identifies the voice (model fingerprint / settings name)
        def check(self) -> None                               # raises TtsUnavailable
        def speak(self, text, length_scale=1.0) -> Speech     # audio, sample rate, word times

``make_tts(cfg, side)`` picks the backend of ``resynthesize.user_tts`` / ``model_tts``:

* piper (embedded default): the user side speaks with RESYNTH_USER_VOICE — the piper model
  pitched DOWN and with its own noise seed, so it is neither the simulator's user voice nor any
  real user's (the paper: "no real user audio is kept"); the model side speaks with the
  simulator's MODEL_VOICE, the voice the embedded model was trained to speak with.
* espeak (fallback): Debian's espeak-ng, two variants (components/speech/espeak.py).
* kyutai (production): moshi's TTS; the model side with ``resynthesize.kyutai_voice`` (the
  served model's voice embedding), the user side with a fixed voice of Kyutai's repository.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol

from components.speech.tts import (
    DEFAULT_CACHE_DIR,
    MODEL_VOICE,
    USER_VOICE,
    PiperSynthesizer,
    Speech,
    TimedWord,
    TtsUnavailable,
    VoiceSettings,
)

if TYPE_CHECKING:
    from components.common.config import Config

Side = Literal["user", "model"]

# The resynthesised user: the piper model pitched down ~2 semitones (0.89), steadier noise and
# its own noise seed — audibly another speaker than USER_VOICE (every simulated user) and MODEL_VOICE.
RESYNTH_USER_VOICE = VoiceSettings(name="resynth-user-joe-low", length_scale=1.0, noise_scale=0.6,
                                   noise_w_scale=0.7, pitch_factor=0.89, volume=0.75, noise_seed=7)
assert RESYNTH_USER_VOICE not in (USER_VOICE, MODEL_VOICE)


class TtsBackend(Protocol):
    backend: str

    @property
    def voice_id(self) -> str: ...

    def check(self) -> None: ...

    def speak(self, text: str, length_scale: float = 1.0) -> Speech: ...


def describe(tts: TtsBackend) -> str:
    """"<backend>:<voice id>" — what a record names as the TTS of a side."""
    return f"{tts.backend}:{tts.voice_id}"


def make_tts(cfg: "Config", side: Side) -> TtsBackend:
    """The configured backend for the user or the model side of the resynthesize stage."""
    r = cfg.resynthesize
    kind = r.user_tts if side == "user" else r.model_tts
    if kind == "piper":
        return PiperSynthesizer(RESYNTH_USER_VOICE if side == "user" else MODEL_VOICE,
                                r.cache_dir or DEFAULT_CACHE_DIR)
    if kind == "espeak":
        from components.speech.espeak import ESPEAK_MODEL_VOICE, ESPEAK_USER_VOICE, EspeakSynthesizer

        return EspeakSynthesizer(ESPEAK_USER_VOICE if side == "user" else ESPEAK_MODEL_VOICE)
    if kind == "kyutai":
        from components.speech.kyutai import KYUTAI_USER_VOICE, KyutaiSynthesizer

        return KyutaiSynthesizer(r.kyutai_tts_source,
                                 KYUTAI_USER_VOICE if side == "user" else r.kyutai_voice, cfg)
    raise ValueError(f"unknown TTS backend {kind!r}")


def speak_written(tts: TtsBackend, tokens: Sequence[tuple[str, str]],
                  length_scale: float = 1.0) -> Speech:
    """Say the SPOKEN form of each (written, spoken) token; return word times per WRITTEN token.

    Why: a text stream carries "808-555-0137" while the voice must say "eight oh eight, five
    five five, ..."; each written token gets the span of its spoken words, so the times of the
    speech map back onto the written words exactly. Backends return one word per whitespace
    token of the text they were given (piper exactly; espeak and kyutai by estimate)."""
    tokens = [(w, s) for w, s in tokens if s.split()]
    if not tokens:
        raise ValueError("nothing to say")
    speech = tts.speak(" ".join(s for _, s in tokens), length_scale=length_scale)
    counts = [len(s.split()) for _, s in tokens]
    if len(speech.words) != sum(counts):
        raise RuntimeError(f"{describe(tts)} returned {len(speech.words)} word times for "
                           f"{sum(counts)} words")
    words: list[TimedWord] = []
    at = 0
    for (written, _), n in zip(tokens, counts):
        group = speech.words[at:at + n]
        at += n
        words.append(TimedWord(written, group[0].start, max(w.end for w in group)))
    return Speech(speech.audio, speech.sample_rate, words)


__all__ = ["RESYNTH_USER_VOICE", "Side", "Speech", "TimedWord", "TtsBackend", "TtsUnavailable",
           "describe", "make_tts", "speak_written"]
