"""``duplexalign bench alignment``: the paper's table on the embedded world.

1. One dataset per world seed (dataset.py): hundreds of short on-policy conversations of the
   champion through the pipeline's stages, with the audio-source control variant beside it.
2. The grid (grid.py): DPO, SimPO, APO-Zero, DPO-LN, DPO-LN joint text+audio and the champion,
   3 seeds for the champion, DPO and DPO-LN; the data-type and audio-source ablations; a curve
   trained past early stopping. Each cell (cells.py) is cached by content hash in the bench
   bucket, so the grid resumes across invocations and sessions.
3. The time budget (``bench_alignment.budget_minutes``): no cell starts that the cells measured so
   far say would end past it; what is left is listed and run by the next invocation.
4. The analysis (analysis.py) and the HTML report (report.py), logged to MLflow once per set of
   results.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any

from components.common.config import Config
from pipelines.bench.common import emit, fmt, say, table


def apply_args(cfg: Config, args: argparse.Namespace | None) -> Config:
    """The CLI's flags over the bench_alignment section (``--set bench_alignment.*`` works
    too)."""
    if args is None:
        return cfg
    update: dict[str, Any] = {}
    if getattr(args, "conversations", None):
        update["conversations"] = args.conversations
    if getattr(args, "seeds", None):
        update["seeds"] = args.seeds
    if getattr(args, "budget_minutes", None):
        update["budget_minutes"] = args.budget_minutes
    if getattr(args, "world_seed", None) is not None:
        update["world_seed"] = args.world_seed
    if not update:
        return cfg
    out = cfg.model_copy(deep=True)
    out.bench_alignment = out.bench_alignment.model_validate(
        {**out.bench_alignment.model_dump(), **update})
    return out


@dataclass
class GridOutcome:
    results: list[Any]  # CellResult, in plan order
    pending: list[str]  # cells the budget left for the next run
    failed: dict[str, str]  # cell -> error (not cached: the next run tries again)
    summary: dict[str, Any]
    report: dict[str, Any]  # where the page is, its MLflow run


def run_grid(cfg: Config, dataset: Any, *, rows: list[str] | None = None,
             report_only: bool = False, started: float | None = None) -> GridOutcome:
    """Every cell of the plan: cached ones read back, the others run while the budget allows;
    then the analysis and the report (published once per set of results)."""
    from pipelines.bench.alignment.analysis import summarise
    from pipelines.bench.alignment.cells import cached_result, run_cell
    from pipelines.bench.alignment.grid import Cell, cell_config, plan
    from pipelines.bench.alignment.report import publish
    from pipelines.bench.common import with_bucket

    b = cfg.bench_alignment
    t0 = time.monotonic() if started is None else started
    cells = plan(cfg, rows)
    results, pending = [], []
    failed: dict[str, str] = {}
    durations: list[float] = []
    for i, cell in enumerate(cells):
        try:
            hit = cached_result(cfg, cell, dataset)
            if hit is not None:
                results.append(hit)
                durations.append(hit.seconds.get("total", 0.0))
                continue
            elapsed = time.monotonic() - t0
            estimate = statistics.median(durations) if durations else 0.0
            if not cell.spec.early_stopping:  # the curve runs curve_epochs to the end
                estimate *= b.curve_epochs / b.epochs
            if report_only or elapsed + estimate > b.budget_minutes * 60:
                pending.append(cell.name)
                continue
            say(f"cell {i + 1}/{len(cells)} {cell.name} ({elapsed / 60:.0f} of "
                f"{b.budget_minutes:.0f} min used)")
            result = run_cell(cfg, cell, dataset)
        except Exception as exc:  # noqa: BLE001  (one cell's failure must not lose the others)
            say(f"cell {cell.name} FAILED: {type(exc).__name__}: {exc}")
            failed[cell.name] = f"{type(exc).__name__}: {exc}"
            continue
        results.append(result)
        durations.append(result.seconds.get("total", 0.0))
    summary = summarise(results, cell_config(cfg, Cell("dpo_ln", b.seeds[0])).train)
    summary["failed"] = failed
    report = publish(with_bucket(cfg, dataset.bucket), dataset, results, summary, pending)
    return GridOutcome(results, pending, failed, summary, report)


def main(cfg: Config, args: argparse.Namespace | None = None) -> int:
    from pipelines.bench.alignment.analysis import TABLE_METRICS, plain_findings
    from pipelines.bench.alignment.dataset import build_dataset
    from pipelines.bench.alignment.grid import ROW_BY_NAME

    cfg = apply_args(cfg, args)
    b = cfg.bench_alignment
    t0 = time.monotonic()
    say(f"alignment bench: {b.conversations} conversations, world seed "
        f"{b.world_seed or cfg.policy.seed}, seeds {b.seeds}, budget {b.budget_minutes:.0f} min")
    dataset = build_dataset(cfg)
    outcome = run_grid(cfg, dataset, rows=getattr(args, "rows", None),
                       report_only=bool(getattr(args, "report_only", False)), started=t0)
    summary, meta, pending = outcome.summary, outcome.report, outcome.pending
    headers = ["row", "seeds", *TABLE_METRICS]
    lines = []
    for name, row in summary["rows"].items():
        cells_txt = [fmt(row["mean"][m], ".3f") + (f"±{row['sd'][m]:.3f}" if row["sd"][m]
                                                   is not None else "") for m in TABLE_METRICS]
        lines.append([ROW_BY_NAME[name].label, str(len(row["seeds"])), *cells_txt])
    text = "\n".join([table(headers, lines), "", *plain_findings(summary),
                      "", f"report: {meta['report']} (MLflow run {meta['mlflow_run_id']})",
                      f"not run yet: {', '.join(pending)}" if pending else "every cell ran",
                      *(f"FAILED {name}: {error}" for name, error in outcome.failed.items())])
    figures = {"bench": "alignment", "baseline": "champion (no training)",
               "dataset": dataset.to_dict(), "cells_done": len(outcome.results),
               "pending": pending, "seconds": round(time.monotonic() - t0, 1), "report": meta,
               **summary}
    emit(text, figures)
    return 1 if outcome.failed else 0


__all__ = ["GridOutcome", "apply_args", "main", "run_grid"]
