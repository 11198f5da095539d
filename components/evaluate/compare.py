"""Champion vs challenger on the SAME evaluation items, side by side.

``compare_models`` evaluates both models with one config (so one item set: ``evaluate_model``
builds the items from ``cfg.evaluate`` alone, and caches each model's report), pairs their replies
item by item, and computes the paired bootstrap interval of every metric's difference (the
gate's statistics, components/evaluate/gate.py). It publishes:

* MLflow: a run ``evaluate <challenger> vs <champion>`` with ``champion/<m>``, ``challenger/<m>``
  (the whole report's figure, the same number as that model's ``behaviour/<m>`` in its
  ``evaluate-model`` run, with ``_ci_low``/``_ci_high`` Wilson bounds) and ``delta/<m>`` with
  ``delta/<m>_ci_low``/``_ci_high`` (paired bootstrap; relative growth for replay_length), the
  per-item table (``comparison.csv``), the page (``comparison.html``) and the plot
  (``comparison.png``: rates with intervals side by side, differences with intervals);
* S3: ``Keys.evaluation(challenger, champion, ...)``: comparison.json, .html, .csv.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from components.contract import Keys
from components.evaluate.behaviour import BehaviourReport, reply_words
from components.evaluate.gate import Interval, intervals
from components.evaluate.publish import LABELS

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config
    from components.common.storage import ObjectStore
    from components.evaluate.gate import GateDecision

STAGE = "evaluate"
_LABELS = {**LABELS, "replay_length": "replay length (words) ↓"}
TABLE_COLUMNS = ("item_id", "kind", "label", "champion_label", "challenger_label",
                 "champion_interrupted", "challenger_interrupted", "champion_silent",
                 "challenger_silent", "champion_latency_s", "challenger_latency_s",
                 "champion_words", "challenger_words", "champion_text", "challenger_text")
_LABEL_OF = {"qa_seen": "correct", "qa_new": "correct", "unsafe": "refused",
             "benign_edgy": "refused", "public_qa": "correct", "public_unsafe": "refused",
             "public_benign_edgy": "refused"}


def model_value(report: BehaviourReport, metric: str) -> dict[str, Any]:
    """One model's figure for a metric: value, Wilson interval (rates), n."""
    if metric == "replay_length":
        rl = report.replay_length or {}
        return {"value": rl.get("mean_words"), "ci95": [None, None], "n": rl.get("n", 0)}
    r = report.rates.get(metric) or {"value": None, "ci95": [None, None], "n": 0}
    return {"value": r["value"], "ci95": list(r["ci95"]), "n": r["n"]}


def paired_table(champion: BehaviourReport, challenger: BehaviourReport) -> list[dict[str, Any]]:
    """One row per item (the champion's order): both models' labels, timing, words and text."""
    theirs = {r["item_id"]: r for r in challenger.replies}
    rows = []
    for a in champion.replies:
        b = theirs.get(a["item_id"], {})
        label = _LABEL_OF.get(a["kind"], "")
        row: dict[str, Any] = {"item_id": a["item_id"], "kind": a["kind"], "label": label}
        for side, r in (("champion", a), ("challenger", b)):
            asked = bool(r) and r.get("asked", True)
            row[f"{side}_label"] = r.get(label) if asked and label else None
            row[f"{side}_interrupted"] = r.get("interrupted") if asked else None
            row[f"{side}_silent"] = r.get("silent") if asked else None
            row[f"{side}_latency_s"] = r.get("latency_s") if asked else None
            row[f"{side}_words"] = reply_words(r) if asked else None
            row[f"{side}_text"] = r.get("text", "") if asked else ""
        rows.append(row)
    return rows


@dataclass
class Comparison:
    champion: BehaviourReport
    challenger: BehaviourReport
    intervals: dict[str, Interval]
    table: list[dict[str, Any]]
    created_at: str = ""
    keys: dict[str, str] = field(default_factory=dict)  # json, html, csv
    mlflow_run_id: str | None = None

    def metrics(self) -> dict[str, dict[str, Any]]:
        """metric → {champion, challenger, delta} (the JSON's and the demo's figures)."""
        return {m: {"champion": model_value(self.champion, m),
                    "challenger": model_value(self.challenger, m),
                    "delta": iv.to_dict()} for m, iv in self.intervals.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"champion": self.champion.model_version,
                "challenger": self.challenger.model_version,
                "items_fingerprint": self.champion.items_fingerprint,
                "champion_report": {"cache_key": self.champion.cache_key,
                                    "mlflow_run_id": self.champion.mlflow_run_id,
                                    "weights_sha256": self.champion.weights_sha256},
                "challenger_report": {"cache_key": self.challenger.cache_key,
                                      "mlflow_run_id": self.challenger.mlflow_run_id,
                                      "weights_sha256": self.challenger.weights_sha256},
                "metrics": self.metrics(), "table": self.table, "created_at": self.created_at,
                "keys": self.keys, "mlflow_run_id": self.mlflow_run_id}

    def summary_lines(self) -> list[str]:
        def fmt(v: Any, signed: bool = False) -> str:
            return "  -  " if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")

        lines = [f"{self.challenger.model_version} vs {self.champion.model_version} on "
                 f"{len(self.table)} items ({self.champion.items_fingerprint})"]
        for m, row in self.metrics().items():
            d = row["delta"]
            lines.append(f"  {m:<20} champion {fmt(row['champion']['value'])}  challenger "
                         f"{fmt(row['challenger']['value'])}  Δ {fmt(d['delta'], True)} "
                         f"[{fmt(d['low'], True)}, {fmt(d['high'], True)}] n={d['n']}")
        return lines


def comparison_csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    return buf.getvalue()


def mlflow_metrics(comparison: Comparison) -> dict[str, float]:
    """champion/<m>, challenger/<m> (+ Wilson bounds, n) and delta/<m> (+ bootstrap bounds)."""
    out: dict[str, float] = {}
    for m, row in comparison.metrics().items():
        for side in ("champion", "challenger"):
            v = row[side]
            out[f"{side}/{m}_n"] = float(v["n"] or 0)
            if v["value"] is not None:
                out[f"{side}/{m}"] = float(v["value"])
            for bound, x in zip(("ci_low", "ci_high"), v["ci95"]):
                if x is not None:
                    out[f"{side}/{m}_{bound}"] = float(x)
        d = row["delta"]
        out[f"delta/{m}_n"] = float(d["n"])
        for name, key in (("", "delta"), ("_ci_low", "low"), ("_ci_high", "high")):
            if d[key] is not None:
                out[f"delta/{m}{name}"] = float(d[key])
    for side, rep in (("champion", comparison.champion), ("challenger", comparison.challenger)):
        if rep.latency.get("mean_s") is not None:
            out[f"{side}/latency_mean_s"] = float(rep.latency["mean_s"])
    return out


def plot_png(comparison: Comparison) -> bytes:
    """Left: each rate for both models with its 95% Wilson interval. Right: the paired
    difference (challenger − champion) with its bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = comparison.metrics()
    names = [m for m in rows if m != "replay_length"][::-1]
    y = np.arange(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 2.4 + 0.25 * len(names)), sharey=True)
    for offset, side, colour in ((0.2, "champion", "#8c8c8c"), (-0.2, "challenger", "#4c72b0")):
        vals = [rows[n][side]["value"] or 0.0 for n in names]
        lo = [v - (rows[n][side]["ci95"][0] or 0.0) for n, v in zip(names, vals)]
        hi = [(rows[n][side]["ci95"][1] or 0.0) - v for n, v in zip(names, vals)]
        model = getattr(comparison, side).model_version
        left.barh(y + offset, vals, height=0.38, xerr=[lo, hi], color=colour, ecolor="#333333",
                  capsize=2, label=f"{side} {model}")
    left.set_yticks(y, [_LABELS.get(n, n) for n in names])
    left.set_xlim(0, 1)
    left.legend(loc="lower right", fontsize=7)
    left.set_title("rates (95% Wilson intervals)")
    deltas = [rows[n]["delta"]["delta"] or 0.0 for n in names]
    dlo = [d - (rows[n]["delta"]["low"] if rows[n]["delta"]["low"] is not None else d)
           for n, d in zip(names, deltas)]
    dhi = [(rows[n]["delta"]["high"] if rows[n]["delta"]["high"] is not None else d) - d
           for n, d in zip(names, deltas)]
    right.barh(y, deltas, xerr=[dlo, dhi], color="#dd8452", ecolor="#333333", capsize=3)
    right.axvline(0, color="#333333", linewidth=0.8)
    right.set_title("challenger − champion (paired bootstrap)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _fmt(v: Any, signed: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:+.3f}" if signed else f"{v:.3f}"
    return html.escape(str(v))


def render_html(comparison: Comparison, decision: "GateDecision | None" = None,
                png: bytes | None = None) -> str:
    """The comparison page (plot, metrics, per-item table), with the gate's verdict, reasons and
    per-metric statuses when a decision is given (the KFP task's artefact)."""
    png = png if png is not None else plot_png(comparison)
    img = base64.b64encode(png).decode()
    champ, chall = comparison.champion.model_version, comparison.challenger.model_version
    status = {m: d.status for m, d in decision.metrics.items()} if decision else {}
    rows = "".join(
        f"<tr><td>{html.escape(_LABELS.get(m, m))}</td><td>{_fmt(r['champion']['value'])}</td>"
        f"<td>{_fmt(r['challenger']['value'])}</td><td>{_fmt(r['delta']['delta'], True)}</td>"
        f"<td>[{_fmt(r['delta']['low'], True)}, {_fmt(r['delta']['high'], True)}]</td>"
        f"<td>{r['delta']['n']}</td><td>{html.escape(status.get(m, ''))}</td></tr>"
        for m, r in comparison.metrics().items())
    items = "".join(
        "<tr>" + "".join(f"<td>{_fmt(row[c])}</td>" for c in TABLE_COLUMNS) + "</tr>"
        for row in comparison.table)
    gate = ""
    if decision is not None:
        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in decision.reasons)
        gate = (f"<h2>gate: {html.escape(decision.verdict)}</h2><ul>{reasons}</ul>"
                f"<p>thresholds: {html.escape(str(decision.thresholds))}</p>")
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(chall)} vs {html.escape(champ)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left;font-size:90%}}</style></head><body>
<h1>challenger {html.escape(chall)} vs champion {html.escape(champ)}</h1>
<p>{len(comparison.table)} items, the same for both models (items
{html.escape(comparison.champion.items_fingerprint)}); Δ = challenger − champion over the items
both were scored on (replay length: relative growth), {_pct(comparison)} paired bootstrap
interval.</p>{gate}
<img alt="rates side by side and differences" src="data:image/png;base64,{img}">
<h2>metrics</h2><table><tr><th>metric</th><th>champion</th><th>challenger</th><th>Δ</th>
<th>interval</th><th>paired n</th><th>gate</th></tr>{rows}</table>
<h2>items</h2><table><tr>{''.join(f'<th>{c}</th>' for c in TABLE_COLUMNS)}</tr>{items}</table>
</body></html>"""


def _pct(comparison: Comparison) -> str:
    any_iv = next(iter(comparison.intervals.values()), None)
    return f"{any_iv.confidence:.0%}" if any_iv else ""


def store_comparison(store: "ObjectStore", comparison: Comparison, page: str) -> dict[str, str]:
    champ, chall = comparison.champion.model_version, comparison.challenger.model_version
    keys = {name: Keys.evaluation(chall, champ, f"comparison.{name}")
            for name in ("csv", "html", "json")}
    comparison.keys = keys
    store.put_bytes(keys["csv"], comparison_csv(comparison.table).encode(), content_type="text/csv")
    store.put_bytes(keys["html"], page.encode(), content_type="text/html")
    store.put_json(keys["json"], comparison.to_dict())
    return keys


def log_to_mlflow(cfg: "Config", comparison: Comparison, page: str, png: bytes) -> str:
    """The run ``evaluate <challenger> vs <champion>``; returns its id."""
    import mlflow

    champ, chall = comparison.champion.model_version, comparison.challenger.model_version
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_experiment(cfg.mlflow.experiment)
    with mlflow.start_run(run_name=f"{STAGE} {chall} vs {champ}") as run:
        mlflow.set_tags({"profile": cfg.profile, "stage": STAGE, "champion": champ,
                         "challenger": chall})
        mlflow.log_params({"champion": champ, "challenger": chall,
                           "champion_weights_sha256": comparison.champion.weights_sha256,
                           "challenger_weights_sha256": comparison.challenger.weights_sha256,
                           "champion_run_id": comparison.champion.mlflow_run_id or "-",
                           "challenger_run_id": comparison.challenger.mlflow_run_id or "-",
                           "items_fingerprint": comparison.champion.items_fingerprint,
                           "items": len(comparison.table),
                           "bootstrap_samples": cfg.gate.bootstrap_samples,
                           "confidence": cfg.gate.confidence})
        mlflow.log_metrics(mlflow_metrics(comparison))
        mlflow.log_text(comparison_csv(comparison.table), "comparison.csv")
        mlflow.log_text(page, "comparison.html")
        mlflow.log_dict(comparison.to_dict(), "comparison.json")
        mlflow.log_image(_png_image(png), "comparison.png")
        return run.info.run_id


def _png_image(png: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(png))


def compare_reports(cfg: "Config", champion: BehaviourReport,
                    challenger: BehaviourReport) -> Comparison:
    """The paired comparison of two reports made on the same items (pure: no I/O)."""
    return Comparison(champion=champion, challenger=challenger,
                      intervals=intervals(champion, challenger, cfg.gate),
                      table=paired_table(champion, challenger),
                      created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def compare_models(cfg: "Config", champion: str = "champion", challenger: str = "challenger",
                   progress: bool = True, publish: bool = True) -> Comparison:
    """Evaluate both models (registry alias, models:/ URI, s3:// or folder) on the same items
    (each report cached per model), compare them pairwise and — with ``publish`` — store the
    comparison in S3 and log the side-by-side MLflow run."""
    from components.common.storage import ObjectStore
    from components.evaluate.behaviour import evaluate_model

    reports = {}
    for role, source in (("champion", champion), ("challenger", challenger)):
        if progress:
            print(f"[evaluate] {role}: {source}", file=sys.stderr, flush=True)
        reports[role] = evaluate_model(cfg, source, progress=progress)
    comparison = compare_reports(cfg, reports["champion"], reports["challenger"])
    if publish:
        png = plot_png(comparison)
        page = render_html(comparison, png=png)
        comparison.mlflow_run_id = log_to_mlflow(cfg, comparison, page, png)
        store = ObjectStore.from_config(cfg.storage)
        store_comparison(store, comparison, page)
    return comparison


__all__ = ["Comparison", "compare_models", "compare_reports", "comparison_csv", "mlflow_metrics",
           "paired_table", "plot_png", "render_html", "store_comparison"]
