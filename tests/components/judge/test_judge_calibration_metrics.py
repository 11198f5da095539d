"""Agreement metrics of the calibration report on hand-computed examples, and the shipped set."""

from __future__ import annotations

import pytest

from components.contract import CONTENT_AXES
from components.judge.calibration.calibrate import (
    HAND_PROBLEM_MAX,
    agreement,
    axis_agreement,
    best_threshold,
    load_items,
    load_kb_documents,
)


def test_agreement_by_hand():
    # tp=1 fp=1 fn=1 tn=2: accuracy 3/5; p_hand = p_judge = 0.4 -> pe = 0.16 + 0.36 = 0.52;
    # kappa = (0.6 - 0.52) / 0.48 = 1/6.
    m = agreement([True, True, False, False, False], [True, False, True, False, False])
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["kappa"] == pytest.approx(1 / 6)


def test_agreement_edge_cases():
    perfect = agreement([True, False], [True, False])
    assert perfect["kappa"] == pytest.approx(1.0) and perfect["accuracy"] == 1.0
    nothing_flagged = agreement([True, False, False], [False, False, False])
    assert nothing_flagged["precision"] is None and nothing_flagged["recall"] == 0.0
    constant = agreement([False, False], [False, False])  # both sides constant: kappa undefined
    assert constant["kappa"] is None and constant["recall"] is None
    assert agreement([], [])["accuracy"] is None
    with pytest.raises(ValueError):
        agreement([True], [])


def test_best_threshold_by_hand():
    # thresholds 0.5/1.5/2.5/4/5.5 give kappa 0/0.5/0/0.5/0; 1.5 and 4 tie on kappa and accuracy
    # (0.75): the lower one wins.
    t, k, acc = best_threshold([True, True, False, False], [1, 3, 2, 5])
    assert t == 1.5 and k == pytest.approx(0.5) and acc == pytest.approx(0.75)


def test_axis_agreement_uses_hand_problem_max_and_threshold():
    a = axis_agreement("tone", [1, 2, 3, 5], [1.2, 3.0, 2.0, 4.8], threshold=2.5)
    # hand problems: 1 and 2 (<= 2); judge problems: 1.2 and 2.0 (<= 2.5)
    assert HAND_PROBLEM_MAX == 2
    assert (a.hand_problems, a.judge_problems, a.n) == (2, 2, 4)
    assert a.accuracy == pytest.approx(0.5) and a.kappa == pytest.approx(0.0)
    assert a.mean_abs_error == pytest.approx((0.2 + 1.0 + 1.0 + 0.2) / 4)
    assert a.best_threshold == 1.6 and a.best_kappa == pytest.approx(0.5)


def test_shipped_set_is_well_formed():
    items = load_items()
    assert 40 <= len(items) <= 60
    assert len({it.id for it in items}) == len(items)
    kinds = {it.kind for it in items}
    for needed in ("fact_correct", "fact_wrong", "unsafe_compliance", "unsafe_refusal",
                   "over_refusal", "small_talk_rude", "instruction_missed", "garbled"):
        assert needed in kinds
    for it in items:
        assert set(it.labels) == set(CONTENT_AXES)
        assert all(1 <= v <= 5 for v in it.labels.values())
        assert it.request.strip() and it.reply.strip()
    # every content axis has hand-labelled problems and non-problems
    for axis in CONTENT_AXES:
        flags = [it.labels[axis] <= HAND_PROBLEM_MAX for it in items]
        assert any(flags) and not all(flags), axis
    assert len(load_kb_documents()) >= 5
