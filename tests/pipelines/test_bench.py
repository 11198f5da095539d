"""The benches end to end at tiny sizes, on the session's live services: the figures are present
and sane (no timing thresholds: those belong to the real bench runs, see docs)."""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Iterator

import pytest

from components.common.config import Config
from components.common.storage import ObjectStore
from pipelines.bench import run_bench

pytestmark = pytest.mark.integration


@pytest.fixture
def bench_cfg(services_config: Config, tmp_path) -> Iterator[Config]:
    """Fresh data bucket name (the benches derive their own bucket from it), consent registry
    and pseudonymisation key; every bench bucket left behind is removed afterwards."""
    cfg = services_config.model_copy(deep=True)
    cfg.storage.bucket = f"t-{uuid.uuid4().hex[:12]}"
    cfg.consent.dsn = f"sqlite:///{tmp_path}/consent.db"
    cfg.scrub.pseudonym_key_file = str(tmp_path / "pseudonym.key")
    yield cfg
    client = ObjectStore.from_config(cfg.storage).client
    for bucket in client.list_buckets():
        if bucket.name.startswith(cfg.storage.bucket + "-bench-"):
            store = ObjectStore.from_config(cfg.storage, bucket=bucket.name)
            store.delete_prefix_all_versions("", allow_whole_bucket=True)
            client.remove_bucket(bucket.name)


def _last_json(out: str) -> dict:
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    return json.loads(lines[-1])


def test_bench_transcribe_figures(bench_cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    # ci world, seed 7: users of conversations 0 and 1 have no consent, so 3 gives one to bench.
    assert run_bench(bench_cfg, "transcribe", argparse.Namespace(conversations=3, repeats=1)) == 0
    out = capsys.readouterr().out
    f = _last_json(out)
    assert "plain whisper_timestamped loop" in out and "speed-up" in out
    assert f["baseline"] == "plain whisper_timestamped loop"
    assert f["simulated"] == 3 and 1 <= f["conversations"] <= 3
    assert f["wer_conversations"] == f["conversations"] and f["stage_failed"] == 0
    assert f["audio_s"] > 0 and f["reference_words"] > 0
    for path in ("plain", "stage"):
        assert f[path]["seconds"] > 0 and f[path]["rtf"] > 0
        assert 0.0 <= f[path]["wer"] <= 1.0
    assert 0 < f["stage"]["asr_seconds"] <= f["stage"]["seconds"]
    assert f["speedup"] == pytest.approx(f["plain"]["seconds"] / f["stage"]["seconds"], rel=0.01)
    assert isinstance(f["target_met"], bool) and f["repeats"] == 1
    assert isinstance(f["disturbed"], bool)
    assert len(f["plain"]["all_runs_s"]) == len(f["stage"]["all_runs_s"]) == 1
    # Nothing lingers: the bench bucket is gone, and so is this run's ground truth.
    assert f["cleanup"]["bucket_removed"] is True
    assert f["cleanup"]["groundtruth_versions_deleted"] == 3
    assert f["bucket"] == f"{bench_cfg.storage.bucket}-bench-transcribe-{f['run']}"
    store = ObjectStore.from_config(bench_cfg.storage, bucket=f["bucket"])
    assert not store.client.bucket_exists(store.bucket)
    gt = ObjectStore.from_config(bench_cfg.storage, bucket=bench_cfg.storage.groundtruth_bucket)
    assert not any(f["run"] in v.key for v in gt.list_versions("conversations/"))


def test_bench_ingest_figures(bench_cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_bench(bench_cfg, "ingest", argparse.Namespace(sizes="20,40")) == 0
    f = _last_json(capsys.readouterr().out)
    assert [r["n"] for r in f["sizes"]] == [20, 40]
    for r in f["sizes"]:
        assert r["timed_out"] is False
        assert r["processed"] == r["n"] and r["skipped"] == 0  # fresh markers: full work
        assert r["accepted"] + sum(r["rejected"].values()) == r["n"]
        assert r["accepted"] > 0
        assert r["seconds"] > 0 and r["conversations_per_s"] > 0
        assert r["peak_rss_mib"] >= r["rss_after_imports_mib"] > 0
        assert r["other_load"] is None or 0.0 <= r["other_load"] <= 1.0
    assert f["peak_rss_ratio"]["of"] == "40/20" and f["peak_rss_ratio"]["ratio"] > 0
    assert f["peak_rss_ratio"]["verdict"] in ("flat", "grows")

    # A rerun reuses the corpus and still does the full work (fresh markers, healed corpus).
    assert run_bench(bench_cfg, "ingest", argparse.Namespace(sizes="20")) == 0
    again = _last_json(capsys.readouterr().out)["sizes"][0]
    assert again["processed"] == 20 and again["skipped"] == 0
    assert again["accepted"] == f["sizes"][0]["accepted"]
