"""The mix filters on DataFrames (no services): consent, on-policy, margin, user cap, balance."""

from __future__ import annotations

import pandas as pd
import pytest

from components.common.config import MixConfig
from components.mix.selection import MARGIN, SERVING, TYPE, select_mix, timing_share


def _frame(specs: list[tuple[str, str, str, float, str]]) -> pd.DataFrame:
    """(pair id, user, type, margin, serving version) per row."""
    return pd.DataFrame([{"pair_id": p, "user_pseudonym": u, "conversation_id": f"c-{p}",
                          TYPE: t, MARGIN: m, SERVING: v,
                          "user_consent__granted": True} for p, u, t, m, v in specs])


def _mix(**kw) -> MixConfig:
    base = {"timing_fraction": None, "on_policy": True}
    return MixConfig(**{**base, **kw})


V1 = "duplexalign-moshi/1"


def _codes(selection) -> dict[str, str]:
    return {p: code for p, code, _ in selection.rejects}


def test_current_consent_wins_over_the_point_in_time_value():
    frame = _frame([("a", "u1", "content", 1.0, V1), ("b", "u2", "content", 1.0, V1),
                    ("c", "u3", "content", 1.0, V1)])
    # u1 withdrew later (the frame's point-in-time value still says granted); u3 is unknown
    sel = select_mix(frame, current_consent={"u1": False, "u2": True}, model_version=V1,
                     mix=_mix())
    assert list(sel.kept["pair_id"]) == ["b"]
    assert _codes(sel) == {"a": "consent_withdrawn", "c": "consent_withdrawn"}
    assert frame.loc[0, "user_consent__granted"]


def test_on_policy_keeps_only_the_trained_version():
    frame = _frame([("a", "u", "content", 1.0, V1), ("b", "u", "content", 1.0, "scripted-v0")])
    sel = select_mix(frame, current_consent={"u": True}, model_version=V1, mix=_mix())
    assert list(sel.kept["pair_id"]) == ["a"] and _codes(sel) == {"b": "off_policy"}
    assert "scripted-v0" in sel.rejects[0][2]
    off = select_mix(frame, current_consent={"u": True}, model_version=V1,
                     mix=_mix(on_policy=False))
    assert len(off.kept) == 2 and not off.rejects


def test_min_judge_margin():
    frame = _frame([("a", "u", "content", 0.2, V1), ("b", "u", "content", 0.5, V1),
                    ("c", "u", "silence", float("nan"), V1)])
    sel = select_mix(frame, current_consent={"u": True}, model_version=V1,
                     mix=_mix(min_judge_margin=0.5))
    assert list(sel.kept["pair_id"]) == ["b"]
    assert _codes(sel) == {"a": "below_margin", "c": "below_margin"}
    assert sel.excluded == {"below_margin": 2}


def test_no_features_is_its_own_reason():
    frame = _frame([("a", "u", "content", 1.0, V1), ("b", "u", None, None, None)])
    sel = select_mix(frame, current_consent={"u": True}, model_version=V1, mix=_mix())
    assert _codes(sel) == {"b": "no_features"}


def test_user_cap_is_deterministic_and_order_independent():
    specs = [(f"p{i}", "heavy", "content", 1.0, V1) for i in range(7)] + \
            [("q0", "light", "content", 1.0, V1)]
    frame = _frame(specs)
    mix = _mix(max_pairs_per_user=3)
    sel = select_mix(frame, current_consent={"heavy": True, "light": True}, model_version=V1,
                     mix=mix)
    kept = set(sel.kept["pair_id"])
    assert len(kept & {f"p{i}" for i in range(7)}) == 3 and "q0" in kept
    assert set(_codes(sel).values()) == {"user_cap"} and len(sel.rejects) == 4
    shuffled = select_mix(frame.sample(frac=1, random_state=3), current_consent={
        "heavy": True, "light": True}, model_version=V1, mix=mix)
    assert set(shuffled.kept["pair_id"]) == kept
    other_seed = select_mix(frame, current_consent={"heavy": True, "light": True},
                            model_version=V1, mix=_mix(max_pairs_per_user=3, seed=1))
    assert len(other_seed.kept) == 4


@pytest.mark.parametrize("n_content,n_timing,target,expect_action", [
    (10, 30, 0.27, "timing_downsampled"),   # too much timing: timing pairs dropped
    (40, 2, 0.27, "content_downsampled"),   # too little timing: content pairs dropped
    (73, 27, 0.27, "within"),
    (0, 5, 0.27, "unreachable"),            # nothing to balance against: kept as it is
])
def test_balance_to_the_timing_fraction(n_content, n_timing, target, expect_action):
    specs = [(f"c{i}", f"u{i}", "content", 1.0, V1) for i in range(n_content)] + \
            [(f"t{i}", f"v{i}", "interruption" if i % 2 else "silence", 1.0, V1)
             for i in range(n_timing)]
    frame = _frame(specs)
    consent = {u: True for u in frame["user_pseudonym"]}
    sel = select_mix(frame, current_consent=consent, model_version=V1,
                     mix=_mix(timing_fraction=target, tolerance=0.05))
    assert sel.balance["action"] == expect_action
    share = timing_share(sel.kept[TYPE])
    if expect_action != "unreachable":
        assert abs(share - target) <= 0.05 + 1e-9, share
    else:
        assert len(sel.kept) == n_content + n_timing
    dropped = set(_codes(sel).values())
    assert dropped <= {"balance"}
    if expect_action == "timing_downsampled":
        assert all(p.startswith("t") for p, _, _ in sel.rejects)
        assert (sel.kept[TYPE] == "content").sum() == n_content
    if expect_action == "content_downsampled":
        assert all(p.startswith("c") for p, _, _ in sel.rejects)


def test_balance_comes_after_the_other_filters():
    specs = [(f"c{i}", "u", "content", 1.0, V1) for i in range(6)] + \
            [(f"t{i}", "u", "silence", 1.0, "old") for i in range(6)]
    frame = _frame(specs)
    sel = select_mix(frame, current_consent={"u": True}, model_version=V1,
                     mix=_mix(timing_fraction=0.5, tolerance=0.05))
    # the timing pairs were off-policy: nothing left to balance with, content kept
    assert sel.balance["action"] == "unreachable" and len(sel.kept) == 6
    assert sel.excluded == {"off_policy": 6}
