"""`duplexalign bench serve` in miniature (tiny model, 1 and 2 streams, a few frames): every
figure of the report is there, per mode and level, and the JSON line is the last stdout line."""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

from pathlib import Path

import pytest

from components.common.config import Config
from pipelines.bench import BENCHES
from pipelines.bench import serve as bench
from tests.components.model.conftest import ci_cfg, codec, tiny_checkpoint, tokenizer  # noqa: F401


def test_bench_serve_small_run(ci_cfg: Config, tiny_checkpoint: Path,  # noqa: F811
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert "serve" in BENCHES
    args = argparse.Namespace(model_source=str(tiny_checkpoint), streams=[1, 2], frames=4,
                              turns=2)
    assert bench.main(ci_cfg, args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    fig = json.loads(out[-1])
    assert fig["bench"] == "serve" and fig["model"] == "folder"
    assert fig["model_version"].startswith("path:")
    assert fig["http_turn"]["turns"] == 2 and fig["http_turn"]["p99_ms"] > 0
    for mode in ("ws", "batched", "baseline"):
        for n in ("1", "2"):
            r = fig["streams"][mode][n]
            assert r["n"] == int(n) * 3 and 0 < r["p50_ms"] <= r["p99_ms"]  # frame 0 excluded
        assert 0 <= fig["max_realtime_streams"][mode] <= 2
    assert "largest real-time level" in "\n".join(out)
