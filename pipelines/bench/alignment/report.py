"""The alignment bench's HTML report: findings in plain words, the paper-style table, the
ablations, the curves over training steps with where early stopping fired, and rejected vs chosen
examples with audio players. Self-contained (plots and audio inlined); stored in the bench bucket
and logged to MLflow, once per set of results: the page's key hashes the cells' results, and a
rerun on the same results finds the page and its MLflow run instead of logging a second one.
``bench/alignment/latest.json`` points at the newest page (the demo's summary links it).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from datetime import datetime, timezone
from typing import Any

from components.common.config import Config
from components.common.storage import ObjectStore
from components.contract import canonical_json
from pipelines.bench.alignment.analysis import (
    METRICS,
    PAPER,
    PAPER_DATA_TYPES,
    TABLE_METRICS,
    plain_findings,
)
from pipelines.bench.alignment.cells import CellResult
from pipelines.bench.alignment.dataset import BenchDataset
from pipelines.bench.alignment.grid import REFERENCE_ROW, ROW_BY_NAME, ROWS

REPORTS_PREFIX = "bench/alignment/reports"
LATEST_KEY = "bench/alignment/latest.json"
EXAMPLES = 4
# curves drawn per trained cell: (history key, title)
EVAL_PANELS = (("heldout_accuracy", "held-out pair accuracy"),
               ("heldout_margin", "held-out reward margin"),
               ("generation_score", "generation score (held-out slice)"),
               ("qa_seen", "QA (held-out slice)"), ("interruption", "interruption (slice)"),
               ("silence", "silence (slice)"), ("replay_length", "replay length (slice)"))
esc = html.escape


# Bump when what the page says changes (its analysis or layout): the same results then get a new
# page rather than the one published before.
REPORT_VERSION = 2


def report_key(dataset: BenchDataset, results: list[CellResult], pending: list[str],
               failed: dict[str, str] | None = None) -> str:
    """The page's identity: the page's version, the dataset, the finished cells (their keys
    address their results) and the cells still to run or that failed."""
    body = {"version": REPORT_VERSION, "dataset": dataset.key,
            "cells": sorted(r.key for r in results),
            "pending": sorted(pending), "failed": sorted(failed or {})}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def _heading(metric: str) -> str:
    """The metric's label with the direction that is better; replay length has none (longer
    replies are what over-optimisation looks like, shorter is not better per se)."""
    label, higher = METRICS[metric]
    return label if metric == "replay_length" else f"{label} {'↑' if higher else '↓'}"


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return esc(str(v))


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(png: str, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{png}">'


def _row_color(name: str) -> str:
    """One colour per kind of row in every plot: the champion grey, the algorithms blue, the
    data-type ablation orange, the audio-source control and the curve green."""
    if name == "champion":
        return "#999999"
    return {"algorithms": "#4c72b0", "data_types": "#dd8452"}.get(ROW_BY_NAME[name].group,
                                                                  "#55a868")


def table_plot(summary: dict[str, Any]) -> str | None:
    """Each table metric as bars (mean) with seed-spread whiskers, one bar per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"].values()]
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(TABLE_METRICS), figsize=(3.3 * len(TABLE_METRICS), 3.6))
    for ax, metric in zip(axes, TABLE_METRICS):
        names = [r["row"] for r in rows]
        means = [r["mean"][metric] if r["mean"][metric] is not None else 0.0 for r in rows]
        sds = [r["sd"][metric] or 0.0 for r in rows]
        ax.bar(range(len(rows)), means, yerr=sds, color=[_row_color(n) for n in names], capsize=3)
        ax.set_xticks(range(len(rows)), [n.replace("_", "\n") for n in names], fontsize=6)
        ax.set_title(_heading(metric), fontsize=9)
    return _png(fig)


def timing_plot(summary: dict[str, Any]) -> str | None:
    """Interruption against silence rate, one point per row (whiskers: the seed s.d.): both come
    from one latency per reply (too early, too late), so rows that only move it slide along a
    line instead of towards the corner where both are low."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"].values()
            if r["mean"]["silence"] is not None and r["mean"]["interruption"] is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for r in rows:
        color = _row_color(r["row"])
        x, y = r["mean"]["silence"], r["mean"]["interruption"]
        ax.errorbar(x, y, xerr=r["sd"]["silence"] or 0.0, yerr=r["sd"]["interruption"] or 0.0,
                    fmt="o", color=color, capsize=2, ms=5)
        ax.annotate(r["row"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("silence rate ↓ (replied too late or not at all)", fontsize=8)
    ax.set_ylabel("interruption rate ↓ (started while the user talked)", fontsize=8)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.tick_params(labelsize=7)
    ax.set_title("timing: each row's interruption vs silence (lower left is better)", fontsize=9)
    return _png(fig)


def curves_plot(result: CellResult, replay: dict[str, Any] | None = None) -> str | None:
    """Held-out accuracy and margins, training margins, generation metrics over steps; the best
    step kept, where the run stopped (and on the curve run, where early stopping would have)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = result.history
    panels = [(k, t) for k, t in EVAL_PANELS if any(h.get(k) is not None for h in history)]
    train_margin = result.steps.get("train/margins") or []
    n = len(panels) + (1 if train_margin else 0)
    if n == 0:
        return None
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        ax.set_visible(False)
    axes = axes[:n]
    best, stopped = result.train.get("best_step"), result.train.get("stopped_at_step")
    for ax, (key, title) in zip(axes, panels):
        points = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3)
        ax.set_title(title, fontsize=8)
    if train_margin:
        ax = axes[-1]
        ax.plot([p[0] for p in train_margin], [p[1] for p in train_margin], color="#8172b2")
        ax.set_title("training reward margin (per step)", fontsize=8)
    for ax in axes:
        if best is not None:
            ax.axvline(best, color="#55a868", linestyle="--", label=f"best {best}")
        if stopped:
            ax.axvline(stopped, color="#c44e52", linestyle=":", label=f"stopped {stopped}")
        if replay and replay.get("stop_step") is not None:
            ax.axvline(replay["stop_step"], color="#000000", linestyle="-.",
                       label=f"early stop would fire {replay['stop_step']}")
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6)
    return _png(fig)


def _row_table(summary: dict[str, Any], names: list[str],
               paper: dict[str, tuple[float | None, ...]] | None = None,
               paper_heading: str = "paper avg QA / safety") -> str:
    """Mean ± s.d. per row; with ``paper``, the paper's figures for the row beside them."""
    head = "".join(f"<th>{esc(_heading(m))}</th>" for m in TABLE_METRICS)
    paper_head = f"<th>{esc(paper_heading)}</th>" if paper else ""
    lines = []
    for name in names:
        r = summary["rows"].get(name)
        if r is None:
            lines.append(f"<tr><td>{esc(ROW_BY_NAME[name].label)}</td>"
                         f"<td colspan={len(TABLE_METRICS) + 2}>not run yet</td></tr>")
            continue
        cells = "".join(
            f"<td>{_fmt(r['mean'][m])}" + (f" ± {_fmt(r['sd'][m])}" if r['sd'][m] is not None
                                          else "") + "</td>" for m in TABLE_METRICS)
        ref = paper.get(name) if paper else None
        paper_cell = ("<td>" + " / ".join(_fmt(v, 1) for v in ref) + "</td>" if ref else
                      "<td>–</td>") if paper else ""
        lines.append(f"<tr><td>{esc(r['label'])}</td><td>{len(r['seeds'])}</td>{cells}"
                     f"{paper_cell}</tr>")
    return (f"<table><tr><th>row</th><th>seeds</th>{head}{paper_head}</tr>{''.join(lines)}"
            "</table>")


def _examples(store: ObjectStore, dataset: BenchDataset) -> str:
    """Rejected vs chosen, text and audio, from both variants of the dataset (the pairs report's
    own example builder: redacted text, synthetic user voice)."""
    from components.report.logic import collect, example_html

    parts = []
    for variant, step, n in (("rejected side as logged", "tokenize", EXAMPLES),
                             ("rejected side resynthesised (the control)", "tokenize_control", 2)):
        manifest = dataset.steps.get(step)
        if not manifest:
            continue
        parts += [example_html(e, variant)
                  for e in collect(store, manifest, examples=n).examples]
    return "".join(parts) or "<p>no examples</p>"


def _composition(store: ObjectStore, dataset: BenchDataset) -> str:
    """Pairs by type in each variant of the dataset (its manifest's counts)."""
    from components.streams.pairset import PairDataset

    parts = []
    for variant, version in dataset.versions.items():
        counts = PairDataset(store, version).manifest.counts
        parts.append(f"{variant}: " + ", ".join(f"{n} {t}" for t, n in counts.items()))
    return ("Pairs by type — " + "; ".join(parts) + ".") if parts else ""


def render(cfg: Config, dataset: BenchDataset, results: list[CellResult],
           summary: dict[str, Any], pending: list[str], store: ObjectStore | None) -> str:
    findings = "".join(f"<li>{esc(line)}</li>" for line in plain_findings(summary))
    algorithms = [r.name for r in ROWS if r.group == "algorithms"]
    data_types = [r.name for r in ROWS if r.group == "data_types"] + [REFERENCE_ROW]
    audio = [REFERENCE_ROW, "rejected_resynthesized"]
    table_png = table_plot(summary)
    timing_png = timing_plot(summary)
    curve_run = summary.get("early_stopping")
    curves = []
    for result in sorted(results, key=lambda r: (ROWS.index(ROW_BY_NAME[r.cell["row"]]),
                                                 r.cell["seed"])):
        if not result.train:
            continue
        is_curve = result.cell["row"] == "dpo_ln_no_early_stop"
        png = curves_plot(result, curve_run if is_curve else None)
        t = result.train
        caption = (f"{ROW_BY_NAME[result.cell['row']].label}, seed {result.cell['seed']}: "
                   f"{t.get('stop_reason')}; best step {t.get('best_step')} of "
                   f"{t.get('total_steps')}; {t.get('train_pairs')} training / "
                   f"{t.get('heldout_pairs')} held-out pairs")
        curves.append(f"<h3>{esc(caption)}</h3>" + (_img(png, caption) if png else ""))
    cell_rows = "".join(
        f"<tr><td>{esc(r.cell['row'])}</td><td>{r.cell['seed']}</td><td><code>{r.key}</code></td>"
        f"<td>{_fmt(r.seconds.get('train'), 0)}</td><td>{_fmt(r.seconds.get('evaluate'), 0)}</td>"
        f"<td>{esc(r.note or str(r.train.get('stop_reason', '–')))}</td>"
        f"<td>{_fmt(r.train.get('heldout_pair_accuracy'))}</td>"
        f"<td><code>{esc(str(r.train.get('train_run_id') or '–'))}</code></td>"
        f"<td><code>{esc(str(r.eval.get('mlflow_run_id') or '–'))}</code></td></tr>"
        for r in results)
    steps = "".join(f"<tr><td>{esc(k)}</td><td>{esc(json.dumps(dataset.figures.get(k)))}</td>"
                    f"<td>{_fmt(dataset.seconds.get(k), 0)}</td></tr>" for k in dataset.steps)
    b = cfg.bench_alignment
    composition = _composition(store, dataset) if store else ""
    pending_html = (f"<p><b>Not run yet</b> (the budget ran out; the next "
                    f"<code>duplexalign bench alignment</code> resumes): "
                    f"{esc(', '.join(pending))}</p>" if pending else "")
    pending_html += "".join(f"<p><b>Failed</b> {esc(name)} (the next run tries again): "
                            f"<code>{esc(error)}</code></p>"
                            for name, error in (summary.get("failed") or {}).items())
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>duplexalign alignment bench</title><style>body{{font-family:sans-serif;margin:2em;
max-width:1400px}}table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;
padding:3px 7px;text-align:left;vertical-align:top;font-size:13px}}.ex{{margin:1em 0}}</style>
</head><body>
<h1>The paper's table on the embedded world</h1>
<p>Dataset <code>{esc(dataset.key)}</code>: {dataset.conversations} on-policy conversations of
{esc(dataset.champion)} (world seed {dataset.world_seed}) through the pipeline's stages; pair
datasets {esc(json.dumps(dataset.versions))}. Seeds {esc(str(b.seeds))} for the champion, DPO and
DPO-LN, {b.seeds[0]} for the other rows. {composition} Each training: {b.epochs} epochs at
{b.batch_size} pairs a step ({b.heldout_fraction:.0%} of the pairs held out), evaluated every
{b.eval_every} steps on the held-out pairs and {b.eval_conversations} held-out conversations,
patience {b.patience}. Evaluation: the world's held-out items, served in
process; the seed draws the evaluation conversations and the sampling.</p>
{pending_html}
<h2>What held and what did not</h2><ul>{findings}</ul>
<p>"holds" = the difference of the means is larger than the noise: the larger of the seed
spread (the sum of the two rows' standard deviations over seeds) and the items' 95% sampling
interval of the difference. What the embedded world can and cannot show: timing (speech vs silence is
plain in the small codec's codes) and the answers to the world's own question clips are
learnable; new wordings are not (shared/reference/embedded-model.md), so QA on new wordings is
shown but never claimed.</p>
<h2>Algorithms (mean ± s.d. over seeds)</h2>{_row_table(summary, algorithms, PAPER)}
{_img(table_png, 'metrics per row') if table_png else ''}
<h2>Data-type ablation (DPO-LN, seed {b.seeds[0]})</h2>{_row_table(
    summary, data_types, PAPER_DATA_TYPES, "paper avg QA / safety / replay length (baseline 20.8)")}
<p>Interruption and silence are the two ends of one figure, the reply's latency (too early, too
late): interruption pairs (B) teach waiting, silence pairs (C) teach replying, and the ratio of
the two in the training data sets where a model that learns mostly <i>whether</i> to speak lands
between them (<code>train.interruption_share</code>).</p>
{_img(timing_png, 'interruption vs silence per row') if timing_png else ''}
<h2>Audio-source control (DPO-LN, seed {b.seeds[0]})</h2>
<p>Chosen replies are TTS audio; the rejected side keeps the model's own audio ("kept" = the DPO-LN
row) or is resynthesised too.</p>{_row_table(summary, audio)}
<h2>Curves over training steps</h2>
<p>Green dashed: the best step (kept); red dotted: where the run stopped; black dash-dot on the
run with early stopping off: where early stopping would have fired.</p>{''.join(curves)}
<h2>Examples: rejected vs chosen</h2>{_examples(store, dataset) if store else ''}
<h2>Cells</h2><table><tr><th>row</th><th>seed</th><th>key</th><th>train s</th><th>eval s</th>
<th>stop</th><th>held-out acc.</th><th>train run</th><th>eval run</th></tr>{cell_rows}</table>
<h2>Dataset build</h2><table><tr><th>step</th><th>figures</th><th>seconds</th></tr>{steps}</table>
<p>generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}</p>
</body></html>"""


def publish(cfg: Config, dataset: BenchDataset, results: list[CellResult],
            summary: dict[str, Any], pending: list[str]) -> dict[str, Any]:
    """Store the page and log it to MLflow, once per set of results; returns where it is."""
    store = ObjectStore.from_config(cfg.storage)
    key = report_key(dataset, results, pending, summary.get("failed"))
    page_key = f"{REPORTS_PREFIX}/{key}/report.html"
    meta_key = f"{REPORTS_PREFIX}/{key}/report.json"
    if store.exists(meta_key):  # the same results: the same page and MLflow run
        meta = store.get_json(meta_key)
        meta["cached"] = True
    else:
        page = render(cfg, dataset, results, summary, pending, store)
        store.put_bytes(page_key, page.encode(), content_type="text/html")
        run_id = _log_to_mlflow(cfg, dataset, key, page, summary)
        meta = {"report": store.uri(page_key), "mlflow_run_id": run_id, "key": key,
                "cells": len(results), "pending": pending, "dataset": dataset.key,
                "experiment": cfg.bench_alignment.experiment}
        store.put_json(meta_key, meta)  # last: marks the page complete
        meta["cached"] = False
    store.put_json(LATEST_KEY, {k: v for k, v in meta.items() if k != "cached"})
    return meta


def latest_report(cfg: Config) -> dict[str, Any] | None:
    """Where the newest bench report is (its page, MLflow run, cells done and pending), or None
    when the bench has not run against this object store."""
    from pipelines.bench.alignment.dataset import dataset_config

    store = ObjectStore.from_config(dataset_config(cfg).storage)
    try:
        return store.get_json(LATEST_KEY) if store.exists(LATEST_KEY) else None
    except Exception:  # noqa: BLE001  (no bench bucket yet)
        return None


def _log_to_mlflow(cfg: Config, dataset: BenchDataset, key: str, page: str,
                   summary: dict[str, Any]) -> str:
    from mlflow import MlflowClient

    from components.model.registry import _experiment_id

    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    run = client.create_run(_experiment_id(client, cfg.bench_alignment.experiment),
                            run_name=f"bench alignment {dataset.key} {key}",
                            tags={"bench": "alignment", "dataset": dataset.key, "report_key": key,
                                  "champion": dataset.champion, "profile": cfg.profile})
    run_id = run.info.run_id
    for name, row in summary["rows"].items():
        for metric, value in row["mean"].items():
            if value is not None:
                client.log_metric(run_id, f"{name}.{metric}", float(value))
    client.log_text(run_id, page, "alignment_bench.html")
    client.log_text(run_id, json.dumps(summary, indent=1, default=str), "summary.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id
