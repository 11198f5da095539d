"""calibrate() with the real local backend on a slice of the hand-labelled set: a sane report
whose figures are exactly what its own rows and the configured thresholds give."""

from __future__ import annotations

from components.common.config import load_config
from components.contract import CONTENT_AXES
from components.judge.calibration.calibrate import (
    HAND_PROBLEM_MAX,
    agreement,
    calibrate,
    format_report,
    load_items,
)


def test_calibrate_with_the_local_backend(judge_local_backend):
    cfg = load_config("ci")
    items = load_items()
    # two items keep the test short (4-10 s a reply on 2 busy cores); the whole set is
    # `python -m components.judge.calibration.calibrate`
    wanted = ("fact-unlimited-wrong", "talk-howareyou-ok")
    picked = [it for it in items if it.id in wanted]
    assert len(picked) == 2
    report = calibrate(cfg, judge_local_backend, picked)
    assert report.items == len(picked) and report.backend == judge_local_backend.name
    assert report.backend_version == judge_local_backend.version
    assert len(report.rows) + len(report.failures) == len(picked)
    assert set(report.axes) == set(CONTENT_AXES)
    for axis, a in report.axes.items():
        rows = [r for r in report.rows if axis in r["scores"]]
        assert a.n == len(rows) > 0
        hand = [r["labels"][axis] <= HAND_PROBLEM_MAX for r in rows]
        judged = [r["scores"][axis] <= cfg.judge.thresholds[axis] for r in rows]
        m = agreement(hand, judged)
        assert a.hand_problems == sum(hand) and a.judge_problems == sum(judged)
        assert a.accuracy == round(m["accuracy"], 4)
        assert 0.0 <= a.accuracy <= 1.0
        assert all(1.0 <= r["scores"][axis] <= 5.0 for r in rows)
        if a.best_kappa is not None:
            assert a.best_kappa >= (a.kappa if a.kappa is not None else -1.0)
    text = format_report(report)
    assert all(axis in text for axis in CONTENT_AXES)
    assert "rows" not in report.to_dict() and report.to_dict(rows=True)["rows"]
