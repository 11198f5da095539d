"""Build the embedded codec asset deterministically: ``python -m components.streams.build_codec``.

A freshly built Mimi has all-zero codebooks: every sound encodes to code 0 on every level, so a
model trained on its codes hears nothing. The embedded codec is a SMALL Mimi (random, frozen
SEANet/transformer weights from a fixed seed) whose quantizer levels are initialised by k-means on
the simulated world's speech, the way a trained codec's codebooks would tile its latent space:

* the audio: the world's sentences (components/simulate/world.py) said by BOTH piper voices
  (user lines by the user voice, model lines by the model voice, then the crossed pairs if more is
  needed), laid out like conversation channels: gaps of silence, the simulator's -70 dBFS noise
  floor (sometimes digital silence), a few louder noise bursts, random gains;
* the latents: the quantizer's input, computed by the same streaming path `Codec.encode` uses;
* level 0 (the split RVQ's semantic quantizer ``rvq_first``) by k-means on its input projection
  of the latents; level 1 (the first level of ``rvq_rest``) on ``rvq_rest``'s own input projection
  of the SAME latents (moshi's SplitResidualVectorQuantizer feeds both quantizers the latent, not
  a residual of each other); level k ≥ 2 on the residual after levels 1..k-1 of ``rvq_rest``,
  computed by moshi's own encode/decode of the levels already set;
* codebooks stored the way moshi's EuclideanCodebook keeps them: ``embedding_sum`` = centroids,
  ``cluster_usage`` = 1 (so ``embedding`` = embedding_sum / cluster_usage is the centroids
  exactly), ``_initialized`` = 1;
* k-means: k-means++ seeding and Lloyd iterations in float32 on one torch thread, empty clusters
  re-seeded with the worst-fitted points — the same inputs give the same bytes.

Writes ``assets/mimi-embedded.safetensors`` (fp32 state dict that ``get_mimi`` loads),
``assets/mimi-embedded.json`` (the Mimi config dict), ``assets/mimi-embedded.build.json``
(hash, build parameters, measured facts) and ``assets/README.md``. ``--check`` rebuilds into a
temporary folder and compares the weights' hash with the shipped asset.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import argparse
import hashlib
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from moshi.models.compression import MimiModel
from moshi.models.loaders import get_mimi
from moshi.quantization import SplitResidualVectorQuantizer
from moshi.quantization.core_vq import EuclideanCodebook, VectorQuantization
from safetensors.torch import save_file

from components.common.audio import resample
from components.streams.codec import (
    ASSETS_DIR,
    FRAME_SIZE,
    SAMPLE_RATE,
    Codec,
    codec_hash,
    freeze,
    single_thread,
)

BUILDER_VERSION = "embedded-mimi-1"
WEIGHTS_NAME = "mimi-embedded.safetensors"
CONFIG_NAME = "mimi-embedded.json"
FACTS_NAME = "mimi-embedded.build.json"

# The embedded Mimi: moshi's architecture at a fraction of its size. Kept: 24 kHz, the ratios
# [8, 6, 5, 4] (hop 960 → 25 Hz encoder rate, downsampled ×2 by a learnt conv to 12.5 Hz, frame
# 1920 samples), causal convolutions, the split RVQ. Shrunk for speed on 2 CPU cores: 8 SEANet
# filters, latent dimension 128, ONE transformer layer with a 25-step (1 s) context so codes are
# local (Mimi's 250-step context made a clip's codes depend on the exchange before it), 64-dim
# codebooks of 256 entries, 8 levels (the 8 + 8 conformance profile).
_SEANET = {
    "channels": 1, "dimension": 128, "causal": True, "n_filters": 8, "n_residual_layers": 1,
    "activation": "ELU", "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0,
    "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none",
    "pad_mode": "constant", "ratios": [8, 6, 5, 4], "true_skip": True,
}
EMBEDDED_MIMI_CONFIG: dict[str, Any] = {
    "sample_rate": SAMPLE_RATE,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": _SEANET,
    "quantizer": {"dimension": 64, "n_q": 8, "bins": 256,
                  "input_dimension": _SEANET["dimension"], "output_dimension": _SEANET["dimension"]},
    "transformer": {
        "d_model": _SEANET["dimension"], "num_heads": 4, "num_layers": 1, "causal": True,
        "layer_scale": 0.01, "context": 25, "conv_layout": True, "max_period": 10000,
        "gating": "none", "norm": "layer_norm", "positional_embedding": "rope",
        "dim_feedforward": 512, "input_dimension": _SEANET["dimension"],
        "output_dimensions": [_SEANET["dimension"]],
    },
}


@dataclass(frozen=True)
class BuildParams:
    seed: int = 20250301
    frames: int = 10_000  # quantizer frames (12.5 Hz) of audio for k-means (~13 minutes)
    kmeans_iters: int = 30
    channel_s: float = 60.0  # length of one simulated channel (one streaming encode)
    gap_s: tuple[float, float] = (0.3, 2.5)  # silence between utterances
    noise_floor_dbfs: float = -70.0  # the simulator's noise floor (SimulateConfig.noise_floor_dbfs)
    digital_silence_share: float = 0.25  # channels with no noise floor at all (live input)
    burst_share: float = 0.1  # gaps holding a louder noise burst instead of silence
    burst_dbfs: tuple[float, float] = (-45.0, -30.0)
    gain: tuple[float, float] = (0.6, 1.0)
    mimi_config: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(EMBEDDED_MIMI_CONFIG)))

    def public(self) -> dict[str, Any]:
        return asdict(self)


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"[build_codec] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- the audio


def world_lines() -> tuple[list[str], list[str]]:
    """(user lines, model lines) of the simulated world, in a fixed order, as the voices say them
    (spoken forms, so the TTS cache is shared with the conversation generator)."""
    from components.simulate import world as W
    from components.speech.textnorm import normalize, spoken_text

    user: list[str] = []
    model: list[str] = []
    for f in W.FACTS:
        user.extend(f.questions)
        model.extend([f.correct_reply(), f.wrong_reply()])
    for r in W.UNSAFE + W.BENIGN_EDGY + W.SMALL_TALK + W.INSTRUCTIONS:
        user.extend(r.prompts)
        model.extend([r.good, r.bad])
    user += W.USER_OPENERS + W.USER_FOLLOWUPS + W.USER_CLOSINGS + W.NUDGES + W.BACKCHANNELS
    model += W.GREETINGS + W.MODEL_CLOSINGS + [m for m in W.MODEL_FOLLOWUPS if m] + W.UNHELPFUL
    model += W.BACKCHANNELS

    def spoken(lines: list[str]) -> list[str]:
        out: list[str] = []
        for line in lines:
            text = spoken_text(normalize(line)).strip()
            if text and text not in out:
                out.append(text)
        return out

    return spoken(user), spoken(model)


def heldout_lines(n: int = 6) -> list[str]:
    """Sentences of the knowledge base (never used for k-means): for measuring only."""
    from components.simulate import world as W
    from components.speech.textnorm import normalize, spoken_text

    out: list[str] = []
    for doc in W.KB_DOCUMENTS:
        for sent in doc.text.split(". "):
            words = sent.split()
            if 6 <= len(words) <= 22:
                out.append(spoken_text(normalize(sent.rstrip(".") + ".")))
                break
        if len(out) >= n:
            break
    return out


class _Voices:
    def __init__(self) -> None:
        from components.speech.tts import model_synthesizer, user_synthesizer

        self.by_name = {"user": user_synthesizer(), "model": model_synthesizer()}

    def say(self, voice: str, text: str) -> np.ndarray:
        audio, sr = self.by_name[voice].synthesize(text)
        return resample(np.asarray(audio, dtype=np.float32), int(sr), SAMPLE_RATE)


def training_items(seed: int) -> list[tuple[str, str]]:
    """(voice, text) in the order they are used: natural pairs first, then crossed pairs."""
    user, model = world_lines()
    rng = random.Random(seed)
    natural = [("user", t) for t in user] + [("model", t) for t in model]
    crossed = [("model", t) for t in user] + [("user", t) for t in model]
    rng.shuffle(natural)
    rng.shuffle(crossed)
    return natural + crossed


def gather_channels(params: BuildParams, progress: bool = True,
                    voices: _Voices | None = None) -> list[np.ndarray]:
    """Conversation-like channels at 24 kHz, each a whole number of frames, totalling at least
    ``params.frames`` frames."""
    voices = voices or _Voices()
    rng = random.Random(params.seed + 1)
    noise = np.random.default_rng(params.seed + 2)
    items = training_items(params.seed)
    channels: list[np.ndarray] = []
    total = 0
    i = 0
    t0 = time.perf_counter()
    while total < params.frames:
        target = min(params.channel_s * SAMPLE_RATE, (params.frames - total) * FRAME_SIZE)
        parts: list[np.ndarray] = [np.zeros(int(rng.uniform(*params.gap_s) * SAMPLE_RATE), np.float32)]
        length = parts[0].shape[0]
        while length < target:
            voice, text = items[i % len(items)]
            i += 1
            speech = voices.say(voice, text) * np.float32(rng.uniform(*params.gain))
            gap = np.zeros(int(rng.uniform(*params.gap_s) * SAMPLE_RATE), np.float32)
            if rng.random() < params.burst_share:
                level = 10 ** (rng.uniform(*params.burst_dbfs) / 20)
                gap = (noise.standard_normal(gap.shape[0]) * level).astype(np.float32)
            parts += [speech, gap]
            length += speech.shape[0] + gap.shape[0]
        audio = np.concatenate(parts)
        n = -(-audio.shape[0] // FRAME_SIZE) * FRAME_SIZE
        audio = np.pad(audio, (0, n - audio.shape[0]))
        if rng.random() >= params.digital_silence_share:
            floor = 10 ** (params.noise_floor_dbfs / 20)
            audio = audio + (noise.standard_normal(n) * floor).astype(np.float32)
        channels.append(np.clip(audio, -1.0, 1.0).astype(np.float32))
        total += n // FRAME_SIZE
        _log(f"audio: {total}/{params.frames} frames, {i} utterances "
             f"({time.perf_counter() - t0:.0f} s)", progress)
    return channels


# --------------------------------------------------------------------------------- the latents


def stream_latents(mimi: MimiModel, audio: np.ndarray) -> torch.Tensor:
    """The quantizer's input [D, T] for ``audio`` (a whole number of frames), computed frame by
    frame in streaming mode — exactly what `Codec.encode` quantizes."""
    assert audio.shape[0] % FRAME_SIZE == 0
    out = []
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    with torch.inference_mode(), mimi.streaming(1):
        for t in range(0, x.shape[0], FRAME_SIZE):
            out.append(mimi._encode_to_unquantized_latent(x[t : t + FRAME_SIZE].view(1, 1, -1)))
    return torch.cat(out, dim=-1)[0]


# ------------------------------------------------------------------------------------ k-means


def kmeans(x: torch.Tensor, k: int, iters: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ seeding + Lloyd iterations; returns (centroids [k, D], counts [k]).

    Deterministic for the same input (float32, call it on one thread). Empty clusters are
    re-seeded with the points farthest from their centroid, so every entry ends up in use."""
    x = x.to(torch.float32).contiguous()
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least {k} points, got {n}")
    g = torch.Generator().manual_seed(seed)
    x2 = (x * x).sum(1)

    def sq_dist(c: torch.Tensor) -> torch.Tensor:
        return (x2[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]).clamp_min_(0.0)

    first = int(torch.randint(n, (1,), generator=g))
    chosen = [first]
    d2 = sq_dist(x[first : first + 1])[:, 0]
    for _ in range(1, k):
        cum = torch.cumsum(d2.to(torch.float64), 0)
        if float(cum[-1]) <= 0.0:  # fewer distinct points than k: take any not chosen yet
            idx = next(j for j in range(n) if j not in set(chosen))
        else:
            r = float(torch.rand((), generator=g, dtype=torch.float64)) * float(cum[-1])
            idx = min(int(torch.searchsorted(cum, torch.tensor([r], dtype=torch.float64))), n - 1)
        chosen.append(idx)
        d2 = torch.minimum(d2, sq_dist(x[idx : idx + 1])[:, 0])
    c = x[chosen].clone()
    counts = torch.zeros(k, dtype=torch.long)
    for _ in range(iters):
        d = sq_dist(c)
        best, assign = d.min(dim=1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        nonempty = counts > 0
        c = torch.where(nonempty[:, None], sums / counts.clamp_min(1)[:, None].to(x.dtype), c)
        empty = torch.nonzero(~nonempty).flatten()
        if empty.numel():
            # worst-fitted points, ties broken by index (stable sort) for determinism
            order = torch.sort(best, descending=True, stable=True).indices
            c[empty] = x[order[: empty.numel()]]
    d = sq_dist(c)
    counts = torch.bincount(d.argmin(dim=1), minlength=k)
    return c, counts


def set_codebook(codebook: EuclideanCodebook, centroids: torch.Tensor) -> None:
    """Store centroids as moshi's EuclideanCodebook keeps them (embedding = sum / usage)."""
    with torch.no_grad():
        codebook.embedding_sum.copy_(centroids)
        codebook.cluster_usage.fill_(1.0)
        codebook._initialized.fill_(1.0)
    codebook.register_buffer("_embedding", None, persistent=False)  # drop the cached embedding


def init_quantizer(mimi: MimiModel, latents: torch.Tensor, iters: int, seed: int,
                   progress: bool = True) -> list[dict[str, Any]]:
    """k-means every level of the split RVQ on ``latents`` [D, N]; returns per-level stats."""
    q = mimi.quantizer
    assert isinstance(q, SplitResidualVectorQuantizer)
    emb = latents[None]  # [1, D, N]
    stats: list[dict[str, Any]] = []
    level = 0
    with torch.inference_mode():
        for rvq in (q.rvq_first, q.rvq_rest):
            residual = rvq.input_proj(emb)  # each quantizer projects the latent itself
            for layer in rvq.vq.layers:
                assert isinstance(layer, VectorQuantization)
                points = residual[0].T.contiguous()
                t0 = time.perf_counter()
                centroids, counts = kmeans(points, int(rvq.bins), iters, seed * 1000 + level)
                set_codebook(layer._codebook, centroids)
                codes = layer.encode(residual)
                residual = residual - layer.decode(codes)
                p = counts[counts > 0].to(torch.float64) / counts.sum()
                stats.append({"level": level, "points": int(points.shape[0]),
                              "used": int((counts > 0).sum()),
                              "entropy_bits": round(float(-(p * p.log2()).sum()), 3),
                              "residual_rms_after": round(float(residual.pow(2).mean().sqrt()), 6)})
                _log(f"level {level}: k-means on {points.shape[0]} points "
                     f"({time.perf_counter() - t0:.1f} s), {stats[-1]['used']} entries used, "
                     f"{stats[-1]['entropy_bits']} bits", progress)
                level += 1
    return stats


# -------------------------------------------------------------------------------------- build


@dataclass
class BuildResult:
    weights: Path
    config: Path
    hash: str
    sha256: str
    size_bytes: int
    frames: int
    levels: list[dict[str, Any]]
    seconds: float


def random_mimi(mimi_config: dict[str, Any], seed: int) -> MimiModel:
    """moshi's Mimi with its default (random) initialisation from ``seed``; global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mimi = get_mimi(None, mimi_config=mimi_config, num_codebooks=mimi_config["quantizer"]["n_q"])
    return freeze(mimi)


def build(params: BuildParams, out_dir: Path, progress: bool = True,
          voices: _Voices | None = None) -> BuildResult:
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # one thread: float32 reductions give the same bits only with the same blocking
    with single_thread():
        mimi = random_mimi(params.mimi_config, params.seed)
        channels = gather_channels(params, progress, voices)
        _log(f"latents of {len(channels)} channels (streaming encode)", progress)
        latents = torch.cat([stream_latents(mimi, ch) for ch in channels], dim=-1)
        levels = init_quantizer(mimi, latents, params.kmeans_iters, params.seed, progress)
    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in mimi.state_dict().items()}
    weights = out_dir / WEIGHTS_NAME
    # ONE metadata key: safetensors writes its metadata map in hash order (it differs between
    # runs when there are several keys), the tensors in sorted order
    meta = {"duplexalign_build": json.dumps({"builder": BUILDER_VERSION, "params": params.public()},
                                            sort_keys=True)}
    save_file(state, str(weights), metadata=meta)
    config = out_dir / CONFIG_NAME
    config.write_text(json.dumps(params.mimi_config, indent=2, sort_keys=True) + "\n")
    data = weights.read_bytes()
    result = BuildResult(weights=weights, config=config, hash=codec_hash(data),
                         sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                         frames=int(latents.shape[-1]), levels=levels,
                         seconds=round(time.perf_counter() - t0, 1))
    _log(f"wrote {weights} ({len(data) / 1e6:.2f} MB, {result.hash}) in {result.seconds} s", progress)
    return result


# ---------------------------------------------------------------------------------- measuring


def _entropy_bits(codes: np.ndarray) -> float:
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _best_rate(fn: Callable[[], Any], seconds: float, reps: int = 3) -> dict[str, float]:
    """× real time, best of ``reps``: by wall clock, and by this process's CPU time (the codec
    runs on one thread, so CPU time is what the wall clock would read on an idle machine)."""
    wall = cpu = math.inf
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return {"wall": round(seconds / wall, 1), "cpu": round(seconds / cpu, 1)}


def speech_frames(audio: np.ndarray, threshold_dbfs: float = -35.0) -> np.ndarray:
    """Frames whose RMS is above the threshold (inside an utterance), as a boolean mask."""
    n = audio.shape[0] // FRAME_SIZE
    rms = np.sqrt((audio[: n * FRAME_SIZE].reshape(n, FRAME_SIZE) ** 2).mean(1) + 1e-20)
    return 20 * np.log10(rms) > threshold_dbfs


def measure(codec: Codec, voices: _Voices | None = None, progress: bool = True) -> dict[str, Any]:
    """The facts recorded next to the asset (held-out speech: knowledge-base sentences)."""
    voices = voices or _Voices()
    rng = np.random.default_rng(7)
    floor = 10 ** (-70 / 20)
    parts: list[np.ndarray] = []
    clips: list[np.ndarray] = []
    for j, text in enumerate(heldout_lines()):
        for voice in ("user", "model"):
            clip = voices.say(voice, text)
            clips.append(clip)
            parts += [clip, np.zeros(int(0.6 * SAMPLE_RATE), np.float32)]
    speech = np.concatenate(parts)
    speech = speech + (rng.standard_normal(speech.shape[0]) * np.float32(floor)).astype(np.float32)
    codes = codec.encode(speech, SAMPLE_RATE)
    mask = speech_frames(np.pad(speech, (0, codes.shape[1] * FRAME_SIZE - speech.shape[0])))
    facts: dict[str, Any] = {"heldout_speech_s": round(speech.shape[0] / SAMPLE_RATE, 1),
                             "heldout_speech_frames": int(mask.sum())}
    zeros = np.zeros(5 * SAMPLE_RATE, np.float32)
    noise = (rng.standard_normal(5 * SAMPLE_RATE) * floor).astype(np.float32)
    sil_codes = {"digital": codec.encode(zeros, SAMPLE_RATE)[:, 2:],  # 2 frames of warm-up
                 "noise_floor_-70dBFS": codec.encode(noise, SAMPLE_RATE)[:, 2:]}
    per_level = []
    for lv in range(codec.num_codebooks):
        sp = codes[lv, mask]
        row: dict[str, Any] = {"level": lv, "distinct_in_speech": int(np.unique(sp).size),
                               "entropy_bits_speech": round(_entropy_bits(sp), 2)}
        for name, sc in sil_codes.items():
            vals, cnt = np.unique(sc[lv], return_counts=True)
            code = int(vals[cnt.argmax()])
            row[f"silence_code_{name}"] = code
            row[f"silence_purity_{name}"] = round(float(cnt.max() / cnt.sum()), 3)
            row[f"speech_share_of_silence_code_{name}"] = round(float((sp == code).mean()), 3)
        per_level.append(row)
    facts["levels"] = per_level
    # different utterances, same utterance twice, and an utterance after other audio
    a = codec.encode(clips[0], SAMPLE_RATE)
    b = codec.encode(clips[2], SAMPLE_RATE)
    n = min(a.shape[1], b.shape[1])
    facts["different_utterances_same_code_rate"] = [round(float((a[lv, :n] == b[lv, :n]).mean()), 3)
                                                   for lv in range(codec.num_codebooks)]
    facts["same_utterance_twice_identical"] = bool(np.array_equal(a, codec.encode(clips[0], SAMPLE_RATE)))
    lead = np.concatenate([clips[1], np.zeros(int(0.5 * SAMPLE_RATE), np.float32)])
    lead = np.pad(lead, (0, -lead.shape[0] % FRAME_SIZE))
    after = codec.encode(np.concatenate([lead, clips[0]]), SAMPLE_RATE)[:, lead.shape[0] // FRAME_SIZE:]
    facts["after_other_audio_match_rate"] = [round(float((after[lv] == a[lv]).mean()), 3)
                                            for lv in range(codec.num_codebooks)]
    skip = 13  # ~1 s: past the transformer context and the convolutions' receptive field
    facts["after_other_audio_match_rate_from_1s"] = [
        round(float((after[lv, skip:] == a[lv, skip:]).mean()), 3) for lv in range(codec.num_codebooks)]
    # moshi's whole-sequence (non-streaming) encode vs ours (streaming)
    x = torch.from_numpy(np.pad(speech, (0, codes.shape[1] * FRAME_SIZE - speech.shape[0])))
    with single_thread(), torch.inference_mode():
        whole = codec.mimi.encode(x.view(1, 1, -1))[0].numpy()
    facts["moshi_whole_encode_same_code_rate"] = [round(float((whole[lv] == codes[lv]).mean()), 4)
                                                 for lv in range(codec.num_codebooks)]
    # decoded energy: does the random decoder keep silence quieter than speech?
    dec = codec.decode(codes)
    dm = dec[: mask.shape[0] * FRAME_SIZE].reshape(-1, FRAME_SIZE)
    rms = np.sqrt((dm ** 2).mean(1))
    facts["decoded_rms_speech_frames"] = round(float(rms[mask].mean()), 5)
    facts["decoded_rms_gap_frames"] = round(float(rms[~mask].mean()), 5)
    # speed (wall clock, best of 3, on this machine, with whatever else runs on it)
    clip20 = np.tile(speech, 2)[: 20 * SAMPLE_RATE]
    c20 = codec.encode(clip20, SAMPLE_RATE)
    x20 = torch.from_numpy(clip20).view(1, 1, -1)

    def stream_decode() -> None:
        with codec.stream_decoder() as dec_:
            for t in range(c20.shape[1]):
                dec_.push(c20[:, t])

    def whole_encode() -> None:
        with single_thread(), torch.inference_mode():
            codec.mimi.encode(x20)

    facts["speed_x_realtime"] = {
        "torch_threads": 1,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "encode (streaming path; = stream encoder)": _best_rate(lambda: codec.encode(clip20, SAMPLE_RATE), 20.0),
        "moshi whole-sequence encode (reference, not used)": _best_rate(whole_encode, 20.0),
        "decode (whole)": _best_rate(lambda: codec.decode(c20), 20.0),
        "stream decoder": _best_rate(stream_decode, 20.0),
    }
    _log(f"measured: {json.dumps(facts['speed_x_realtime'])}", progress)
    return facts


def write_report(result: BuildResult, params: BuildParams, facts: dict[str, Any], out_dir: Path) -> None:
    record = {
        "hash": result.hash, "sha256": result.sha256, "size_bytes": result.size_bytes,
        "builder": BUILDER_VERSION, "torch": torch.__version__,
        "moshi": __import__("moshi").__version__,
        "params": {k: v for k, v in params.public().items() if k != "mimi_config"},
        "kmeans_frames": result.frames, "kmeans_levels": result.levels,
        "build_seconds": result.seconds, "facts": facts,
    }
    (out_dir / FACTS_NAME).write_text(json.dumps(record, indent=2) + "\n")
    (out_dir / "README.md").write_text(_readme(record))


def _readme(r: dict[str, Any]) -> str:
    f = r["facts"]
    lines = [
        "# The embedded Mimi codec",
        "",
        "Built by `python -m components.streams.build_codec` (components/streams/build_codec.py);",
        "loaded by `components.streams.codec.load_codec` when `streams.codec_source` is `embedded`.",
        "Regenerated by the builder — edit the builder, not this file.",
        "",
        f"* weights: `mimi-embedded.safetensors`, fp32, {r['size_bytes'] / 1e6:.2f} MB,",
        f"  identity **`{r['hash']}`** (sha256 `{r['sha256']}`)",
        "* config: `mimi-embedded.json` (the dict `moshi.models.loaders.get_mimi(path, mimi_config=...)`",
        "  takes): moshi's Mimi with 8 SEANet filters, latent dim 128, ratios [8, 6, 5, 4] (24 kHz,",
        "  12.5 Hz, frame 1920), one encoder/decoder transformer layer with a 25-step (1 s) context,",
        "  split RVQ of 8 levels × 256 entries × 64 dims (level 0 = `rvq_first`, levels 1-7 = `rvq_rest`)",
        "* weights other than the codebooks: moshi's default random initialisation from the seed, frozen.",
        "  The decoder is untrained: its output is a fixed pattern that ignores the codes (see the",
        "  decoded RMS below), so decoded audio carries no signal; the model's words are read from its",
        "  text stream in the embedded default. (A short fit of the decoder with a multi-resolution",
        "  STFT loss, 300 steps on one core, did not get it out of that regime.)",
        f"* codebooks: k-means ({r['params']['kmeans_iters']} iterations, k-means++ seeding) on "
        f"{r['kmeans_frames']} frames",
        "  (~{:.0f} min) of the world's sentences said by both piper voices, in conversation-like".format(
            r["kmeans_frames"] / 12.5 / 60),
        "  channels (gaps, -70 dBFS noise floor or digital silence, noise bursts); level 0 and level 1",
        "  on their quantizer's input projection of the latent, levels 2-7 on the residual.",
        f"* build: seed {r['params']['seed']}, torch {r['torch']}, moshi {r['moshi']}, one thread; the",
        "  same versions rebuild identical bytes (`python -m components.streams.build_codec --check`).",
        "",
        "## Codes, per level (held-out speech: knowledge-base sentences, both voices)",
        "",
        f"{f['heldout_speech_frames']} speech frames. Silence = 5 s of digital zeros / of the -70 dBFS noise floor.",
        "",
        "| level | k-means entries used | k-means entropy (bits) | distinct codes in speech | entropy in speech (bits) | silence purity (zeros / floor) | speech frames on the silence code (zeros / floor) |",
        "|---|---|---|---|---|---|---|",
    ]
    for km, lv in zip(r["kmeans_levels"], f["levels"]):
        lines.append(
            f"| {lv['level']} | {km['used']} | {km['entropy_bits']} | {lv['distinct_in_speech']} | "
            f"{lv['entropy_bits_speech']} | {lv['silence_purity_digital']} / "
            f"{lv['silence_purity_noise_floor_-70dBFS']} | "
            f"{lv['speech_share_of_silence_code_digital']} / "
            f"{lv['speech_share_of_silence_code_noise_floor_-70dBFS']} |")
    sp = f["speed_x_realtime"]
    lines += [
        "",
        "## Other facts",
        "",
        f"* two different utterances, same code at the same frame: {f['different_utterances_same_code_rate']}",
        f"* same utterance encoded twice: identical = {f['same_utterance_twice_identical']}",
        f"* an utterance encoded after 0.5 s of silence following another utterance vs alone, same code: "
        f"{f['after_other_audio_match_rate']} (all frames), {f['after_other_audio_match_rate_from_1s']} "
        "(from 1 s on: codes are local)",
        f"* moshi's whole-sequence encode vs the streaming path (what `Codec.encode` uses), same code: "
        f"{f['moshi_whole_encode_same_code_rate']} — not bit-identical (ring KV cache and rounding; see codec.py)",
        f"* decoded RMS (held-out clip): speech frames {f['decoded_rms_speech_frames']}, gaps "
        f"{f['decoded_rms_gap_frames']} — the random decoder does not follow its input",
        "",
        f"## Speed (× real time, best of 3 on a 20 s clip, {sp['torch_threads']} torch thread; wall clock on "
        f"the build machine with load average {sp['load_average_1min']} on {os.cpu_count()} cores, and by "
        "the process's CPU time ≈ an idle core)",
        "",
    ]
    lines += [f"* {k}: {v['wall']} (by CPU time: {v['cpu']})" for k, v in sp.items()
              if k not in ("torch_threads", "load_average_1min")]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m components.streams.build_codec", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ASSETS_DIR)
    ap.add_argument("--frames", type=int, default=BuildParams.frames)
    ap.add_argument("--iters", type=int, default=BuildParams.kmeans_iters)
    ap.add_argument("--seed", type=int, default=BuildParams.seed)
    ap.add_argument("--no-measure", action="store_true", help="skip the measured facts and README")
    ap.add_argument("--check", action="store_true",
                    help="rebuild into a temp folder and compare with the asset in --out")
    args = ap.parse_args(argv)
    params = BuildParams(seed=args.seed, frames=args.frames, kmeans_iters=args.iters)
    voices = _Voices()
    if args.check:
        shipped = args.out / WEIGHTS_NAME
        with tempfile.TemporaryDirectory() as tmp:
            result = build(params, Path(tmp), voices=voices)
        expected = codec_hash(shipped.read_bytes()) if shipped.exists() else "(missing)"
        ok = expected == result.hash
        print(json.dumps({"shipped": expected, "rebuilt": result.hash, "identical": ok}))
        return 0 if ok else 1
    result = build(params, args.out, voices=voices)
    if not args.no_measure:
        codec = Codec.from_files(result.weights, json.loads(result.config.read_text()), 8)
        facts = measure(codec, voices)
        write_report(result, params, facts, args.out)
    print(json.dumps({"hash": result.hash, "size_bytes": result.size_bytes, "frames": result.frames}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
