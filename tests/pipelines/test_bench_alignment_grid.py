"""The alignment bench's grid against the live S3 and MLflow servers: a tiny registered champion,
a pairs dataset it served, two rows trained and evaluated for real; a rerun reads every cell and
the report back (no training, no evaluation, no second MLflow run); the budget leaves cells for
the next run and the report lists them."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import uuid

import pytest
from mlflow import MlflowClient

from components.common.storage import ObjectStore
from components.model.registry import register_model
from pipelines.bench.alignment import run_grid
from pipelines.bench.alignment.dataset import BenchDataset, dataset_config
from pipelines.bench.alignment.report import LATEST_KEY
from pipelines.demo import latest_alignment_bench
from tests.components.model.conftest import ci_cfg, codec, tokenizer  # noqa: F401  (fixtures)
from tests.components.train.synthetic import store_dataset, synthetic_pairs, tiny_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def bench(stage_cfg, ci_cfg, tokenizer, codec, tmp_path):  # noqa: F811
    cfg = stage_cfg.model_copy(deep=True)
    name = f"t-bench-{uuid.uuid4().hex[:8]}"
    cfg.model.registered_name = name
    cfg.model.cache_dir = str(tmp_path / "lm-cache")
    cfg.streams = ci_cfg.streams.model_copy()
    cfg.services.state_dir = str(tmp_path / "state")
    cfg.policy.max_reply_s = 4.0  # a random model talks without pause: keep the items short
    cfg.train = cfg.train.model_copy(update={"temporal_lr": 3e-3, "depformer_lr": 1e-3,
                                             "min_pairs": 4})
    cfg.bench_alignment = cfg.bench_alignment.model_copy(update={
        "experiment": name, "seeds": [1], "epochs": 1.0, "batch_size": 4, "eval_every": 2,
        "patience": 2, "eval_conversations": 1, "heldout_fraction": 0.25})
    folder = tiny_checkpoint(tmp_path / "champion", tokenizer, codec)
    version = register_model(cfg, folder, metrics={}, params={}, alias="champion",
                             run_name="test champion")
    tag = f"{name}/{version}"
    store = ObjectStore.from_config(dataset_config(cfg).storage)  # the bench's own bucket
    store.ensure_bucket(versioning=True)
    manifest = store_dataset(store, synthetic_pairs(16), tokenizer_hash=tokenizer.hash,
                             codec_hash=codec.hash, serving=tag)
    dataset = BenchDataset(key="test", world_seed=11, conversations=16, champion=tag,
                           champion_sha256="sha", bucket=store.bucket,
                           versions={"logged": manifest.version, "resynthesized": manifest.version},
                           complete=True)
    yield cfg, dataset, store
    store.delete_prefix_all_versions("", allow_whole_bucket=True)


def _runs(cfg) -> int:
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.bench_alignment.experiment)
    return len(client.search_runs([experiment.experiment_id], max_results=1000))


def test_the_grid_runs_caches_and_resumes(bench):
    cfg, dataset, store = bench
    first = run_grid(cfg, dataset, rows=["champion", "dpo_ln"])
    assert [r.cell["row"] for r in first.results] == ["champion", "dpo_ln"]
    assert not first.pending and not any(r.cached for r in first.results)
    champion, dpo_ln = first.results
    assert champion.train == {} and champion.eval["rates"]["silence"]["n"] > 0
    assert dpo_ln.train["train_pairs"] + dpo_ln.train["heldout_pairs"] == 16
    assert dpo_ln.train["challenger_version"] is None  # a bench cell is not registered
    assert dpo_ln.history and dpo_ln.history[0]["step"] == 0
    assert "heldout_accuracy" in dpo_ln.history[-1] and "generation_score" in dpo_ln.history[-1]
    assert len(dpo_ln.steps["train/margins"]) == dpo_ln.train["stopped_at_step"]
    assert dpo_ln.eval["model_version"].startswith("path:")  # the trained weights, evaluated
    assert dpo_ln.eval["weights_sha256"] != champion.eval["weights_sha256"]
    rows = first.summary["rows"]
    assert set(rows) == {"champion", "dpo_ln"}
    assert rows["dpo_ln"]["mean"]["silence"] == dpo_ln.eval["rates"]["silence"]["value"]
    page = store.get_bytes(first.report["report"].split("/", 3)[3]).decode()
    assert "DPO-LN" in page and "<audio" not in page  # synthetic pairs: no audio to play
    assert store.get_json(LATEST_KEY)["mlflow_run_id"] == first.report["mlflow_run_id"]
    linked = latest_alignment_bench(cfg)  # what the demo's summary links
    assert linked["report"] == first.report["report"] and linked["cells"] == 2
    runs = _runs(cfg)  # champion eval, training, trained eval, report

    again = run_grid(cfg, dataset, rows=["champion", "dpo_ln"])
    assert all(r.cached for r in again.results)
    assert [r.key for r in again.results] == [r.key for r in first.results]
    assert again.report["cached"] and again.report["mlflow_run_id"] == first.report["mlflow_run_id"]
    assert _runs(cfg) == runs  # nothing trained, evaluated or logged twice

    cfg.bench_alignment.budget_minutes = 1e-6  # past the budget before the first new cell
    partial = run_grid(cfg, dataset, rows=["champion", "dpo_ln", "simpo"])
    assert partial.pending == ["simpo/seed1"] and len(partial.results) == 2
    assert partial.report["mlflow_run_id"] != first.report["mlflow_run_id"]  # other results
    assert partial.report["pending"] == ["simpo/seed1"]

    cfg.bench_alignment.budget_minutes = 60.0
    cfg.train.min_pairs = 7  # 6 of the 16 pairs are content pairs
    dataset.versions.pop("resynthesized")  # a dataset built without the control variant
    odd = run_grid(cfg, dataset, rows=["content_only", "rejected_resynthesized"])
    [few] = odd.results
    assert few.note.startswith("not trained:") and "10 of other types" in few.note
    assert few.train == {} and few.eval == {}  # nothing trained or evaluated on 6 pairs
    assert list(odd.failed) == ["rejected_resynthesized/seed1"]
    assert "no 'resynthesized' variant" in odd.failed["rejected_resynthesized/seed1"]
    assert odd.summary["rows"]["content_only"]["mean"]["silence"] is None
