"""Benchmarks that print their figures against a named baseline (``duplexalign bench``).

* ``transcribe`` — RTF and WER of the transcribe stage vs a plain whisper_timestamped loop;
* ``ingest`` — ingest throughput and peak RSS for growing corpus sizes;
* ``judge`` — timing detectors and the content judge against the simulator's labels, agreement
  with the hand-labelled calibration set, replies/s at concurrency 1 (baseline) and 8;
* ``resynthesize`` — TTS real-time factor and how closely resynthesised turns fit their spans;
* ``tokenize`` — pair-tensor tokenization frames/s;
* ``train`` — preference-training tokens/s of our step vs TRL's DPOTrainer (same model, pairs,
  loss, optimizer), Moshi text-only vs joint frames/s, cached vs in-step reference, MFU;
* ``serve`` — the predictor: OIP turn latency p50/p99 over HTTP, per-frame streaming time at
  1-16 concurrent conversations batched in one LMGen vs one DuplexSession per connection;
* ``alignment`` — the paper's table on the embedded world: DPO, SimPO, APO-Zero, DPO-LN and the
  joint loss against the champion (the baseline) over seeds, the data-type and audio-source
  ablations, the early-stopping curve; resumable across sessions, an HTML report in MLflow.

Each prints progress on stderr, a readable table on stdout and, as the last stdout line, one
JSON object of figures.
"""

from __future__ import annotations

import argparse

from components.common.config import Config

BENCHES = ("transcribe", "ingest", "judge", "resynthesize", "tokenize", "train", "serve",
           "alignment")


def run_bench(cfg: Config, which: str, args: argparse.Namespace | None = None) -> int:
    from pipelines.bench.common import bench_lock, ensure_services

    if which not in BENCHES:
        raise ValueError(f"unknown bench {which!r}; choose one of {', '.join(BENCHES)}")
    if which == "train":  # in-process models only: no services to start
        from pipelines.bench import train

        with bench_lock(cfg, which):
            return train.main(cfg, args)
    if which == "serve":  # starts the services itself only for a registry model source
        from pipelines.bench import serve

        with bench_lock(cfg, which):
            return serve.main(cfg, args)
    cfg = ensure_services(cfg)
    with bench_lock(cfg, which):
        if which in ("judge", "resynthesize", "tokenize", "alignment"):
            import importlib

            return importlib.import_module(f"pipelines.bench.{which}").main(cfg, args)
        if which == "transcribe":
            from pipelines.bench import transcribe

            return transcribe.main(cfg, getattr(args, "conversations", None),
                                   getattr(args, "repeats", None))
        from pipelines.bench import ingest

        return ingest.main(cfg, getattr(args, "sizes", None))


__all__ = ["run_bench"]
