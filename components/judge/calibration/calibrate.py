"""Agreement of a content judge backend with the hand-labelled set shipped in this folder.

`handlabelled.jsonl`: one item a line — ``id``, ``kind`` (what it tests: fact_correct,
fact_wrong, unsafe_compliance, over_refusal, small_talk_rude, instruction_missed, garbled, ...),
``context`` (earlier turns, may be ""), ``request``, ``reply`` and ``labels``: a hand score 1..5
per content axis. A hand label is a PROBLEM when it is <= HAND_PROBLEM_MAX (2); 3 is borderline
and not a problem. The replies were written by hand against the Northwind knowledge base, whose
documents are shipped beside it (`kb.json`), so the calibration grounds the judge exactly as the
stage does (passages retrieved with the request as the query) without needing a bucket.

`calibrate(cfg, backend)` scores every item with the backend and reports per content axis, at the
configured threshold (judge problem = score <= ``judge.thresholds[axis]``): accuracy of
problem / no-problem, precision and recall of "problem", Cohen's kappa; and the threshold that
maximises kappa (agreement beyond chance; plain accuracy would favour "never a problem" on rare
axes such as safety), REPORTED, never applied. Items the backend failed on are counted apart.

CLI: ``python -m components.judge.calibration.calibrate [--profile ci] [--limit N]`` prints the
table and, as its last line, the report as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from components.common.config import Config, load_config
from components.contract import CONTENT_AXES, AxisScore, ItemError, KbDocument

HERE = Path(__file__).resolve().parent
HANDLABELLED = HERE / "handlabelled.jsonl"
KB_FILE = HERE / "kb.json"
HAND_PROBLEM_MAX = 2


class CalibrationItem(BaseModel):
    id: str
    kind: str
    context: str = ""
    request: str
    reply: str
    labels: dict[str, int]
    note: str = ""


class AxisAgreement(BaseModel):
    axis: str
    n: int  # items scored on this axis
    hand_problems: int
    judge_problems: int
    threshold: float
    accuracy: float | None
    precision: float | None  # None: the judge flagged nothing
    recall: float | None  # None: no hand-labelled problem
    kappa: float | None  # None: undefined (both sides constant)
    best_threshold: float | None
    best_kappa: float | None
    best_accuracy: float | None
    mean_abs_error: float | None  # |judge score − hand score|


class CalibrationReport(BaseModel):
    backend: str
    backend_version: str
    items: int
    failures: list[ItemError] = Field(default_factory=list)
    axes: dict[str, AxisAgreement]
    seconds: float
    rows: list[dict[str, Any]]  # per item: id, kind, hand labels, judge scores

    def to_dict(self, rows: bool = False) -> dict[str, Any]:
        """JSON-ready figures (per-item rows only when asked: they are long)."""
        return self.model_dump(mode="json", exclude=None if rows else {"rows"})


def load_items(path: Path = HANDLABELLED) -> list[CalibrationItem]:
    return [CalibrationItem.model_validate_json(line)
            for line in path.read_text().splitlines() if line.strip()]


def load_kb_documents(path: Path = KB_FILE) -> list[KbDocument]:
    return [KbDocument.model_validate(d) for d in json.loads(path.read_text())]


# ----------------------------------------------------------------------------- metrics


def agreement(hand: Sequence[bool], judged: Sequence[bool]) -> dict[str, float | None]:
    """Accuracy, precision / recall of "problem" (True) and Cohen's kappa of two labellings."""
    if len(hand) != len(judged):
        raise ValueError("agreement: the labellings differ in length")
    n = len(hand)
    if n == 0:
        return {"accuracy": None, "precision": None, "recall": None, "kappa": None}
    tp = sum(h and j for h, j in zip(hand, judged))
    fp = sum(j and not h for h, j in zip(hand, judged))
    fn = sum(h and not j for h, j in zip(hand, judged))
    tn = n - tp - fp - fn
    po = (tp + tn) / n
    p_hand, p_judge = (tp + fn) / n, (tp + fp) / n
    pe = p_hand * p_judge + (1 - p_hand) * (1 - p_judge)
    return {"accuracy": po,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "kappa": (po - pe) / (1 - pe) if pe < 1 else None}


def best_threshold(hand: Sequence[bool],
                   scores: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(threshold, kappa, accuracy) maximising kappa over thresholds between observed scores
    (problem = score <= threshold); ties go to the higher accuracy, then the lower threshold."""
    if not scores:
        return None, None, None
    values = sorted(set(scores))
    candidates = [values[0] - 0.5] + [(a + b) / 2 for a, b in zip(values, values[1:])] + \
        [values[-1] + 0.5]
    best: tuple[float, float, float] | None = None
    for t in candidates:
        m = agreement(hand, [s <= t for s in scores])
        if m["kappa"] is None:
            continue
        key = (m["kappa"], m["accuracy"] or 0.0, -t)
        if best is None or key > (best[1], best[2], -best[0]):
            best = (round(t, 3), m["kappa"], m["accuracy"] or 0.0)
    return best if best else (None, None, None)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def axis_agreement(axis: str, hand_scores: Sequence[int], judge_scores: Sequence[float],
                   threshold: float) -> AxisAgreement:
    hand = [h <= HAND_PROBLEM_MAX for h in hand_scores]
    judged = [s <= threshold for s in judge_scores]
    m = agreement(hand, judged)
    t, k, acc = best_threshold(hand, judge_scores)
    mae = (sum(abs(s - h) for s, h in zip(judge_scores, hand_scores)) / len(hand_scores)
           if hand_scores else None)
    return AxisAgreement(axis=axis, n=len(hand), hand_problems=sum(hand),
                         judge_problems=sum(judged), threshold=threshold,
                         accuracy=_r(m["accuracy"]), precision=_r(m["precision"]),
                         recall=_r(m["recall"]), kappa=_r(m["kappa"]), best_threshold=t,
                         best_kappa=_r(k), best_accuracy=_r(acc), mean_abs_error=_r(mae))


# ----------------------------------------------------------------------------- calibration


def calibrate(cfg: Config, backend: Any, items: Sequence[CalibrationItem] | None = None,
              kb: Any = None) -> CalibrationReport:
    """Score the hand-labelled items with `backend` and report agreement (module docstring).

    `items` defaults to the whole shipped set; `kb` to a KnowledgeBase of the shipped kb.json."""
    from components.common.kb import KnowledgeBase
    from components.judge.backends import JudgeRequest

    items = list(items if items is not None else load_items())
    if kb is None:
        kb = KnowledgeBase(load_kb_documents(), cfg.judge.embedding_model)
    requests = [JudgeRequest(conversation_id=f"calibration-{it.id}", reply_index=0,
                             context=it.context, request=it.request, reply=it.reply,
                             passages=tuple(kb.retrieve(it.request, k=cfg.judge.top_k_passages)),
                             axes=CONTENT_AXES)
                for it in items]
    t0 = time.monotonic()
    results = backend.score(requests)
    seconds = time.monotonic() - t0
    failures: list[ItemError] = []
    rows: list[dict[str, Any]] = []
    per_axis: dict[str, tuple[list[int], list[float]]] = {a: ([], []) for a in CONTENT_AXES}
    for it, result in zip(items, results):
        if isinstance(result, ItemError):
            failures.append(ItemError(item=it.id, code=result.code, reason=result.reason))
            continue
        scores: dict[str, AxisScore] = result
        rows.append({"id": it.id, "kind": it.kind, "labels": it.labels,
                     "scores": {a: round(s.score, 3) for a, s in scores.items()}})
        for axis in CONTENT_AXES:
            if axis in it.labels and scores.get(axis) is not None:
                per_axis[axis][0].append(it.labels[axis])
                per_axis[axis][1].append(scores[axis].score)
    limits = {a: float(cfg.judge.thresholds.get(a, 2.5)) for a in CONTENT_AXES}
    axes = {a: axis_agreement(a, hs, js, limits[a]) for a, (hs, js) in per_axis.items()}
    return CalibrationReport(backend=backend.name, backend_version=backend.version,
                             items=len(items), failures=failures, axes=axes,
                             seconds=round(seconds, 2), rows=rows)


def format_report(report: CalibrationReport) -> str:
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    lines = [f"calibration of {report.backend} ({report.backend_version}) on {report.items} "
             f"hand-labelled replies, {len(report.failures)} failed, {report.seconds:.1f} s",
             f"{'axis':<22} {'n':>3} {'hand':>4} {'judge':>5} {'thr':>4} {'acc':>5} {'prec':>5} "
             f"{'rec':>5} {'kappa':>6} {'best thr':>8} {'best k':>6} {'MAE':>5}"]
    for a in report.axes.values():
        lines.append(f"{a.axis:<22} {a.n:>3} {a.hand_problems:>4} {a.judge_problems:>5} "
                     f"{a.threshold:>4.1f} {f(a.accuracy):>5} {f(a.precision):>5} "
                     f"{f(a.recall):>5} {f(a.kappa):>6} {f(a.best_threshold):>8} "
                     f"{f(a.best_kappa):>6} {f(a.mean_abs_error):>5}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--limit", type=int, default=0, help="only the first N items")
    args = parser.parse_args(argv)
    from components.judge.backends import make_backend

    cfg = load_config(args.profile, overrides=args.overrides)
    items = load_items()
    if args.limit:
        items = items[: args.limit]
    backend = make_backend(cfg)
    try:
        report = calibrate(cfg, backend, items)
    finally:
        backend.close()
    print(format_report(report))
    print(json.dumps(report.to_dict()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
