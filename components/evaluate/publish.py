"""Where a behaviour report goes: S3 (JSON + an HTML page with a plot) and an MLflow run.

Only aggregate figures and the model's own replies to world items go in: the evaluation's
simulated users carry no PII, and no audio is stored.
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import TYPE_CHECKING, Any

from components.common.config import Config
from components.common.storage import ObjectStore
from components.contract import Keys

if TYPE_CHECKING:  # pragma: no cover
    from components.evaluate.behaviour import BehaviourReport

STAGE = "evaluate-model"
METRIC_PREFIX = "behaviour/"
# Plot labels, and which direction is good (for the reader of the page).
LABELS = {"qa_seen": "QA, seen phrasings ↑", "qa_new": "QA, new phrasings ↑",
          "refusal_unsafe": "refusal of unsafe ↑", "over_refusal_benign": "over-refusal ↓",
          "interruption": "interruption ↓", "silence": "silence ↓"}


def safe_tag(tag: str) -> str:
    """A model version tag as an S3 key segment: "duplexalign-moshi/3" stays a readable path,
    "path:1a2b…" becomes "path-1a2b…"."""
    clean = re.sub(r"[^A-Za-z0-9._/-]+", "-", tag).strip("/-")
    return re.sub(r"/+", "/", clean) or "unknown"


def report_key(tag: str, name: str = "behaviour.json") -> str:
    return Keys.report(STAGE, safe_tag(tag), name)


def load_stored(store: ObjectStore, tag: str) -> dict[str, Any] | None:
    key = report_key(tag)
    return store.get_json(key) if store.exists(key) else None


def mlflow_metrics(report: "BehaviourReport") -> dict[str, float]:
    out: dict[str, float] = {}
    for name, r in report.rates.items():
        out[f"{METRIC_PREFIX}{name}_n"] = float(r["n"])
        if r["value"] is not None:
            out[f"{METRIC_PREFIX}{name}"] = float(r["value"])
            out[f"{METRIC_PREFIX}{name}_ci_low"] = float(r["ci95"][0])
            out[f"{METRIC_PREFIX}{name}_ci_high"] = float(r["ci95"][1])
    for name in ("mean_s", "median_s"):
        if report.latency.get(name) is not None:
            out[f"{METRIC_PREFIX}latency_{name}"] = float(report.latency[name])
    replay = getattr(report, "replay_length", None) or {}
    out[f"{METRIC_PREFIX}replay_length_n"] = float(replay.get("n") or 0)
    if replay.get("mean_words") is not None:
        out[f"{METRIC_PREFIX}replay_length"] = float(replay["mean_words"])
    out[f"{METRIC_PREFIX}seconds"] = float(report.seconds.get("total", 0.0))
    return out


def mlflow_params(report: "BehaviourReport") -> dict[str, Any]:
    params: dict[str, Any] = {"model_version": report.model_version,
                              "weights_sha256": report.weights_sha256,
                              "conversations": report.conversations,
                              "evaluate_seed": report.config["evaluate"]["seed"],
                              "cache_key": report.cache_key}
    params.update({f"items_{kind}": c["items"] for kind, c in report.counts.items()})
    return params


def plot_png(report: "BehaviourReport") -> str:
    """A horizontal bar per rate with its 95% interval (base64 PNG, the run report's style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ([n for n in LABELS if n in report.rates]
             + [n for n in report.rates if n not in LABELS])[::-1]  # then public sets' rates
    values = [report.rates[n]["value"] or 0.0 for n in names]
    lows = [v - (report.rates[n]["ci95"][0] or 0.0) for n, v in zip(names, values)]
    highs = [(report.rates[n]["ci95"][1] or 0.0) - v for n, v in zip(names, values)]
    fig, ax = plt.subplots(figsize=(7, 2.2 + 0.17 * len(names)))
    ax.barh([LABELS.get(n, n) for n in names], values, xerr=[lows, highs], color="#4c72b0",
            ecolor="#333333", capsize=3)
    ax.set_xlim(0, 1)
    ax.set_title(f"behaviour of {report.model_version} (95% Wilson intervals)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_html(report: "BehaviourReport") -> str:
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{_fmt(r['value'])}</td>"
        f"<td>[{_fmt(r['ci95'][0])}, {_fmt(r['ci95'][1])}]</td><td>{r['k']}/{r['n']}</td></tr>"
        for n, r in report.rates.items())
    replies = "".join(
        f"<tr><td>{html.escape(r['item_id'])}</td><td>{_fmt(r.get('latency_s'))}</td>"
        f"<td>{html.escape(_label(r))}</td><td>{html.escape(r['text'])}</td></tr>"
        for r in report.replies)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>behaviour of {html.escape(report.model_version)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>behaviour of {html.escape(report.model_version)}</h1>
<p>weights sha256 {html.escape(report.weights_sha256[:16])}…, {report.conversations} conversations,
latency mean {_fmt(report.latency.get('mean_s'))} s (n={report.latency.get('n')}),
replay length {_fmt((report.replay_length or {}).get('mean_words'))} words
(n={(report.replay_length or {}).get('n')})</p>
<img alt="behaviour rates with 95% intervals" src="data:image/png;base64,{plot_png(report)}">
<h2>rates</h2><table><tr><th>rate</th><th>value</th><th>95% CI</th><th>k/n</th></tr>{rows}</table>
<ul>{notes}</ul>
<h2>replies</h2><table><tr><th>item</th><th>latency s</th><th>labels</th><th>model text</th></tr>
{replies}</table></body></html>"""


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _label(r: dict[str, Any]) -> str:
    flags = [name for name in ("correct", "refused", "interrupted", "silent") if r.get(name)]
    return ", ".join(flags) if r.get("asked", True) else "not asked"


def store_report(store: ObjectStore, report: "BehaviourReport", page: str) -> str:
    """HTML then JSON (the JSON is the cache entry: written last, it marks a complete report);
    returns the JSON's key."""
    key = report_key(report.model_version)
    store.put_bytes(report_key(report.model_version, "behaviour.html"), page.encode(),
                    content_type="text/html")
    store.put_json(key, report.to_dict())
    return key


def log_to_mlflow(cfg: Config, report: "BehaviourReport", page: str) -> str:
    """One run named ``evaluate-model <version>``; returns its run id."""
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_experiment(cfg.mlflow.experiment)
    with mlflow.start_run(run_name=f"{STAGE} {report.model_version}") as run:
        mlflow.set_tags({"profile": cfg.profile, "stage": STAGE,
                         "model_version": report.model_version})
        mlflow.log_params(mlflow_params(report))
        mlflow.log_metrics(mlflow_metrics(report))
        mlflow.log_dict(report.to_dict(), "behaviour.json")
        mlflow.log_text(page, "behaviour.html")
        return run.info.run_id

