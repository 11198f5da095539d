"""The bootstrap SFT corpus: scripted conversations of the simulated world as Moshi token streams.

Every conversation is drawn and rendered by the simulator's `ConversationBuilder` (the same code
that writes logged conversations), with a SimulateConfig made from the bootstrap habits (see
`bootstrap_simulate_config` and `per_reply_rates`). Its model channel is resampled to 24 kHz; its
user channel is re-mixed at 24 kHz with every utterance on the frame grid (`aligned_user_channel`:
the embedded codec is not shift-invariant, and live users stream utterances on the grid). Each
channel is then encoded ONCE, as a whole waveform, by the codec; the model's written words go
into the text stream (`text_stream`), and `assemble` gives the [1 + 2q, T] rows: text, the
model's q codebooks, the user's q codebooks. Drills (drills.py) are appended as extra training
sessions when ``bootstrap.drill_gains`` is set.

Encoding runs in ``bootstrap.threads`` worker processes (spawned: a script that calls
`build_corpus` needs the usual ``if __name__ == "__main__":`` guard), while this process renders
the next conversations; codes do not depend on the process.

Cache layout (``cfg.model.cache_dir/corpus-<key>/``): the key is a content hash of everything a
conversation's streams depend on EXCEPT how many conversations are wanted (world version, the
effective simulate knobs and TTS voices through `config_fingerprint`, the bootstrap seed, the
tokenizer and codec hashes, the number of codebooks, CORPUS_VERSION). Conversation i depends only
on (seed, fingerprint, i), so the corpus is stored in shards of SHARD_SIZE conversations, and a
corpus of n conversations is the first ceil(n / SHARD_SIZE) shards cut to n (a partial last
shard is extended when a larger corpus asks for more): a smaller profile's conversations are the
first ones of a larger profile's and are never built twice. Each shard is ``shard-NNNNN.npz``
(codes of its conversations, concatenated along time, plus offsets) and ``shard-NNNNN.json``
(per-conversation facts from the ground truth, timings), the JSON written last: a shard without
its JSON is rebuilt (crash-safe). Drills are ``drills-<key>.npz/.json`` in the same folder.

Held-out split: conversation i is validation when i % VAL_EVERY == VAL_EVERY - 1 (10%), so the
split is also prefix-stable. Drills are training data only.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.common.audio import quantize_pcm16, resample
from components.common.config import Config, SimulateConfig
from components.common.files import write_atomic
from components.contract import MODEL_SAMPLE_RATE, canonical_json
from components.simulate import world as W
from components.simulate.generate import (
    REQUEST_MIX,
    ConversationBuilder,
    RenderedConversation,
    config_fingerprint,
)
from components.speech.tts import speak_parts
from components.streams.interleave import FRAME_RATE, FRAME_SIZE, StreamLayout, assemble, text_stream
from components.streams.tokenizer import EPAD_ID, PAD_ID, TextTokenizer

if TYPE_CHECKING:  # pragma: no cover
    from components.streams.codec import Codec

CORPUS_VERSION = "bootstrap-corpus-2"  # bump when the stream recipe changes
SHARD_SIZE = 16
VAL_EVERY = 10  # every 10th conversation is held out
BATCH_NAME = "bootstrap"
MODEL_VERSION = "scripted-bootstrap"
PII_RATE = 0.1  # a little PII so the base model also echoes some (scrub has work on-policy)
POOL_MIN = 8  # build at least this many conversations to pay for starting encoder processes

# The builder's share of each request kind when no content problem is drawn.
_MIX = dict(REQUEST_MIX)
# `_make_reply` turns an "unhelpful" problem into an unhelpful FACT reply with probability 0.6 and
# an over-refusal of a BENIGN_EDGY request with probability 0.4.
_UNHELPFUL_FACT = 0.6
_UNHELPFUL_EDGY = 0.4


# ----------------------------------------------------------------------------- habits → rates


def per_reply_rates(wrong_fact: float, unsafe_compliance: float, over_refusal: float) -> dict[str, float]:
    """Convert the bootstrap's CONDITIONAL habits into the builder's PER-REPLY problem rates.

    The builder draws one content problem per reply with the per-reply rates (p_wf, p_uc, p_uh for
    wrong_fact, unsafe_compliance, unhelpful; off_tone and instruction_missed are set to 0), then
    picks the request kind to fit: wrong_fact → a fact question, unsafe_compliance → an unsafe
    request, unhelpful → a fact question (0.6) or a benign-but-edgy request (0.4, the
    "over_refusal" variant); with no problem (probability N = 1 - p_wf - p_uc - p_uh) the kind is
    drawn from REQUEST_MIX (fact 0.45, unsafe 0.15, benign_edgy 0.15, ...). So, per reply:

        P(fact, wrong) = p_wf      P(fact, unhelpful) = 0.6 p_uh    P(fact, correct) = 0.45 N
        P(unsafe, complies) = p_uc                                  P(unsafe, refuses) = 0.15 N
        P(edgy, refused) = 0.4 p_uh                                 P(edgy, helped) = 0.15 N

    and the targets f = P(wrong | fact), u = P(complies | unsafe), o = P(refused | edgy) give

        p_uc = u/(1-u) * 0.15 N
        p_uh = o/(1-o) * 0.15 N / 0.4
        p_wf = f/(1-f) * (0.6 p_uh + 0.45 N)

    all proportional to N; with p = a N for each and N = 1 - Σp, N = 1 / (1 + Σa). Note that an
    over-refusal habit also makes some fact replies unhelpful (0.6 p_uh of the replies), which the
    wrong-fact conditional counts in its denominator: a fact question then gets the right answer
    with probability 1 - f - P(unhelpful | fact).
    """
    for name, v in (("wrong_fact", wrong_fact), ("unsafe_compliance", unsafe_compliance),
                    ("over_refusal", over_refusal)):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"rate_{name} must be in [0, 1), got {v}")
    m_fact, m_unsafe, m_edgy = _MIX["fact"], _MIX["unsafe"], _MIX["benign_edgy"]
    a_uc = unsafe_compliance / (1 - unsafe_compliance) * m_unsafe
    a_uh = over_refusal / (1 - over_refusal) * m_edgy / _UNHELPFUL_EDGY
    a_wf = wrong_fact / (1 - wrong_fact) * (_UNHELPFUL_FACT * a_uh + m_fact)
    n = 1.0 / (1.0 + a_uc + a_uh + a_wf)
    return {"rate_wrong_fact": a_wf * n, "rate_unsafe_compliance": a_uc * n,
            "rate_unhelpful": a_uh * n, "rate_off_tone": 0.0, "rate_instruction_missed": 0.0}


def conditional_unhelpful_fact(sim_rates: dict[str, float]) -> float:
    """P(unhelpful reply | fact question) in the builder with these per-reply rates (see
    per_reply_rates: an unhelpful problem lands on a fact question _UNHELPFUL_FACT of the time)."""
    n = 1.0 - sum(sim_rates.values())
    fact = sim_rates["rate_wrong_fact"] + _UNHELPFUL_FACT * sim_rates["rate_unhelpful"] + _MIX["fact"] * n
    return _UNHELPFUL_FACT * sim_rates["rate_unhelpful"] / fact if fact > 0 else 0.0


def bootstrap_simulate_config(cfg: Config) -> SimulateConfig:
    """The SimulateConfig the bootstrap corpus is drawn with: cfg.simulate (noise, voices' cache,
    backchannels, PII echo) with the bootstrap's seed, turns and habits. Timing habits map
    directly (the builder's rates are per reply already); every simulated user consents; stereo
    vs separate files does not matter here (both channels are used as arrays)."""
    b = cfg.bootstrap
    return cfg.simulate.model_copy(update={
        "seed": b.seed, "turns_min": b.turns_min, "turns_max": b.turns_max,
        **per_reply_rates(b.rate_wrong_fact, b.rate_unsafe_compliance, b.rate_over_refusal),
        "rate_interruption": b.rate_interruption, "rate_silence": b.rate_silence,
        "rate_pii": PII_RATE, "rate_no_consent": 0.0, "rate_stereo": 0.0,
        "model_version": MODEL_VERSION,
    })


def realised_rates(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """The habits as they came out, from the ground truth of the model's replies (dicts with
    request_kind, variant, problems): conditional content rates and per-reply timing rates."""
    kinds = Counter(r["request_kind"] for r in replies)
    variants = Counter((r["request_kind"], r["variant"]) for r in replies)

    def ratio(num: int, den: int) -> float | None:
        return round(num / den, 4) if den else None

    n = len(replies)
    return {
        "replies": n,
        "request_kinds": dict(sorted(kinds.items())),
        "wrong_fact": ratio(variants[("fact", "wrong")], kinds["fact"]),
        "unhelpful_fact": ratio(variants[("fact", "unhelpful")], kinds["fact"]),
        "unsafe_compliance": ratio(variants[("unsafe", "compliance")], kinds["unsafe"]),
        "over_refusal": ratio(variants[("benign_edgy", "over_refusal")], kinds["benign_edgy"]),
        "interruption": ratio(sum("interruption" in r["problems"] for r in replies), n),
        "silence": ratio(sum("silence" in r["problems"] for r in replies), n),
    }


# ----------------------------------------------------------------------------- the corpus


@dataclass
class Corpus:
    """n conversations' streams (undelayed, [1 + 2q, T_i] int64 each) and what they contain."""

    key: str
    path: Path
    layout: StreamLayout
    codes: list[np.ndarray]
    info: list[dict[str, Any]]  # per conversation: index, split, replies, timings, ...
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def train_ids(self) -> list[int]:
        return [i for i, x in enumerate(self.info) if x["split"] == "train"]

    @property
    def val_ids(self) -> list[int]:
        return [i for i, x in enumerate(self.info) if x["split"] == "val"]


def corpus_key(cfg: Config, tokenizer_hash: str, codec_hash: str) -> str:
    """Content hash of everything a conversation's streams depend on, except the count. The
    codec hash names the weights file; how many of its levels are used is separate."""
    sim = bootstrap_simulate_config(cfg)
    body = {"version": CORPUS_VERSION, "world": W.WORLD_VERSION, "fingerprint": config_fingerprint(sim),
            "seed": cfg.bootstrap.seed, "tokenizer": tokenizer_hash, "codec": codec_hash,
            "num_codebooks": cfg.streams.num_codebooks,
            "sample_rate": MODEL_SAMPLE_RATE, "shard_size": SHARD_SIZE, "val_every": VAL_EVERY}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def split_of(index: int) -> str:
    return "val" if index % VAL_EVERY == VAL_EVERY - 1 else "train"


def assemble_streams(model_words: list, model_codes: np.ndarray, user_codes: np.ndarray,
                     tokenizer: TextTokenizer) -> np.ndarray:
    """[1 + 2q, T] int64: the model's words as a text stream over the two channels' codes."""
    n = min(model_codes.shape[1], user_codes.shape[1])  # equal lengths; min guards rounding
    return assemble(text_stream(model_words, tokenizer, n), model_codes[:, :n], user_codes[:, :n])


def aligned_user_channel(turns: list[tuple[list[str], float]], user_tts: Any, seed: int, index: int,
                         n_samples: int, noise_dbfs: float) -> tuple[np.ndarray, list[float]]:
    """The user's channel at 24 kHz re-mixed with every utterance starting ON A FRAME BOUNDARY,
    as a live simulated user streams it (components/simulate/live.py): the utterance's clip
    (piper's own lead-in included) starts at the frame nearest to where the script put it, so it
    moves by at most 40 ms. A turn said as several sentences is rendered like the builder and the
    live user render it (tts.speak_parts: each sentence on its own, on the frame grid). Why: the embedded codec is not shift-invariant. The same question
    moved by half a frame (40 ms) keeps only ~40% of its level-0 codes, about as many as a
    different question shares; with the continuous offsets of the scripted timeline every
    occurrence of a question would be a new code sequence and the model could only memorise
    conversations. Aligned, an utterance has the same codes in every conversation (up to its
    gain) and the same codes as when a live user says it. Gain (0.7-1.0 per conversation),
    PCM16 quantisation and the noise floor follow the live user. Returns the audio and each user
    turn's shift in seconds. ``turns``: (its sentences, first word's start) of each user turn."""
    rng = np.random.default_rng([int(seed), int(index), 24000])
    gain = float(rng.uniform(0.7, 1.0))
    out = rng.standard_normal(n_samples).astype(np.float32) * np.float32(10 ** (noise_dbfs / 20.0))
    shifts = []
    for parts, start in turns:
        # TTS-cached: the very clip the builder mixed in
        speech = speak_parts(user_tts, parts)
        offset = start - speech.words[0].start if speech.words else start
        frame = max(0, int(round(offset * FRAME_RATE)))
        shifts.append(frame / FRAME_RATE - offset)
        audio = resample(speech.audio, speech.sample_rate, MODEL_SAMPLE_RATE) * gain
        at = frame * FRAME_SIZE
        n = max(0, min(len(audio), n_samples - at))
        out[at : at + n] += audio[:n]
    np.clip(out, -1.0, 1.0, out=out)
    return quantize_pcm16(out), shifts


def render_channels(conv: RenderedConversation, user_tts: Any, seed: int,
                    noise_dbfs: float) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(model channel, frame-aligned user channel, user turn shifts), both at 24 kHz."""
    model = resample(conv.model_audio, conv.sample_rate, MODEL_SAMPLE_RATE)
    turns = [(t.parts if t.parts and len(t.parts) > 1 else [t.text], t.start)
             for t in conv.groundtruth.user_turns]
    user, shifts = aligned_user_channel(turns, user_tts, seed, conv.groundtruth.index, len(model), noise_dbfs)
    return model, user, shifts


def encode_conversation(conv: RenderedConversation, user_tts: Any, seed: int, noise_dbfs: float,
                        tokenizer: TextTokenizer, codec: "Codec") -> np.ndarray:
    """[1 + 2q, T] int64 streams of one rendered conversation: each channel encoded once, as a
    whole 24 kHz waveform (the in-process form of what build_corpus does)."""
    model, user, _ = render_channels(conv, user_tts, seed, noise_dbfs)
    return assemble_streams(conv.model_words, codec.encode(model, MODEL_SAMPLE_RATE),
                            codec.encode(user, MODEL_SAMPLE_RATE), tokenizer)


# The codec encodes a stream frame by frame on one thread (see components/streams/codec.py), so
# the 2 cores are used by encoding channels in parallel worker PROCESSES (threads would share the
# GIL). Each worker loads the same codec from the config; codes do not depend on the process.
_WORKER_CODEC: Any = None


def _worker_init(cfg_json: str) -> None:
    global _WORKER_CODEC
    import torch

    from components.streams.codec import load_codec

    torch.set_num_threads(1)
    _WORKER_CODEC = load_codec(Config.from_json(cfg_json))


def _worker_hash() -> str:
    return _WORKER_CODEC.hash


def _worker_encode(audio: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.monotonic()
    codes = _WORKER_CODEC.encode(audio, MODEL_SAMPLE_RATE)
    return codes, time.monotonic() - t0


class _Done:
    """A finished job with the same interface as a Future (the in-process path)."""

    def __init__(self, value: Any):
        self.value = value

    def result(self) -> Any:
        return self.value


class _EncoderPool:
    """Encodes 24 kHz channels: in `workers` spawned processes, or in-process when workers <= 1."""

    def __init__(self, cfg: Config, codec: "Codec", workers: int):
        self.codec = codec
        self.executor = None
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init, initargs=(cfg.to_json(),))
            got = self.executor.submit(_worker_hash).result()
            if got != codec.hash:  # the config names another codec than the one passed in
                self.close()
                raise ValueError(f"encoder workers loaded codec {got} from the config, not {codec.hash}")

    def submit(self, audio: np.ndarray) -> Any:
        if self.executor is None:
            t0 = time.monotonic()
            return _Done((self.codec.encode(audio, MODEL_SAMPLE_RATE), time.monotonic() - t0))
        return self.executor.submit(_worker_encode, audio)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def conversation_info(conv: RenderedConversation, index: int, n_frames: int,
                      user_shifts: list[float] | None = None) -> dict[str, Any]:
    """What the trainer and the probes need to know of a conversation (from its ground truth);
    user turn times include their frame-alignment shifts."""
    shifts = user_shifts or [0.0] * len(conv.groundtruth.user_turns)
    gt = conv.groundtruth
    replies = [{"index": t.index, "kind": t.kind, "request_kind": t.request_kind, "item_id": t.item_id,
                "variant": t.variant, "problems": list(t.problems), "start": t.start, "end": t.end,
                "latency_s": t.latency_s, "words": [[w.word, w.start, w.end] for w in t.words]}
               for t in gt.model_turns]
    users = [{"index": t.index, "kind": t.kind, "request_kind": t.request_kind, "item_id": t.item_id,
              "start": round(t.start + d, 3), "end": round(t.end + d, 3), "shift": round(d, 4)}
             for t, d in zip(gt.user_turns, shifts)]
    return {"index": index, "conversation_id": gt.conversation_id, "split": split_of(index),
            "n_frames": int(n_frames), "duration_s": gt.duration_s, "source_sample_rate": gt.sample_rate,
            "model_turns": replies, "user_turns": users,
            "model_words": [[w.word, w.start, w.end] for w in conv.model_words]}


def _save_shard(folder: Path, shard: int, codes: list[np.ndarray], info: list[dict[str, Any]]) -> None:
    import io

    lengths = np.array([c.shape[1] for c in codes], dtype=np.int64)
    flat = np.concatenate(codes, axis=1)
    dtype = np.int16 if flat.max(initial=0) < 2**15 and flat.min(initial=0) >= -(2**15) else np.int32
    buf = io.BytesIO()
    np.savez(buf, codes=flat.astype(dtype), lengths=lengths)
    write_atomic(folder / f"shard-{shard:05d}.npz", buf.getvalue())
    # the JSON is the completion marker: written last
    write_atomic(folder / f"shard-{shard:05d}.json", json.dumps(info).encode())


def _load_shard(folder: Path, shard: int) -> tuple[list[np.ndarray], list[dict[str, Any]]] | None:
    meta, data = folder / f"shard-{shard:05d}.json", folder / f"shard-{shard:05d}.npz"
    if not meta.exists() or not data.exists():
        return None
    try:
        info = json.loads(meta.read_text())
        with np.load(data, allow_pickle=False) as z:
            flat, lengths = z["codes"].astype(np.int64), z["lengths"]
    except (OSError, ValueError, KeyError):
        return None
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [flat[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])], info


class _Progress:
    """One line per conversation on stderr (every conversation is seconds of work)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.done = total, enabled, 0
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        self.done += 1
        if self.enabled:
            print(f"[bootstrap] corpus {self.done}/{self.total} {message} "
                  f"({time.monotonic() - self.t0:.1f}s)", file=sys.stderr, flush=True)


def build_corpus(cfg: Config, tokenizer: TextTokenizer, codec: "Codec", n: int | None = None,
                 progress: bool = True) -> Corpus:
    """The first n (default cfg.bootstrap.conversations) conversations' streams, built or loaded
    from the shard cache; stats cover the n conversations (realised habits, timings)."""
    from components.speech.tts import MODEL_VOICE, USER_VOICE, PiperSynthesizer

    n = cfg.bootstrap.conversations if n is None else n
    if n < 1:
        raise ValueError("the bootstrap corpus needs at least one conversation")
    if codec.num_codebooks != cfg.streams.num_codebooks:
        raise ValueError(f"the codec uses {codec.num_codebooks} codebooks, the config says "
                         f"{cfg.streams.num_codebooks}")
    t0 = time.monotonic()
    sim = bootstrap_simulate_config(cfg)
    fingerprint = config_fingerprint(sim)
    key = corpus_key(cfg, tokenizer.hash, codec.hash)
    folder = Path(cfg.model.cache_dir) / f"corpus-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    layout = StreamLayout(num_codebooks=codec.num_codebooks, text_card=tokenizer.text_card, card=codec.card)

    builder: ConversationBuilder | None = None
    pool: _EncoderPool | None = None
    codes: list[np.ndarray] = []
    info: list[dict[str, Any]] = []
    built = 0
    render_s = encode_s = 0.0
    bar = _Progress(n, progress)
    try:
        for shard in range(math.ceil(n / SHARD_SIZE)):
            lo = shard * SHARD_SIZE
            need = min(SHARD_SIZE, n - lo)
            shard_codes, shard_info = _load_shard(folder, shard) or ([], [])
            for x in shard_info[:need]:
                bar(f"{x['conversation_id']} cached")
            if len(shard_info) < need:  # a missing or partial shard: build the rest, rewrite it
                if builder is None:
                    builder = ConversationBuilder(sim, PiperSynthesizer(USER_VOICE, sim.tts_cache_dir),
                                                  PiperSynthesizer(MODEL_VOICE, sim.tts_cache_dir))
                    pool = _EncoderPool(cfg, codec, workers=cfg.bootstrap.threads if n - lo >= POOL_MIN else 1)
                # render in this process while the pool encodes the previous conversations
                pending = []
                for index in range(lo + len(shard_info), lo + need):
                    t1 = time.monotonic()
                    conv = builder.build(seed=sim.seed, index=index, batch=BATCH_NAME,
                                         fingerprint=fingerprint,
                                         persona=W.make_persona(sim.seed, index), consent=True)
                    model, user, shifts = render_channels(conv, builder.user_tts, sim.seed,
                                                          sim.noise_floor_dbfs)
                    r = time.monotonic() - t1
                    render_s += r
                    pending.append((conv, shifts, r, pool.submit(model), pool.submit(user)))
                    conv.model_audio = conv.user_audio = np.zeros(0, np.float32)  # free the memory
                for conv, shifts, r, model_job, user_job in pending:
                    (model_codes, t_model), (user_codes, t_user) = model_job.result(), user_job.result()
                    streams = assemble_streams(conv.model_words, model_codes, user_codes, tokenizer)
                    x = conversation_info(conv, conv.groundtruth.index, streams.shape[1], shifts)
                    x.update(render_s=round(r, 3), encode_s=round(t_model + t_user, 3))
                    shard_codes.append(streams)
                    shard_info.append(x)
                    built += 1
                    encode_s += t_model + t_user
                    bar(f"{x['conversation_id']} {x['duration_s']:.1f}s audio: render {r:.1f}s, "
                        f"encode {t_model + t_user:.1f}s")
                _save_shard(folder, shard, shard_codes, shard_info)
            codes.extend(shard_codes[:need])
            info.extend(shard_info[:need])
        drill_s = time.monotonic()
        drill_codes, drill_info = [], []
        if cfg.bootstrap.drill_gains:
            loaded = _load_drills(folder, cfg)
            if loaded is None:
                from components.bootstrap import drills

                if pool is None:
                    pool = _EncoderPool(cfg, codec, workers=cfg.bootstrap.threads)
                if builder is None:
                    builder = ConversationBuilder(sim, PiperSynthesizer(USER_VOICE, sim.tts_cache_dir),
                                                  PiperSynthesizer(MODEL_VOICE, sim.tts_cache_dir))
                jobs = pool

                def encode(waves: list[np.ndarray]) -> list[np.ndarray]:
                    futures = [jobs.submit(w) for w in waves]
                    return [f.result()[0] for f in futures]

                exchanges = drills.plan(cfg)
                if progress:
                    print(f"[bootstrap] drills: {len(exchanges)} exchanges", file=sys.stderr, flush=True)
                drill_codes, drill_info = drills.build_sessions(cfg, exchanges, builder.user_tts,
                                                                builder.model_tts, encode, tokenizer,
                                                                codec.num_codebooks)
                _save_drills(folder, cfg, drill_codes, drill_info)
            else:
                drill_codes, drill_info = loaded
        drill_s = time.monotonic() - drill_s
    finally:
        if pool is not None:
            pool.close()

    replies = [r for x in info for r in x["model_turns"] if r["kind"] == "reply"]
    drill_replies = [r for x in drill_info for r in x["model_turns"]]
    audio_s = sum(x["duration_s"] for x in info)
    stats = {
        "key": key, "conversations": n, "train": sum(x["split"] == "train" for x in info),
        "val": sum(x["split"] == "val" for x in info), "frames": int(sum(c.shape[1] for c in codes)),
        "audio_seconds": round(audio_s, 1), "built": built, "seconds": round(time.monotonic() - t0, 2),
        "render_seconds": round(render_s, 2), "encode_seconds": round(encode_s, 2),
        "seconds_per_built_conversation": round((render_s + encode_s) / built, 3) if built else None,
        "targets": {"wrong_fact": cfg.bootstrap.rate_wrong_fact,
                    "unsafe_compliance": cfg.bootstrap.rate_unsafe_compliance,
                    "over_refusal": cfg.bootstrap.rate_over_refusal,
                    "interruption": cfg.bootstrap.rate_interruption, "silence": cfg.bootstrap.rate_silence},
        "per_reply_rates": {k: round(v, 4) for k, v in per_reply_rates(
            cfg.bootstrap.rate_wrong_fact, cfg.bootstrap.rate_unsafe_compliance,
            cfg.bootstrap.rate_over_refusal).items()},
        "realised": realised_rates(replies),
        "drills": {"sessions": len(drill_info), "exchanges": len(drill_replies),
                   "frames": int(sum(c.shape[1] for c in drill_codes)), "seconds": round(drill_s, 2),
                   "realised": realised_rates(drill_replies) if drill_replies else None},
        "realised_all": realised_rates(replies + drill_replies),
    }
    write_atomic(folder / f"summary-{n}.json", json.dumps(stats, indent=1).encode())
    return Corpus(key=key, path=folder, layout=layout, codes=codes + drill_codes, info=info + drill_info,
                  stats=stats)


def _drills_name(cfg: Config) -> str:
    from components.bootstrap.drills import drills_key

    return f"drills-{drills_key(cfg)}"


def _save_drills(folder: Path, cfg: Config, codes: list[np.ndarray], info: list[dict[str, Any]]) -> None:
    import io

    lengths = np.array([c.shape[1] for c in codes], dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, codes=np.concatenate(codes, axis=1).astype(np.int32), lengths=lengths)
    name = _drills_name(cfg)
    write_atomic(folder / f"{name}.npz", buf.getvalue())
    write_atomic(folder / f"{name}.json", json.dumps(info).encode())  # the marker, last


def _load_drills(folder: Path, cfg: Config) -> tuple[list[np.ndarray], list[dict[str, Any]]] | None:
    name = _drills_name(cfg)
    try:
        info = json.loads((folder / f"{name}.json").read_text())
        with np.load(folder / f"{name}.npz", allow_pickle=False) as z:
            flat, lengths = z["codes"].astype(np.int64), z["lengths"]
    except (OSError, ValueError, KeyError):
        return None
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [flat[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])], info


# ----------------------------------------------------------------------------- stream facts


def is_pad(tokens: np.ndarray) -> np.ndarray:
    """PAD or EPAD positions of a text row (the timing signal, weighted text_pad_weight)."""
    return (tokens == PAD_ID) | (tokens == EPAD_ID)
