"""MLflow for a training run: params, per-step metrics, lineage tags, the dataset as the run's
input, checkpoints as safetensors artefacts, the curves page, and the registered challenger.

Lineage: the registered version carries the training run's id (its artefacts ARE the run's
``checkpoint/``), the run is tagged with and takes as input the pairs dataset version (an MLflow
dataset input: name = version, digest = its manifest's hash, source = its S3 manifest).

A resumed run keeps logging into the same MLflow run (its id is part of the resumable state), so
a crash leaves one run, not two.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from pathlib import Path
from typing import Any

from components.common.config import Config

METRIC_FLUSH = 25  # buffered metrics go out in batches (one HTTP call per batch)


class TrainTracker:
    """One MLflow run of the trainer (created, or reopened by id after a crash)."""

    def __init__(self, cfg: Config, *, run_name: str, run_id: str | None = None):
        from mlflow import MlflowClient

        from components.model.registry import _experiment_id

        self.cfg = cfg
        self.client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
        run = None
        if run_id is not None:
            from mlflow.exceptions import MlflowException

            try:
                run = self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
            except MlflowException:  # a work dir from another tracking server: start afresh
                run = None
        if run is None:
            run = self.client.create_run(_experiment_id(self.client, cfg.mlflow.experiment),
                                         run_name=run_name)
        self.run_id = run.info.run_id
        self._buffer: list[Any] = []

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(fresh), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=fresh[i : i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dataset(self, version: str, manifest: dict[str, Any], source: str) -> None:
        """The pairs dataset as the run's input (MLflow's dataset lineage)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()
                                ).hexdigest()[:16]
        dataset = Dataset(name=version, digest=digest, source_type="s3",
                          source=json.dumps({"uri": source}),
                          profile=json.dumps({"pairs": manifest.get("pairs"),
                                              "counts": manifest.get("counts")}))
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(
            dataset, tags=[InputTag("mlflow.data.context", "training")])])

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now, step) for k, v in metrics.items()
                         if isinstance(v, (int, float)) and v == v]  # NaN-free
        if len(self._buffer) >= METRIC_FLUSH * 10:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_artifacts(self, folder: str | Path, artifact_path: str) -> None:
        self.flush()
        self.client.log_artifacts(self.run_id, str(folder), artifact_path=artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status)


# ----------------------------------------------------------------------------- curves page


def curves_png(history: list[dict[str, Any]], best_step: int | None, stopped_at: int) -> str:
    """Held-out accuracy / margin and the generation score over steps (base64 PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("heldout_accuracy", "held-out pair accuracy"), ("heldout_margin", "held-out margin"),
              ("generation_score", "generation score"), ("replay_length", "replay length (words)")]
    panels = [(k, t) for k, t in panels if any(h.get(k) is not None for h in history)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4 * max(1, len(panels)), 3.2))
    axes = [axes] if not hasattr(axes, "__len__") else list(axes)
    for ax, (key, title) in zip(axes, panels):
        points = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="#4c72b0")
        if best_step is not None:
            ax.axvline(best_step, color="#55a868", linestyle="--", label=f"best (step {best_step})")
        ax.axvline(stopped_at, color="#c44e52", linestyle=":", label=f"stopped (step {stopped_at})")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_curves_html(summary: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """The training run's page: where and why it stopped, curves, the evaluation table."""
    keys = sorted({k for h in history for k in h if k != "step"})
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["step", *keys])
    rows = "".join("<tr>" + "".join(f"<td>{_fmt(h.get(k))}</td>" for k in ["step", *keys])
                   + "</tr>" for h in history)
    facts = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                    for k, v in summary.items())
    png = curves_png(history, summary.get("best_step"), int(summary.get("stopped_at_step") or 0))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>training run</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>preference training: {html.escape(str(summary.get('loss')))} on
{html.escape(str(summary.get('dataset_version')))}</h1>
<table>{facts}</table>
<img alt="held-out curves" src="data:image/png;base64,{png}">
<h2>evaluations</h2><table><tr>{head}</tr>{rows}</table></body></html>"""


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
