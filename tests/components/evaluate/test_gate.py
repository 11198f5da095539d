"""The promotion gate's decision as a table of cases, on hand-made paired reports: a clean pass,
too few items, a target not beyond its interval, a regression beyond tolerance, the same model
twice, replay-length growth, and reports made on different items."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from components.common.config import GateConfig
from components.evaluate.gate import (
    METRICS,
    GateDecision,
    NotPaired,
    decide,
    direction,
    intervals,
    paired_values,
)

KINDS = ("qa_seen", "qa_new", "unsafe", "benign_edgy")
LABEL = {"qa_seen": "correct", "qa_new": "correct", "unsafe": "refused", "benign_edgy": "refused"}


def _report(version: str, n: int = 40, *, hits: dict[str, int] | None = None,
            interrupted: int | Callable[[str, int], bool] = 0, silent: int = 0, words: int = 10,
            fingerprint: str = "items-a") -> dict[str, Any]:
    """A behaviour report (as stored) with ``n`` items per kind: the first ``hits[kind]`` items of
    a kind carry its label, the first ``interrupted`` / ``silent`` items of EVERY kind the
    timing flag (or ``interrupted(kind, i)`` says); every reply has ``words`` words."""
    flag = interrupted if callable(interrupted) else (lambda kind, i: i < interrupted)
    hits = {"qa_seen": n // 2, "qa_new": n // 4, "unsafe": n // 2, "benign_edgy": n // 4,
            **(hits or {})}
    replies = []
    for kind in KINDS:
        for i in range(n):
            replies.append({"item_id": f"{kind}:{i}", "kind": kind, "asked": True,
                            LABEL[kind]: i < hits[kind], "interrupted": flag(kind, i),
                            "silent": i < silent, "words": words, "text": "w " * words})
    return {"model_version": version, "weights_sha256": version * 4, "cache_key": "k",
            "mlflow_run_id": None, "items_fingerprint": fingerprint, "replies": replies}


GATE = GateConfig(min_items=30, bootstrap_samples=500)  # targets: interruption, silence
CHAMPION = _report("champ", interrupted=12, silent=14)

CASES = [
    # name, challenger, gate, verdict, {metric: status}
    ("clean pass", _report("chall", interrupted=1, silent=2), GATE, "promote",
     {"interruption": "improved", "silence": "improved", "qa_seen": "within_tolerance"}),
    ("too few items", _report("chall", n=10, interrupted=1, silent=2),
     GATE, "insufficient", {"qa_seen": "insufficient", "refusal_unsafe": "insufficient",
                            "interruption": "improved"}),  # timing: 4 kinds x 10 items = 40
    # better on 4 items, worse on 2 (the champion interrupts items 0-11 of every kind)
    ("target not beyond the interval",
     _report("chall", silent=2, interrupted=lambda kind, i: 1 <= i < (13 if kind in (
         "qa_seen", "unsafe") else 12)), GATE, "reject",
     {"interruption": "not_improved", "silence": "improved"}),
    ("regression beyond tolerance", _report("chall", interrupted=1, silent=2,
                                            hits={"qa_seen": 8}), GATE, "reject",
     {"interruption": "improved", "qa_seen": "regressed"}),
    ("same model twice", CHAMPION, GATE, "reject",
     {"interruption": "not_improved", "qa_seen": "within_tolerance"}),
    ("replay length grows past tolerance", _report("chall", interrupted=1, silent=2, words=40),
     GATE, "reject", {"replay_length": "regressed", "interruption": "improved"}),
    ("replay length grows within tolerance", _report("chall", interrupted=1, silent=2, words=25),
     GATE, "promote", {"replay_length": "within_tolerance"}),
    ("a loose tolerance lets a small drop through",
     _report("chall", interrupted=1, silent=2, hits={"qa_seen": 16}),
     GATE.model_copy(update={"tolerances": {**GATE.tolerances, "qa_seen": 0.5}}), "promote",
     {"qa_seen": "within_tolerance"}),
    ("no targets configured", _report("chall", interrupted=1, silent=2),
     GATE.model_copy(update={"targets": []}), "reject", {"interruption": "within_tolerance"}),
    ("min_items lowered for a small set", _report("chall", n=10, interrupted=0, silent=0),
     GATE.model_copy(update={"min_items": 5}), "promote", {"qa_seen": "within_tolerance"}),
]


@pytest.mark.parametrize("name,challenger,gate,verdict,statuses", CASES, ids=[c[0] for c in CASES])
def test_gate_decision_table(name, challenger, gate, verdict, statuses) -> None:
    champion = CHAMPION if challenger["replies"].__len__() == len(CHAMPION["replies"]) else (
        _report("champ", n=len(challenger["replies"]) // len(KINDS), interrupted=3, silent=4))
    decision = decide(champion, challenger, gate)
    assert decision.verdict == verdict, decision.summary_lines()
    for metric, status in statuses.items():
        assert decision.metrics[metric].status == status, (metric, decision.summary_lines())
    assert decision.reasons and all(decision.reasons)
    # the record names its inputs and thresholds
    record = decision.to_dict()
    assert record["champion"]["model_version"] == "champ"
    assert record["challenger"]["model_version"] == challenger["model_version"]
    assert record["thresholds"]["min_items"] == gate.min_items
    assert set(record["metrics"]) == set(METRICS)
    assert GateDecision.from_dict(record) == decision


def test_reasons_name_the_metric_and_the_numbers() -> None:
    d = decide(CHAMPION, _report("chall", interrupted=1, silent=2, hits={"qa_seen": 8}), GATE)
    assert any(r.startswith("qa_seen regressed") and "tolerance 0.05" in r for r in d.reasons)
    short = decide(_report("champ", n=10), _report("chall", n=10), GATE)
    assert any("10 paired items < gate.min_items 30" in r for r in short.reasons)


def test_a_regression_outranks_too_few_items() -> None:
    # qa_new has only 10 items, but qa_seen's clear drop already decides
    champ = _report("champ", interrupted=12, silent=14)
    chall = _report("chall", interrupted=1, silent=2, hits={"qa_seen": 5})
    for r in champ["replies"] + chall["replies"]:
        if r["kind"] == "qa_new" and int(r["item_id"].split(":")[1]) >= 10:
            r["asked"] = False
    d = decide(champ, chall, GATE)
    assert d.metrics["qa_new"].status == "insufficient"
    assert d.verdict == "reject" and d.metrics["qa_seen"].status == "regressed"


def test_intervals_are_paired_seeded_and_cover_the_observed_difference() -> None:
    chall = _report("chall", interrupted=6, silent=14)
    a = intervals(CHAMPION, chall, GATE)
    b = intervals(CHAMPION, chall, GATE)
    assert a == b  # seeded
    iv = a["interruption"]
    assert iv.n == 4 * 40 and iv.delta == pytest.approx((6 - 12) / 40)
    assert iv.low <= iv.delta <= iv.high < 0
    assert a["silence"].delta == 0.0 and a["silence"].low == a["silence"].high == 0.0
    # paired: identical per-item values give a zero-width interval however noisy the rate is
    same = intervals(CHAMPION, CHAMPION, GATE)
    assert all(v.low == v.high == 0.0 for v in same.values())
    # another seed, another (but similar) interval
    other = intervals(CHAMPION, chall, GATE.model_copy(update={"seed": 8}))["interruption"]
    assert other.delta == iv.delta and abs(other.low - iv.low) < 0.03


def test_paired_values_use_items_scored_in_both() -> None:
    champ = _report("champ", n=4)
    chall = _report("chall", n=4, words=20)
    champ["replies"][0]["asked"] = False  # qa_seen:0 not asked by the champion's user
    chall["replies"][1]["words"] = 0  # qa_seen:1: the challenger said nothing
    ids, a, b = paired_values(champ, chall, "qa_seen")
    assert ids == ["qa_seen:1", "qa_seen:2", "qa_seen:3"]
    ids, a, b = paired_values(champ, chall, "replay_length")
    assert "qa_seen:0" not in ids and "qa_seen:1" not in ids and len(ids) == 4 * 4 - 2
    assert set(a) == {10.0} and set(b) == {20.0}
    iv = intervals(champ, chall, GATE)["replay_length"]
    assert iv.delta == pytest.approx(1.0)  # twice as long: +100% growth
    assert len(paired_values(champ, chall, "interruption")[0]) == 15


def test_reports_on_different_items_are_refused() -> None:
    with pytest.raises(NotPaired, match="different items"):
        decide(CHAMPION, _report("chall", fingerprint="items-b"), GATE)
    with pytest.raises(ValueError, match="unknown gate metric"):
        decide(CHAMPION, CHAMPION, GATE.model_copy(update={"targets": ["qa_old"]}))
    assert direction("qa_seen") == 1 and direction("replay_length") == -1
