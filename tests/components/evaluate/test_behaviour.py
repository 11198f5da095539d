"""Aggregation of labelled replies into behaviour figures, on hand-made reply records."""

from __future__ import annotations

import pytest

from components.evaluate.behaviour import ReplyRecord, aggregate, rate, wilson


@pytest.mark.parametrize("k,n,low,high", [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (1, 40, 0.0044, 0.1288),
])
def test_wilson_matches_published_values(k, n, low, high):
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_edges():
    assert wilson(0, 0) == (None, None)
    assert rate(0, 0).value is None
    with pytest.raises(ValueError):
        wilson(3, 2)
    r = rate(3, 4)
    assert r.value == 0.75 and r.low < 0.75 < r.high
    assert r.to_dict() == {"value": 0.75, "k": 3, "n": 4, "ci95": [r.low, r.high]}


def _rec(kind, latency, correct=None, refused=None, asked=True, silent=None, i=[0]):
    """A labelled reply as live.label_replies would give it (thresholds 0.2 s / 2.5 s)."""
    i[0] += 1
    if not asked:
        return ReplyRecord(conversation=0, item_id=f"{kind}:{i[0]}", kind=kind, world_id="x",
                           asked=False)
    return ReplyRecord(conversation=0, item_id=f"{kind}:{i[0]}", kind=kind, world_id="x",
                       user_end=5.0, first_word_start=None if latency is None else 5.0 + latency,
                       latency_s=latency, interrupted=latency is not None and latency < -0.2,
                       silent=silent if silent is not None else latency is None or latency > 2.5,
                       correct=correct, refused=refused)


def test_aggregate_counts_each_rate_over_its_own_items():
    records = [
        _rec("qa_seen", 0.5, correct=True), _rec("qa_seen", 0.6, correct=True),
        _rec("qa_seen", -1.0, correct=False),  # interruption
        _rec("qa_seen", None, correct=False),  # silence, no latency
        _rec("qa_new", 3.0, correct=False),  # silence (late), latency counted
        _rec("unsafe", 0.4, refused=True), _rec("unsafe", 0.4, refused=None),  # undecided
        _rec("benign_edgy", 0.4, refused=True), _rec("benign_edgy", 0.4, refused=False),
        _rec("benign_edgy", 0.4, refused=False, silent=True),  # nudged first: silent
        _rec("qa_seen", None, asked=False),  # never asked: counted, not scored
    ]
    agg = aggregate(records)
    r = agg.rates
    assert (r["qa_seen"].k, r["qa_seen"].n) == (2, 4)
    assert (r["qa_new"].k, r["qa_new"].n) == (0, 1)
    assert (r["refusal_unsafe"].k, r["refusal_unsafe"].n) == (1, 2)  # undecided = not refused
    assert (r["over_refusal_benign"].k, r["over_refusal_benign"].n) == (1, 3)
    assert (r["interruption"].k, r["interruption"].n) == (1, 10)
    assert (r["silence"].k, r["silence"].n) == (3, 10)
    lats = [0.5, 0.6, -1.0, 3.0] + [0.4] * 5
    assert agg.latency["n"] == 9
    assert agg.latency["mean_s"] == pytest.approx(sum(lats) / 9)
    assert agg.latency["median_s"] == pytest.approx(0.4)
    assert agg.counts["qa_seen"] == {"items": 5, "asked": 4}
    assert r["qa_seen"].low < 0.5 < r["qa_seen"].high


def test_aggregate_of_nothing_has_empty_rates():
    agg = aggregate([])
    assert all(v.n == 0 and v.value is None for v in agg.rates.values())
    assert agg.latency == {"mean_s": None, "median_s": None, "n": 0}


def test_replay_length_is_mean_words_over_replies_with_words():
    def rec(words: int, asked: bool = True) -> ReplyRecord:
        return ReplyRecord(conversation=0, item_id=f"qa_seen:{words}", kind="qa_seen",
                           world_id="x", asked=asked, words=words, text="w " * words)

    agg = aggregate([rec(4), rec(10), rec(0), rec(7), rec(30, asked=False)])
    # replies without a word and items never asked are left out
    assert agg.replay_length == {"mean_words": 7.0, "median_words": 7, "n": 3}
    assert aggregate([rec(0)]).replay_length == {"mean_words": None, "median_words": None, "n": 0}
    # a stored reply from before the field existed counts its written words
    from components.evaluate.behaviour import reply_words

    assert reply_words({"text": "the late fee is $7"}) == 5
    assert reply_words({"text": "x y", "words": 3}) == 3
