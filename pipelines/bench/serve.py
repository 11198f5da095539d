"""``duplexalign bench serve``: the predictor's latency and how many live conversations it
carries in real time, batched (serving/batcher.py) against the named baseline "one DuplexSession
per connection" (unbatched: every connection its own copy of the LM), in the same run.

* OIP turns over HTTP at batch 1: ``infer`` wall time per turn (1.2 s of user audio, replies
  capped at 1 s), p50 / p99, through the real server on loopback;
* streaming, per 80 ms frame, at 1, 2, 4, 8, 16 concurrent conversations, each pushing its next
  frame as soon as the previous one is answered (closed loop: the hardest load N live users can
  put on the server). A frame = encode the user's 1920 samples + the LM step + decode the
  model's 1920 samples:
  - ``ws``: the deployed path, WebSocket clients against the server (round trip on the client);
  - ``batched``: the same work in-process, every connection a slot of ONE BatchedLM (one
    batched Mimi encode, LMGen step and Mimi decode per step for all conversations);
  - ``baseline``: in-process, every connection its own DuplexSession on its own LM copy, with
    its own codec stream encoder and decoder.
  A level is real time when the per-frame p99 is below 80 ms (every user gets its frame back
  before the next one is due); the largest real-time level is reported per mode.

No services are needed when the model is a folder (conversation logging is off); a registry
source starts them. With no usable model (a fresh checkout) a random model of ``cfg.model.size``
with the embedded tokenizer and codec is served: its speed is the trained model's, its words
are noise. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import argparse
import copy
import dataclasses
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from components.common.config import Config
from pipelines.bench.common import OtherLoad, emit, fmt, say, table

STREAM_LEVELS = (1, 2, 4, 8, 16)
FRAME_BUDGET_S = 0.08  # 80 ms: one frame of real time
REPLY_CAP_S = 1.0


def _speechlike(frames: int, seed: int) -> np.ndarray:
    """Tones with a moving pitch, bursts and pauses plus noise: enough to move the codes."""
    from serving.engine import FRAME_SIZE, SAMPLE_RATE

    rng = np.random.default_rng(seed)
    t = np.arange(frames * FRAME_SIZE) / SAMPLE_RATE
    envelope = (np.sin(2 * np.pi * 1.3 * t + seed) > 0).astype(np.float32)
    audio = 0.2 * np.sin(2 * np.pi * (180 + 60 * np.sin(2 * np.pi * 0.7 * t)) * t) * envelope
    return (audio + 0.02 * rng.standard_normal(t.shape[0])).astype(np.float32)


def _pcts(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None, "n": 0}
    arr = np.asarray(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p99_ms": round(float(np.percentile(arr, 99)), 2),
            "mean_ms": round(float(arr.mean()), 2), "n": int(arr.size)}


def bench_model(cfg: Config, source: str | None, workdir: Path) -> tuple[Config, str, str]:
    """(cfg, model source, how it was found): the given/configured source, else a random model
    of cfg.model.size saved under ``workdir``."""
    from components.model.registry import resolve_model

    src = str(source or cfg.serving.model_source)
    if Path(src).expanduser().is_dir():
        return cfg, src, "folder"
    try:
        from pipelines.bench.common import ensure_services

        live = ensure_services(cfg)
        return live, str(resolve_model(live, src)), f"resolved {src}"
    except Exception as exc:  # no registry / no such alias: a random model of the same size
        say(f"model source {src!r} unavailable ({type(exc).__name__}: {exc}); serving a random "
            f"{cfg.model.size} model with the embedded tokenizer and codec")
    from components.model.checkpoint import save_checkpoint
    from components.model.spec import build_lm, lm_kwargs
    from components.streams.codec import load_codec
    from components.streams.interleave import StreamLayout
    from components.streams.tokenizer import load_tokenizer

    tokenizer, codec = load_tokenizer(cfg), load_codec(cfg)
    kwargs = lm_kwargs(cfg.model.size, StreamLayout(cfg.streams.num_codebooks,
                                                    tokenizer.text_card, codec.card),
                       cfg.model.context)
    folder = workdir / "random-model"
    save_checkpoint(build_lm(kwargs, seed=0), kwargs, tokenizer, codec, folder,
                    {"size": cfg.model.size})
    return cfg, str(folder), f"random {cfg.model.size} (no model available)"


def _run_threads(n: int, work) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def http_turns(url: str, model_name: str, turns: int) -> dict[str, Any]:
    import httpx

    from serving.client import infer_turn

    audio = _speechlike(15, seed=1)  # 1.2 s
    times: list[float] = []
    with httpx.Client() as client:
        infer_turn(url, model_name, audio, max_reply_s=REPLY_CAP_S, client=client)  # warm-up
        for _ in range(turns):
            t0 = time.perf_counter()
            infer_turn(url, model_name, audio, max_reply_s=REPLY_CAP_S, client=client)
            times.append(time.perf_counter() - t0)
    return {"turns": turns, "user_audio_s": 1.2, "reply_cap_s": REPLY_CAP_S, **_pcts(times)}


def ws_streams(ws_url: str, n: int, frames: int) -> list[float]:
    from serving.client import StreamSession
    from serving.engine import FRAME_SIZE

    times: list[list[float]] = [[] for _ in range(n)]

    def work(i: int) -> None:
        audio = _speechlike(frames, seed=10 + i)
        with StreamSession(ws_url, f"bench-user-{i}") as s:
            for k in range(frames):
                t0 = time.perf_counter()
                s.step(audio[k * FRAME_SIZE:(k + 1) * FRAME_SIZE])
                times[i].append(time.perf_counter() - t0)

    _run_threads(n, work)
    return [t for ts in times for t in ts[1:]]  # frame 0 includes the slot's priming step


def batched_streams(lm, model, n: int, frames: int) -> list[float]:
    from serving.engine import FRAME_SIZE

    times: list[list[float]] = [[] for _ in range(n)]

    def work(i: int) -> None:
        audio = _speechlike(frames, seed=10 + i)
        with lm.open() as slot:  # encode + LM + decode, all batched in the slot's steps
            for k in range(frames):
                t0 = time.perf_counter()
                slot.step(audio[k * FRAME_SIZE:(k + 1) * FRAME_SIZE])
                times[i].append(time.perf_counter() - t0)

    _run_threads(n, work)
    return [t for ts in times for t in ts[1:]]


def baseline_streams(models: list, policy, n: int, frames: int) -> list[float]:
    """The named baseline: one DuplexSession per connection, each on its own LM copy."""
    from serving.engine import FRAME_SIZE, DuplexSession

    times: list[list[float]] = [[] for _ in range(n)]

    def work(i: int) -> None:
        audio = _speechlike(frames, seed=10 + i)
        m = models[i]
        with DuplexSession(m, policy, seed=i) as session, m.codec.stream_decoder() as dec:
            for k in range(frames):
                t0 = time.perf_counter()
                out = session.step(audio[k * FRAME_SIZE:(k + 1) * FRAME_SIZE])
                dec.push(out.model_codes)
                times[i].append(time.perf_counter() - t0)

    _run_threads(n, work)
    return [t for ts in times for t in ts[1:]]


def run_serve_bench(cfg: Config, model_source: str | None = None, levels=STREAM_LEVELS,
                    frames: int | None = None, turns: int | None = None) -> dict[str, Any]:
    import torch

    from components.model.checkpoint import load_checkpoint
    from serving.batcher import BatchedLM
    from serving.server import running_server

    quick = cfg.profile == "ci"
    frames = frames or (20 if quick else 50)
    turns = turns or (10 if quick else 30)
    levels = tuple(sorted(set(int(x) for x in levels)))
    torch.set_num_threads(cfg.serving.threads)
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        cfg, source, how = bench_model(cfg, model_source, Path(tmp))
        cfg = cfg.model_copy(deep=True)
        cfg.serving.port, cfg.serving.log_conversations = 0, False
        cfg.serving.max_streams = max(levels)
        say(f"model: {source} ({how}); {frames} frames per stream, {turns} OIP turns")
        figures: dict[str, Any] = {"bench": "serve", "model_source": source, "model": how,
                                   "frames_per_stream": frames, "levels": list(levels),
                                   "frame_budget_ms": FRAME_BUDGET_S * 1000,
                                   "torch_threads": cfg.serving.threads, "device": "cpu"}
        streams: dict[str, dict[str, Any]] = {"ws": {}, "batched": {}, "baseline": {}}
        load = OtherLoad(cfg).__enter__()  # how busy the machine was with other work
        with running_server(cfg, source) as srv:
            figures["model_version"] = srv.model_version
            say("OIP v2 turns over HTTP, batch 1")
            figures["http_turn"] = http_turns(srv.url, srv.model_name, turns)
            for n in levels:
                say(f"WebSocket: {n} concurrent stream(s)")
                stats = srv.predictor.batcher.stats
                steps0, slots0 = stats.steps, stats.slot_steps
                res = _pcts(ws_streams(srv.ws_url, n, frames))
                res["mean_batch"] = round((stats.slot_steps - slots0)
                                          / max(1, stats.steps - steps0), 2)
                streams["ws"][str(n)] = res
        model = load_checkpoint(source, cfg)
        with BatchedLM(model, cfg.policy, max(levels), seed=cfg.policy.seed) as lm:
            for n in levels:
                say(f"in-process batched: {n} stream(s)")
                s0 = len(lm.stats.step_seconds)
                res = _pcts(batched_streams(lm, model, n, frames))
                steps = list(lm.stats.step_seconds)[s0:]
                res["lm_step_ms"] = round(1000 * statistics.mean(steps), 2) if steps else None
                res["mean_batch"] = round(n * (frames - 1) / max(1, len(steps)), 2)
                streams["batched"][str(n)] = res
        copies: list = []
        for n in levels:
            while len(copies) < n:  # one LM per connection
                copies.append(dataclasses.replace(model, lm=copy.deepcopy(model.lm)))
            say(f"baseline (one DuplexSession per connection): {n} stream(s)")
            streams["baseline"][str(n)] = _pcts(baseline_streams(copies, cfg.policy, n, frames))
        load.__exit__(None, None, None)
        figures["other_load_share"] = None if load.share is None else round(load.share, 3)
    figures["streams"] = streams
    figures["max_realtime_streams"] = {
        mode: max([int(n) for n, r in res.items()
                   if r["p99_ms"] is not None and r["p99_ms"] < FRAME_BUDGET_S * 1000],
                  default=0)
        for mode, res in streams.items()}
    figures["seconds"] = round(time.monotonic() - t_start, 1)
    return figures


def report(fig: dict[str, Any]) -> str:
    h = fig["http_turn"]
    lines = [f"bench serve — {fig['model']} ({fig.get('model_version')}), CPU, "
             f"{fig['torch_threads']} torch thread(s), {fig['seconds']}s; other processes used "
             f"{fmt(fig.get('other_load_share'), '.0%')} of the CPUs meanwhile",
             "",
             f"OIP v2 infer over HTTP, batch 1 ({h['turns']} turns of {h['user_audio_s']}s user "
             f"audio, reply cap {h['reply_cap_s']}s): p50 {fmt(h['p50_ms'], '.0f')} ms, "
             f"p99 {fmt(h['p99_ms'], '.0f')} ms",
             "",
             "Per 80 ms frame (encode + LM + decode), closed loop, p50 / p99 ms:"]
    rows = []
    for n in fig["levels"]:
        k = str(n)
        ws, b, base = (fig["streams"][m][k] for m in ("ws", "batched", "baseline"))
        rows.append([k, f"{fmt(ws['p50_ms'], '.1f')} / {fmt(ws['p99_ms'], '.1f')}",
                     fmt(ws.get("mean_batch"), ".1f"),
                     f"{fmt(b['p50_ms'], '.1f')} / {fmt(b['p99_ms'], '.1f')}",
                     fmt(b.get("lm_step_ms"), ".1f"),
                     f"{fmt(base['p50_ms'], '.1f')} / {fmt(base['p99_ms'], '.1f')}"])
    lines.append(table(["streams", "ws (served)", "batch", "batched", "LM step",
                        "baseline: DuplexSession/conn"], rows))
    rt = fig["max_realtime_streams"]
    lines += ["", f"largest real-time level (p99 < {fig['frame_budget_ms']:.0f} ms): "
              f"ws {rt['ws']}, batched {rt['batched']}, baseline {rt['baseline']}"]
    return "\n".join(lines)


def main(cfg: Config, args: argparse.Namespace | None = None) -> int:
    """Entry of ``duplexalign bench serve`` (args: model_source, streams, frames, turns)."""
    levels = getattr(args, "streams", None) or STREAM_LEVELS
    figures = run_serve_bench(cfg, getattr(args, "model_source", None), levels,
                              getattr(args, "frames", None), getattr(args, "turns", None))
    emit(report(figures), figures)
    return 0
