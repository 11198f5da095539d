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
    from pipelines.bench.common import ensure_services

    cfg = ensure_services(cfg)
    if which == "transcribe":
        from pipelines.bench.transcribe import main

        return main(cfg, getattr(args, "conversations", None), getattr(args, "repeats", None))
    if which == "ingest":
        from pipelines.bench.ingest import main

        return main(cfg, getattr(args, "sizes", None))
    raise ValueError(f"unknown bench {which!r}; choose transcribe or ingest")


__all__ = ["run_bench"]
