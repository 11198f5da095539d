"""The run report: one self-contained HTML page (figures, plots, rejects), stored next to the
run's manifests and logged to MLflow with the run's metrics, so runs compare side by side.

Only aggregate figures and per-item reject reasons go in: no transcript text, no audio."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

from components.common.config import Config
from components.common.stagekit import iter_rejects, load_manifest
from components.common.storage import ObjectStore
from components.contract import Keys


def _plot_png(figures: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (funnel, timing) = plt.subplots(1, 2, figsize=(10, 3.2))
    steps = ["conversations", "ingested", "transcribed", "scrubbed"]
    funnel.barh(steps[::-1], [figures[s] for s in steps[::-1]], color="#4c72b0")
    funnel.set_title("conversations through the pipeline")
    stages = figures.get("stage_seconds", {})
    timing.bar(list(stages), list(stages.values()), color="#dd8452")
    timing.set_title("seconds per stage")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_html(figures: dict[str, Any], rejects: list[dict[str, str]]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in figures.items() if not isinstance(v, dict))
    reject_rows = "".join(
        f"<tr><td>{html.escape(r['item'])}</td><td>{html.escape(r['code'])}</td>"
        f"<td>{html.escape(r['reason'])}</td></tr>" for r in rejects) or \
        "<tr><td colspan=3>none</td></tr>"
    bench = figures.get("alignment_bench") or {}
    bench_text = (f"{bench['report']} (MLflow run {bench.get('mlflow_run_id')})"
                  if bench.get("report") else f"not run yet: {bench.get('how', 'n/a')}")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>duplexalign run</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>duplexalign run report</h1>
<p>manifests: {html.escape(json.dumps(figures.get("manifests", {})))}</p>
<p>alignment bench (the paper's table over seeds and ablations, beyond this run's single
before/after): {html.escape(bench_text)}</p>
<img alt="pipeline funnel and stage timings" src="data:image/png;base64,{_plot_png(figures)}">
<h2>figures</h2><table>{rows}</table>
<h2>rejected at ingest</h2><table><tr><th>item</th><th>code</th><th>reason</th></tr>{reject_rows}</table>
</body></html>"""


def write_run_report(cfg: Config, figures: dict[str, Any]) -> str:
    """Store the HTML report under reports/run/<final manifest>/ and log the run to MLflow;
    returns the report's key."""
    store = ObjectStore.from_config(cfg.storage)
    final = list(figures["manifests"].values())[-1]
    ingest_id = figures["manifests"].get("ingest")
    rejects = ([r.model_dump() for r in iter_rejects(store, load_manifest(store, ingest_id))]
               if ingest_id else [])
    page = render_html(figures, rejects)
    key = Keys.report("run", final, "report.html")
    store.put_bytes(key, page.encode(), content_type="text/html")
    log_to_mlflow(cfg, figures, page)
    return key


def log_to_mlflow(cfg: Config, figures: dict[str, Any], page: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_experiment(cfg.mlflow.experiment)
    with mlflow.start_run(run_name=f"pipeline {list(figures['manifests'].values())[-1]}"):
        mlflow.set_tags({"profile": cfg.profile, **{f"manifest.{k}": v
                                                    for k, v in figures["manifests"].items()}})
        mlflow.log_metrics({k: float(v) for k, v in figures.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        mlflow.log_metrics({f"seconds_{k}": float(v) for k, v in figures["stage_seconds"].items()})
        mlflow.log_dict(figures, "figures.json")
        mlflow.log_text(page, "report.html")
