"""Feature rows from the contract's objects (pure: no services).

* ``conversation_stats_row``: one row per judged conversation, from its ``JudgedItem`` (start,
  duration, pseudonym) and ``ConversationJudgement`` (turns, replies and their scores).
* ``pair_features_row``: one row per preference pair of the dataset.
* ``consent_rows``: the consent registry's history of a user, one row per change.

Event time of a conversation and of its pairs: the conversation's end (started_at +
duration_s) — when everything the features describe had happened.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from components.common.consent import ConsentRecord
from components.common.featurestore.definitions import EVENT_TIMESTAMP
from components.contract import (
    JUDGE_AXES,
    ConversationJudgement,
    PairSide,
    PreferencePair,
    Turn,
)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def conversation_end(started_at: datetime, duration_s: float) -> datetime:
    return _utc(started_at) + timedelta(seconds=float(duration_s))


def _mean(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def overlap_seconds(user_turns: list[Turn], model_turns: list[Turn]) -> float:
    """Seconds during which a user turn and a model turn both ran (summed over turn pairs)."""
    total = 0.0
    for u in user_turns:
        for m in model_turns:
            total += max(0.0, min(u.end, m.end) - max(u.start, m.start))
    return round(total, 6)


def conversation_stats_row(conversation_id: str, user_pseudonym: str, started_at: datetime,
                           duration_s: float, judgement: ConversationJudgement) -> dict[str, Any]:
    latencies = [r.start - r.user_end for r in judgement.replies
                 if r.model_turn is not None and r.user_end is not None]
    row: dict[str, Any] = {
        "conversation_id": conversation_id,
        EVENT_TIMESTAMP: conversation_end(started_at, duration_s),
        "duration_s": float(duration_s),
        "user_turns": len(judgement.user_turns),
        "model_turns": len(judgement.model_turns),
        "overlap_s": overlap_seconds(judgement.user_turns, judgement.model_turns),
        "response_latency_s": _mean(latencies),
        "user_pseudonym": user_pseudonym,
    }
    for axis in JUDGE_AXES:
        row[f"score_{axis}"] = _mean(
            r.scores[axis].score for r in judgement.replies  # type: ignore[union-attr]
            if r.scores.get(axis) is not None)
    return row


def judge_margin(pair: PreferencePair, thresholds: dict[str, float]) -> float:
    """How far below its threshold the rejected reply scored on the axes the chosen side fixes
    (the largest such gap; 0 when none of them was scored or none is below)."""
    gaps = [thresholds.get(axis, 2.5) - score for axis in pair.problems
            if (score := pair.scores.get(axis)) is not None]
    return round(max([0.0, *gaps]), 6)


def _side(side: PairSide) -> tuple[int, float]:
    return len(side.words) or len(side.text.split()), round(max(0.0, side.end - side.start), 6)


def pair_features_row(pair: PreferencePair, event_timestamp: datetime,
                      thresholds: dict[str, float]) -> dict[str, Any]:
    chosen_words, chosen_s = _side(pair.chosen)
    rejected_words, rejected_s = _side(pair.rejected)
    return {
        "pair_id": pair.pair_id,
        EVENT_TIMESTAMP: _utc(event_timestamp),
        "type": pair.type,
        "judge_margin": judge_margin(pair, thresholds),
        "chosen_words": chosen_words,
        "rejected_words": rejected_words,
        "chosen_duration_s": chosen_s,
        "rejected_duration_s": rejected_s,
        "serving_model_version": pair.serving_model_version,
        "user_pseudonym": pair.user_pseudonym,
        "conversation_id": pair.conversation_id,
    }


def consent_rows(history: Iterable[ConsentRecord]) -> list[dict[str, Any]]:
    """The registry's history of a user as user_consent rows (event time = changed_at)."""
    return [{"user_pseudonym": r.user_id, EVENT_TIMESTAMP: _utc(r.changed_at),
             "granted": bool(r.granted), "changed_at": _utc(r.changed_at)} for r in history]
