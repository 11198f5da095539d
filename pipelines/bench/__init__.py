"""Benchmarks that print their figures against a named baseline (``duplexalign bench``).

* ``transcribe`` — RTF and WER of the transcribe stage vs a plain whisper_timestamped loop;
* ``ingest`` — ingest throughput and peak RSS for growing corpus sizes.

Each prints progress on stderr, a readable table on stdout and, as the last stdout line, one
JSON object of figures.
"""

from __future__ import annotations

import argparse

from components.common.config import Config


def run_bench(cfg: Config, which: str, args: argparse.Namespace | None = None) -> int:
    from pipelines.bench.common import bench_lock, ensure_services

    if which not in ("transcribe", "ingest"):
        raise ValueError(f"unknown bench {which!r}; choose transcribe or ingest")
    cfg = ensure_services(cfg)
    with bench_lock(cfg, which):
        if which == "transcribe":
            from pipelines.bench import transcribe

            return transcribe.main(cfg, getattr(args, "conversations", None),
                                   getattr(args, "repeats", None))
        from pipelines.bench import ingest

        return ingest.main(cfg, getattr(args, "sizes", None))


__all__ = ["run_bench"]
