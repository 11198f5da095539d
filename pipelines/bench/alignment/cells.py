"""One cell of the grid: train (unless it is the champion's row), evaluate, store the result.

A cell's result is cached in the bench bucket at ``bench/alignment/cells/<key>.json``; the key
hashes the cell (row, seed), the dataset version it trains on, the champion's weights and the
train, evaluate and policy sections it runs with, so a finished cell is never run twice and any
change that would change its figures runs it again. Below the cell, the trainer resumes a killed
run from its last checkpoint (train/runs/<key>/) and the evaluation report is cached by its own
content key, so even a cell interrupted halfway loses little.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.config import Config
from components.common.storage import ObjectStore
from components.contract import canonical_json
from pipelines.bench.alignment.dataset import BenchDataset
from pipelines.bench.alignment.grid import Cell, cell_config
from pipelines.bench.common import say, with_bucket

CELLS_PREFIX = "bench/alignment/cells"
CELL_VERSION = 1  # bump when what a cell records changes
# MLflow metrics of the training steps kept for the report's curves.
STEP_METRICS = ("train/loss", "train/accuracy", "train/margins")


@dataclass
class CellResult:
    cell: dict[str, Any]
    key: str
    dataset_version: str
    eval: dict[str, Any]  # rates (value, ci95, n), replay length, report key, MLflow run
    train: dict[str, Any] = field(default_factory=dict)  # TrainResult figures (trained rows)
    history: list[dict[str, Any]] = field(default_factory=list)  # evaluations over steps
    steps: dict[str, list[list[float]]] = field(default_factory=dict)  # metric -> [[step, v]]
    seconds: dict[str, float] = field(default_factory=dict)
    finished_at: str = ""
    note: str = ""  # why a cell has no figures (e.g. too few pairs of its types)
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "cached"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CellResult":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def rate(self, name: str) -> float | None:
        if name == "replay_length":
            return self.eval.get("replay_length", {}).get("mean_words")
        return self.eval.get("rates", {}).get(name, {}).get("value")


def cell_key(ccfg: Config, cell: Cell, dataset_version: str, champion_sha256: str) -> str:
    train = ccfg.train.model_dump(mode="json", exclude={"device", "threads", "work_dir"})
    spec = cell.to_dict()
    for fields in (train, spec):  # options added later, at their default: the keys cells had
        if fields.get("interruption_share") is None:
            fields.pop("interruption_share", None)
    body = {"version": CELL_VERSION, "cell": spec, "dataset": dataset_version,
            "champion": champion_sha256, "train": train,
            "evaluate": ccfg.evaluate.model_dump(mode="json", exclude={"threads"}),
            "policy": ccfg.policy.model_dump(mode="json"), "model": ccfg.model.model_dump(
                mode="json", exclude={"cache_dir"})}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def result_key(key: str) -> str:
    return f"{CELLS_PREFIX}/{key}.json"


def configure(cfg: Config, cell: Cell, dataset: BenchDataset) -> tuple[Config, str]:
    """(the cell's configuration on the bench bucket, its key)."""
    ccfg = with_bucket(cell_config(cfg, cell), dataset.bucket)
    version = dataset.versions.get(cell.spec.dataset)
    if version is None:
        raise ValueError(f"the bench dataset {dataset.key} has no {cell.spec.dataset!r} variant "
                         f"(it has {sorted(dataset.versions)})")
    return ccfg, cell_key(ccfg, cell, version, dataset.champion_sha256)


def cached_result(cfg: Config, cell: Cell, dataset: BenchDataset) -> CellResult | None:
    ccfg, key = configure(cfg, cell, dataset)
    return _stored_result(ObjectStore.from_config(ccfg.storage), key)


def _stored_result(store: ObjectStore, key: str) -> CellResult | None:
    if not store.exists(result_key(key)):
        return None
    result = CellResult.from_dict(store.get_json(result_key(key)))
    result.cached = True
    return result


def run_cell(cfg: Config, cell: Cell, dataset: BenchDataset) -> CellResult:
    """The cell's result: from the bucket when it finished before, else trained and evaluated."""
    from datetime import datetime, timezone

    from components.evaluate.behaviour import evaluate_model

    ccfg, key = configure(cfg, cell, dataset)
    store = ObjectStore.from_config(ccfg.storage)
    hit = _stored_result(store, key)
    if hit is not None:
        return hit
    version = dataset.versions[cell.spec.dataset]  # configure checked it
    t0 = time.monotonic()
    seconds: dict[str, float] = {}
    train: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    steps: dict[str, list[list[float]]] = {}
    source = "champion"
    if cell.spec.loss is not None:
        from components.train.data import NotEnoughPairs
        from components.train.logic import train as train_model

        say(f"cell {cell.name}: training ({cell.spec.label}) on {version}")
        try:
            result = train_model(ccfg, dataset_version=version, progress=True)
        except NotEnoughPairs as exc:  # a property of the data: recorded, not retried
            out = CellResult(cell=cell.to_dict(), key=key, dataset_version=version, eval={},
                             seconds={"total": round(time.monotonic() - t0, 1)},
                             finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             note=f"not trained: {exc}")
            store.put_json(result_key(key), out.to_dict())
            return out
        seconds["train"] = round(time.monotonic() - t0, 1)
        train = {k: v for k, v in result.to_dict().items() if k != "cached"}
        history, steps = _run_curves(ccfg, result.train_run_id)
        source = str(_checkpoint(ccfg, result.run_key, result.train_run_id))
    say(f"cell {cell.name}: evaluating ({ccfg.evaluate.backend}, seed {ccfg.evaluate.seed})")
    t_eval = time.monotonic()
    report = evaluate_model(ccfg, source, progress=True)
    seconds["evaluate"] = round(time.monotonic() - t_eval, 1)
    seconds["total"] = round(time.monotonic() - t0, 1)
    out = CellResult(
        cell=cell.to_dict(), key=key, dataset_version=version,
        eval={"model_version": report.model_version, "weights_sha256": report.weights_sha256,
              "rates": report.rates, "replay_length": report.replay_length,
              "counts": report.counts, "mlflow_run_id": report.mlflow_run_id,
              "evaluate_seed": ccfg.evaluate.seed, "cached": report.cached},
        train=train, history=history, steps=steps, seconds=seconds,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    store.put_json(result_key(key), out.to_dict())  # last: marks the cell finished
    return out


def _checkpoint(ccfg: Config, run_key: str, run_id: str) -> Path:
    """The trained checkpoint: the trainer's work dir here, else the MLflow run's artefact (a
    cell finished on another machine, or a cleaned work dir)."""
    work = Path(ccfg.train.work_dir or Path(ccfg.services.state_dir) / "train") / run_key
    folder = work / "checkpoint"
    if (folder / "config.json").is_file():
        return folder
    import mlflow

    mlflow.set_tracking_uri(ccfg.mlflow.tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint",
                                                    dst_path=str(work)))


def _run_curves(ccfg: Config, run_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The evaluations over steps (the trainer's train_history.json) and the per-step training
    metrics, from the cell's MLflow run."""
    import tempfile

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ccfg.mlflow.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "train_history.json", tmp)
        history = json.loads(Path(path).read_text()).get("history", [])
    steps = {name: [[m.step, m.value] for m in client.get_metric_history(run_id, name)]
             for name in STEP_METRICS}
    return history, steps
