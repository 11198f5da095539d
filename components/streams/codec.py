"""The audio codec: Mimi from the ``moshi`` package, at 24 kHz and 12.5 frames per second.

One class, `Codec`, wraps a frozen `moshi.models.compression.MimiModel` built by moshi's own
loader (``moshi.models.loaders.get_mimi``), so the same code runs Kyutai's real Mimi weights
(production: ``cfg.streams.codec_source`` = a local path or an s3:// URI of
``tokenizer-e351c8d8-checkpoint125.safetensors``) and the embedded codec shipped in
``components/streams/assets/`` (a small Mimi whose quantizer levels were initialised by k-means
on the simulated world's speech; see build_codec.py and assets/README.md).

**Training and serving produce identical codes.** `Codec.encode` (whole waveforms: training data)
runs the very computation `Codec.stream_encoder` runs live (serving): moshi's streaming mode fed
one 1920-sample frame at a time. moshi's non-streaming encode is NOT bit-identical to its
streaming encode: (1) the encoder transformer's streaming KV cache is a ring of ``context``
slots, and pushing a frame writes its 2 encoder steps before attending, so the first step of every
frame sees ``context - 1`` past steps instead of ``context`` once the ring is full; (2) the
convolutions and ``torch.cdist`` (which switches to a matmul formula above 25 rows) round
differently on a whole sequence than on one frame. Both change latents by ~1e-4, enough to flip
near-tie codes. So there is one path, the streaming one.

Identity: ``hash`` = "mimi-" + sha256(weights file bytes)[:16]; the number of codebooks used
(``num_codebooks``, set with ``mimi.set_num_codebooks``) is a separate part of a model's
identity.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models: no torch.compile on CPU

import copy
import hashlib
import json
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from moshi.models.compression import MimiModel
from moshi.models.loaders import get_mimi

from components.common.audio import resample
from components.contract import MODEL_SAMPLE_RATE
from components.streams.interleave import FRAME_RATE, FRAME_SIZE

if TYPE_CHECKING:
    from components.common.config import Config

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
EMBEDDED_ASSET = ASSETS_DIR / "mimi-embedded.safetensors"
EMBEDDED_CONFIG = ASSETS_DIR / "mimi-embedded.json"

SAMPLE_RATE = MODEL_SAMPLE_RATE  # 24000


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the codec on one torch thread. A frame is tiny work split into dozens of small ops:
    a second OpenMP thread only adds synchronisation, and on a busy machine its spin-waits made
    streaming encode 20-60x slower (measured: 0.3-0.9x real time on 2 threads vs 16-19x on one,
    load average 5 on 2 cores). torch's thread count is process-wide: restored on exit."""
    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n != 1:
            torch.set_num_threads(n)


def codec_hash(weights: bytes) -> str:
    """A codec's identity: "mimi-" + the first 16 hex digits of the weights file's sha256."""
    return "mimi-" + hashlib.sha256(weights).hexdigest()[:16]


def build_mimi(weights: str | Path | None, mimi_config: dict[str, Any] | None,
               num_codebooks: int, device: str | torch.device = "cpu") -> MimiModel:
    """moshi's own loader (``mimi_config`` None = moshi's default Mimi config), then frozen:
    eval mode, no gradients, float32."""
    # 1 level first (always valid), so that a bad count gets our message, not moshi's assert
    mimi = get_mimi(str(weights) if weights is not None else None, mimi_config=mimi_config,
                    device=device, num_codebooks=1)
    _check_codebooks(mimi, num_codebooks, str(weights) if weights is not None else "Mimi")
    mimi.set_num_codebooks(num_codebooks)
    return freeze(mimi)


def freeze(mimi: MimiModel) -> MimiModel:
    mimi.eval()
    mimi.float()
    for p in mimi.parameters():
        p.requires_grad_(False)
    return mimi


class StreamEncoder:
    """Live encoding: ``push(pcm)`` with exactly 1920 samples at 24 kHz → int64 codes [q].

    Holds a Mimi instance in streaming mode until ``close()`` (or the end of a ``with`` block);
    the instance goes back to the codec's pool afterwards."""

    def __init__(self, codec: "Codec"):
        self._codec = codec
        self._mimi = codec._acquire()
        self._stack = ExitStack()
        self._stack.enter_context(self._mimi.streaming(1))
        self._closed = False
        self.frames = 0

    def push(self, pcm: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError("push on a closed stream encoder")
        x = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if x.shape[0] != FRAME_SIZE:
            raise ValueError(f"a frame is {FRAME_SIZE} samples at {SAMPLE_RATE} Hz, got {x.shape[0]}")
        with single_thread(), torch.inference_mode():
            codes = self._mimi.encode(torch.from_numpy(x.copy()).view(1, 1, FRAME_SIZE))
        self.frames += 1
        return codes[0, :, 0].to(torch.int64).numpy()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stack.close()  # leaves streaming mode and resets the states
            self._codec._release(self._mimi)

    def __enter__(self) -> "StreamEncoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamDecoder:
    """Live decoding: ``push(codes [q])`` → float32 [1920] at 24 kHz."""

    def __init__(self, codec: "Codec"):
        self._codec = codec
        self._mimi = codec._acquire()
        self._stack = ExitStack()
        self._stack.enter_context(self._mimi.streaming(1))
        self._closed = False

    def push(self, codes: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError("push on a closed stream decoder")
        c = np.asarray(codes, dtype=np.int64).reshape(-1)
        if c.shape[0] != self._codec.num_codebooks:
            raise ValueError(f"expected {self._codec.num_codebooks} codes, got {c.shape[0]}")
        with single_thread(), torch.inference_mode():
            out = self._mimi.decode(torch.from_numpy(c.copy()).view(1, -1, 1))
        return out[0, 0].to(torch.float32).numpy().copy()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stack.close()
            self._codec._release(self._mimi)

    def __enter__(self) -> "StreamDecoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Codec:
    """A frozen Mimi with ``num_codebooks`` active levels (see the module docstring)."""

    sample_rate = SAMPLE_RATE
    frame_rate = FRAME_RATE
    frame_size = FRAME_SIZE

    def __init__(self, mimi: MimiModel, *, weights_bytes: bytes | None = None,
                 weights_path: str | Path | None = None, mimi_config: dict[str, Any] | None = None,
                 weights_hash: str | None = None):
        if weights_bytes is None and weights_path is None:
            raise ValueError("a codec needs its weights file (bytes or path) for its identity")
        if int(mimi.sample_rate) != SAMPLE_RATE or int(mimi.frame_size) != FRAME_SIZE:
            raise ValueError(f"Mimi at {mimi.sample_rate} Hz / frame {mimi.frame_size}: "
                             f"expected {SAMPLE_RATE} Hz / {FRAME_SIZE}")
        self.mimi = freeze(mimi)
        self.mimi_config = copy.deepcopy(mimi_config) if mimi_config is not None else None
        self.weights_path = Path(weights_path) if weights_path is not None else None
        self._weights_bytes = weights_bytes
        self._hash = weights_hash
        # Idle Mimi instances for streaming: each live stream needs its own streaming state, so a
        # second concurrent stream gets a deep copy (shares nothing mutable with the first).
        self._pool: list[MimiModel] = [self.mimi]
        self._lock = threading.Lock()

    # -- construction
    @classmethod
    def from_files(cls, weights: str | Path, mimi_config: dict[str, Any] | None,
                   num_codebooks: int, device: str = "cpu") -> "Codec":
        weights = Path(weights)
        mimi = build_mimi(weights, mimi_config, num_codebooks, device)
        return cls(mimi, weights_path=weights, mimi_config=mimi_config)

    @classmethod
    def from_mimi(cls, mimi: MimiModel, *, weights_bytes: bytes,
                  mimi_config: dict[str, Any] | None) -> "Codec":
        """Wrap a Mimi already loaded (e.g. by moshi's CheckpointInfo.get_mimi)."""
        return cls(mimi, weights_bytes=weights_bytes, mimi_config=mimi_config)

    # -- identity
    @property
    def weights_bytes(self) -> bytes:
        if self._weights_bytes is not None:
            return self._weights_bytes
        assert self.weights_path is not None
        return self.weights_path.read_bytes()

    @property
    def hash(self) -> str:
        if self._hash is None:
            if self._weights_bytes is not None:
                self._hash = codec_hash(self._weights_bytes)
            else:
                assert self.weights_path is not None
                self._hash = _file_hash(self.weights_path)
        return self._hash

    @property
    def num_codebooks(self) -> int:
        return int(self.mimi.num_codebooks)

    @property
    def total_codebooks(self) -> int:
        return int(self.mimi.total_codebooks)

    @property
    def card(self) -> int:
        return int(self.mimi.cardinality)

    # -- whole waveforms
    def encode(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono audio (any rate; resampled to 24 kHz) → int64 codes [q, T], T = ceil(n/1920)
        at 24 kHz (the tail is zero-padded). The same codes as `stream_encoder` gives."""
        x = _mono_float(audio)
        if sample_rate != SAMPLE_RATE:
            x = resample(x, int(sample_rate), SAMPLE_RATE)
        n_frames = -(-x.shape[0] // FRAME_SIZE)
        if n_frames == 0:
            return np.zeros((self.num_codebooks, 0), dtype=np.int64)
        padded = np.zeros(n_frames * FRAME_SIZE, dtype=np.float32)
        padded[: x.shape[0]] = x
        out = np.empty((self.num_codebooks, n_frames), dtype=np.int64)
        with single_thread(), self.stream_encoder() as enc:
            for t in range(n_frames):
                out[:, t] = enc.push(padded[t * FRAME_SIZE : (t + 1) * FRAME_SIZE])
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int codes [q, T] → float32 mono audio at 24 kHz, T·1920 samples (moshi's whole-sequence
        decode; nothing downstream needs it bit-identical to the streaming decoder). The embedded
        codec's decoder is random and untrained: its output does not depend on the codes."""
        c = np.asarray(codes, dtype=np.int64)
        if c.ndim != 2 or c.shape[0] != self.num_codebooks:
            raise ValueError(f"codes must be [{self.num_codebooks}, T], got {c.shape}")
        if c.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        if c.min() < 0 or c.max() >= self.card:
            raise ValueError(f"codes outside [0, {self.card})")
        mimi = self._acquire()
        try:
            with single_thread(), torch.inference_mode():
                out = mimi.decode(torch.from_numpy(np.ascontiguousarray(c))[None])
        finally:
            self._release(mimi)
        return out[0, 0, : c.shape[1] * FRAME_SIZE].to(torch.float32).numpy().copy()

    # -- streaming
    def stream_encoder(self) -> StreamEncoder:
        return StreamEncoder(self)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    @contextmanager
    def batched_stream(self, batch: int) -> Iterator[MimiModel]:
        """A Mimi of the pool streaming ``batch`` streams at once (reset/exec masks select
        which advance): for callers that step many conversations together (the serving
        batcher, the lockstep evaluator). A streaming state needs its own instance; it goes
        back to the pool once its state is dropped."""
        mimi = self._acquire()
        try:
            with mimi.streaming(batch):
                yield mimi
        finally:
            self._release(mimi)

    def _acquire(self) -> MimiModel:
        with self._lock:
            if self._pool:
                return self._pool.pop()
            clone = copy.deepcopy(self.mimi)
        if clone.is_streaming:  # copied from an instance in use: drop the copied stream state
            clone._stop_streaming()
        return clone

    def _release(self, mimi: MimiModel) -> None:
        with self._lock:
            self._pool.append(mimi)

    def __repr__(self) -> str:
        return f"Codec({self.hash}, q={self.num_codebooks}, card={self.card})"


# ------------------------------------------------------------------------------------ loading

_CACHE: dict[tuple[str, str, int], Codec] = {}
_CACHE_LOCK = threading.Lock()
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def load_codec(cfg: "Config") -> Codec:
    """The codec ``cfg.streams`` names, with ``cfg.streams.num_codebooks`` levels.

    ``codec_source``: "embedded" (the shipped asset and its config), a local path, or an
    s3://bucket/key URI (fetched once into ``cfg.streams.cache_dir``). ``codec_config``: a Mimi
    config JSON (path or s3://); empty = the embedded config for "embedded", moshi's default
    Mimi config otherwise. Loaded codecs are cached in-process per (source, config, q)."""
    s = cfg.streams
    key = (s.codec_source, s.codec_config, int(s.num_codebooks))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    if s.codec_source == "embedded":
        weights = EMBEDDED_ASSET
        if not weights.exists():
            raise FileNotFoundError(f"{weights} is missing: run `python -m components.streams.build_codec`")
    else:
        weights = _local(s.codec_source, cfg)
    if s.codec_config:
        mimi_config: dict[str, Any] | None = json.loads(_local(s.codec_config, cfg).read_text())
    elif s.codec_source == "embedded":
        mimi_config = json.loads(EMBEDDED_CONFIG.read_text())
    else:
        mimi_config = None
    codec = Codec.from_files(weights, mimi_config, int(s.num_codebooks))
    with _CACHE_LOCK:
        return _CACHE.setdefault(key, codec)


def embedded_codec(num_codebooks: int = 8) -> Codec:
    """The shipped embedded codec (cached like `load_codec`)."""
    key = ("embedded", "", int(num_codebooks))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    codec = Codec.from_files(EMBEDDED_ASSET, json.loads(EMBEDDED_CONFIG.read_text()), num_codebooks)
    with _CACHE_LOCK:
        return _CACHE.setdefault(key, codec)


def _local(source: str, cfg: "Config") -> Path:
    """A local path as is; an s3:// URI downloaded once under the streams cache dir."""
    if not source.startswith("s3://"):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"codec file {path} does not exist")
        return path
    from components.common.storage import fetch_s3_uri_to_path

    name = source.rstrip("/").rsplit("/", 1)[-1] or "codec"
    folder = Path(cfg.streams.cache_dir) / "codec" / hashlib.sha256(source.encode()).hexdigest()[:16]
    target = folder / name
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (name + ".part")
        fetch_s3_uri_to_path(source, tmp, cfg.storage)
        os.replace(tmp, target)  # atomic: a half-downloaded file is never taken for the codec
    return target


def _file_hash(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    hit = _FILE_HASHES.get(key)
    if hit is None:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        hit = _FILE_HASHES[key] = "mimi-" + h.hexdigest()[:16]
    return hit


def _check_codebooks(mimi: MimiModel, n: int, what: str) -> None:
    if not 1 <= n <= int(mimi.total_codebooks):
        raise ValueError(f"{what}: {n} codebooks requested, the codec has {mimi.total_codebooks}")


def _mono_float(audio: np.ndarray) -> np.ndarray:
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"mono audio expected (1-D), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        if x.dtype != np.int16:
            raise ValueError(f"integer audio must be int16 PCM, got {x.dtype}")
        return x.astype(np.float32) / 32768.0
    return x.astype(np.float32, copy=False)
