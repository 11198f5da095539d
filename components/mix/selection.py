"""Which pairs enter the training mix: the filters, on a DataFrame (pure: no services).

The frame has one row per candidate pair with its point-in-time features (Feast's
``get_historical_features`` with full feature names: ``pair_features__type``, ...). Filters, in
order, each with the reject code it records:

1. ``consent_withdrawn`` — the user's CURRENT consent (the registry, when the mix is built) is
   not granted. Never the point-in-time value: a withdrawal dated after the pair still removes it.
2. ``no_features`` — the pair has no pair_features row at its time (never materialised, erased).
3. ``off_policy`` — the serving model version is not the one being trained (``mix.on_policy``).
4. ``below_margin`` — judge margin below ``mix.min_judge_margin``.
5. ``user_cap`` — more than ``mix.max_pairs_per_user`` pairs of one user: the kept ones are those
   with the smallest sha256(seed, pair id) (deterministic, independent of order).
6. ``balance`` — the timing share (interruption + silence) is pulled to ``mix.timing_fraction``
   ± ``mix.tolerance`` by dropping pairs of the over-represented side, again by hash.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from components.common.config import MixConfig

TIMING_TYPES = ("interruption", "silence")
CODES = ("consent_withdrawn", "no_features", "off_policy", "below_margin", "user_cap", "balance")

TYPE = "pair_features__type"
MARGIN = "pair_features__judge_margin"
SERVING = "pair_features__serving_model_version"


def pair_rank(seed: int, purpose: str, pair_id: str) -> int:
    """Deterministic order of pairs for downsampling (smallest first is kept)."""
    return int.from_bytes(hashlib.sha256(f"{purpose}:{seed}:{pair_id}".encode()).digest()[:8],
                          "big")


@dataclass
class Selection:
    kept: pd.DataFrame
    rejects: list[tuple[str, str, str]] = field(default_factory=list)  # (pair id, code, reason)
    balance: dict[str, Any] = field(default_factory=dict)

    @property
    def excluded(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, code, _ in self.rejects:
            out[code] = out.get(code, 0) + 1
        return out


def timing_share(types: pd.Series) -> float | None:
    return float(types.isin(TIMING_TYPES).mean()) if len(types) else None


def _balance_counts(timing: int, content: int, target: float, tolerance: float
                    ) -> tuple[int, int, str]:
    """Counts (timing, content) to keep so the timing share is within target ± tolerance, by
    dropping from the over-represented side only; with a side empty the share cannot move."""
    total = timing + content
    share = timing / total
    if abs(share - target) <= tolerance + 1e-12:
        return timing, content, "within"

    def closest(ideal: float, other: int, available: int, is_timing: bool) -> int:
        # floor or ceil of the ideal count, whichever lands nearer the target share
        options = {min(max(math.floor(ideal), 0), available), min(math.ceil(ideal), available)}
        share_of = (lambda k: k / (k + other)) if is_timing else (lambda k: other / (k + other))
        return min(sorted(options), key=lambda k: abs(share_of(k) - target) if k + other else 1.0)

    if share > target:
        if content == 0:  # only timing pairs: dropping them all would help no one
            return timing, content, "unreachable"
        return closest(target * content / (1 - target), content, timing, True), content, \
            "timing_downsampled"
    if timing == 0:
        return timing, content, "unreachable"
    return timing, closest(timing * (1 - target) / target, timing, content, False), \
        "content_downsampled"


def select_mix(frame: pd.DataFrame, *, current_consent: dict[str, bool],
               model_version: str | None, mix: MixConfig) -> Selection:
    """Apply the filters of the module docstring to ``frame`` (columns: pair_id,
    user_pseudonym, TYPE, MARGIN, SERVING, ...). ``current_consent``: pseudonym → granted now
    (absent = no consent). ``model_version``: the on-policy version (ignored unless
    ``mix.on_policy``)."""
    rejects: list[tuple[str, str, str]] = []
    df = frame.copy()

    def drop(mask: pd.Series, code: str, reason: Any) -> None:
        nonlocal df
        for _, row in df[mask].iterrows():
            rejects.append((str(row["pair_id"]), code,
                            reason(row) if callable(reason) else str(reason)))
        df = df[~mask]

    granted = df["user_pseudonym"].map(lambda u: bool(current_consent.get(u, False)))
    drop(~granted, "consent_withdrawn", "the consent registry's current state is not granted")
    drop(df[TYPE].isna(), "no_features", "no pair_features row at the pair's time")
    if mix.on_policy:
        drop(df[SERVING] != model_version, "off_policy",
             lambda r: f"served by {r[SERVING]!r}, training {model_version!r}")
    margin = df[MARGIN].astype(float).fillna(0.0)
    drop(margin < mix.min_judge_margin, "below_margin",
         lambda r: f"judge margin {float(r[MARGIN] or 0):.3f} < {mix.min_judge_margin}")

    if mix.max_pairs_per_user > 0 and len(df):
        rank = df["pair_id"].map(lambda p: pair_rank(mix.seed, "user_cap", p))
        order = df.assign(_rank=rank).sort_values(["user_pseudonym", "_rank"])
        position = order.groupby("user_pseudonym").cumcount()
        capped = set(order.loc[position >= mix.max_pairs_per_user, "pair_id"])
        drop(df["pair_id"].isin(capped), "user_cap",
             f"more than {mix.max_pairs_per_user} pairs of this user")

    balance: dict[str, Any] = {"target": mix.timing_fraction, "tolerance": mix.tolerance,
                               "before": timing_share(df[TYPE])}
    if mix.timing_fraction is not None and len(df):
        is_timing = df[TYPE].isin(TIMING_TYPES)
        n_t, n_c = int(is_timing.sum()), int((~is_timing).sum())
        keep_t, keep_c, action = _balance_counts(n_t, n_c, mix.timing_fraction, mix.tolerance)
        balance["action"] = action
        rank = df["pair_id"].map(lambda p: pair_rank(mix.seed, "balance", p))
        over: set[str] = set()
        for side, keep in ((is_timing, keep_t), (~is_timing, keep_c)):
            ranked = df[side].assign(_rank=rank[side]).sort_values("_rank")
            over |= set(ranked["pair_id"].iloc[keep:])
        drop(df["pair_id"].isin(over), "balance",
             f"downsampled to a timing share of {mix.timing_fraction} ± {mix.tolerance}")
    balance["after"] = timing_share(df[TYPE])
    return Selection(kept=df, rejects=rejects, balance=balance)
