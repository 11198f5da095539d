"""The selection rule: the first problematic reply plus at most N more, failures never chosen."""

from __future__ import annotations

from components.contract import AxisScore
from components.judge.logic import Selection, judge_key, problems_of, thresholds
from components.common.config import load_config


def run(offers, max_extra=1, stop=True):
    sel = Selection(max_extra, stop)
    stopped_after = None
    chosen = []
    for index, problems, failed in offers:
        if stopped_after is not None:
            break
        if sel.offer(index, problems, failed):
            chosen.append(index)
        if sel.stop:
            stopped_after = index
    return chosen, stopped_after


def test_first_problem_plus_one_more_then_stop():
    offers = [(1, [], False), (2, ["tone"], False), (3, [], False), (4, ["interruption"], False),
              (5, ["safety"], False)]
    assert run(offers) == ([2, 4], 4)
    assert run(offers, max_extra=0) == ([2], 2)
    assert run(offers, max_extra=5) == ([2, 4, 5], None)  # never full: judged to the end


def test_without_stopping_the_selection_is_still_capped():
    offers = [(1, ["tone"], False), (2, ["safety"], False), (3, ["tone"], False)]
    assert run(offers, max_extra=1, stop=False) == ([1, 2], None)


def test_a_failed_reply_is_never_selected():
    offers = [(1, ["interruption"], True), (2, [], False), (3, ["tone"], False)]
    assert run(offers, max_extra=0) == ([3], 3)


def test_problems_at_or_below_threshold():
    cfg = load_config("ci")
    limits = thresholds(cfg)
    scores = {"tone": AxisScore(score=2.5, rationale=""), "safety": AxisScore(score=2.51, rationale=""),
              "helpfulness": None, "interruption": AxisScore(score=1, rationale="")}
    assert problems_of(scores, limits) == ["tone", "interruption"]


def test_judge_key_changes_with_settings_and_backend():
    cfg = load_config("ci")
    k = judge_key(cfg, "local-lm:gemma/abc 123")
    assert k.startswith("local-lm-gemma-abc-123-") and "/" not in k and " " not in k
    assert judge_key(cfg, "local-lm:gemma/abc 123") == k
    assert judge_key(cfg, "other") != k
    cfg2 = load_config("ci", overrides=["judge.interruption_tolerance_s=0.3"])
    assert judge_key(cfg2, "local-lm:gemma/abc 123") != k
    cfg3 = load_config("ci", overrides=["judge.thresholds.tone=3.0"])
    assert judge_key(cfg3, "local-lm:gemma/abc 123") != k
