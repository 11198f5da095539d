"""Feature rows from contract objects and content addressing of parts (no services)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from components.common.consent import ConsentRecord
from components.common.featurestore.definitions import (
    CONVERSATION_STATS,
    EVENT_TIMESTAMP,
    build_definitions,
)
from components.common.featurestore.store import arrow_schema, rows_digest
from components.contract import AxisScore, ConversationJudgement, ReplyJudgement, Turn
from components.features.rows import (
    consent_rows,
    conversation_stats_row,
    judge_margin,
    overlap_seconds,
)

T0 = datetime(2026, 11, 1, 10, tzinfo=timezone.utc)


def _turn(side, i, start, end):
    return Turn(side=side, index=i, start=start, end=end, text="x", first_word=0, last_word=1)


def _reply(i, user_turn, model_turn, start, user_end, scores):
    return ReplyJudgement(index=i, user_turn=user_turn, model_turn=model_turn, request="q",
                          text="a", start=start, end=start + 1, user_end=user_end,
                          next_user_start=None, judged=True,
                          scores={a: (AxisScore(score=s, rationale="r") if s else None)
                                  for a, s in scores.items()})


def test_conversation_stats_row():
    judgement = ConversationJudgement(
        conversation_id="c", model_version="m", backend="b", backend_version="v",
        user_turns=[_turn("user", 0, 0.0, 2.0), _turn("user", 1, 5.0, 7.0)],
        model_turns=[_turn("model", 0, 1.5, 3.0), _turn("model", 1, 7.5, 9.0)],
        replies=[_reply(0, 0, 0, 1.5, 2.0, {"helpfulness": 2.0, "safety": 5.0}),
                 _reply(1, 1, 1, 7.5, 7.0, {"helpfulness": 4.0, "safety": None}),
                 _reply(2, 1, None, 7.0, 7.0, {})],  # no reply: not a latency
        events=[])
    row = conversation_stats_row("c", "p-1", T0, 12.0, judgement)
    assert row[EVENT_TIMESTAMP] == T0 + timedelta(seconds=12)
    assert row["user_turns"] == 2 and row["model_turns"] == 2
    assert row["overlap_s"] == pytest.approx(0.5)  # model started 0.5 s before the user's end
    assert row["response_latency_s"] == pytest.approx((-0.5 + 0.5) / 2)
    assert row["score_helpfulness"] == pytest.approx(3.0)
    assert row["score_safety"] == pytest.approx(5.0)
    assert row["score_tone"] is None
    assert row["user_pseudonym"] == "p-1"


def test_overlap_and_margin():
    assert overlap_seconds([_turn("user", 0, 0, 1)], [_turn("model", 0, 2, 3)]) == 0.0

    class P:  # the two fields judge_margin reads
        problems = ["factual_accuracy", "helpfulness"]
        scores = {"factual_accuracy": 1.0, "helpfulness": 2.0, "safety": 1.0}

    assert judge_margin(P(), {"factual_accuracy": 2.5, "helpfulness": 2.5}) == pytest.approx(1.5)
    P.scores = {"factual_accuracy": None, "helpfulness": 3.0}
    assert judge_margin(P(), {}) == 0.0


def test_consent_rows_keep_the_registry_history():
    history = [ConsentRecord("p-1", True, T0, "app"),
               ConsentRecord("p-1", False, T0 + timedelta(days=3), "app")]
    rows = consent_rows(history)
    assert [(r["granted"], r[EVENT_TIMESTAMP]) for r in rows] == \
        [(True, T0), (False, T0 + timedelta(days=3))]


def test_rows_digest_ignores_created_and_order():
    base = {"conversation_id": "c", EVENT_TIMESTAMP: T0, "duration_s": 1.0, "user_turns": 1,
            "model_turns": 1, "overlap_s": 0.0, "response_latency_s": None,
            "user_pseudonym": "p", **{f"score_{a}": None for a in (
                "helpfulness", "safety", "factual_accuracy", "instruction_following", "tone",
                "interruption", "unresponsiveness")}}
    a = pd.DataFrame([base, {**base, "conversation_id": "d"}]).assign(created=T0)
    b = a.iloc[::-1].assign(created=T0 + timedelta(hours=1))
    assert rows_digest(CONVERSATION_STATS, a) == rows_digest(CONVERSATION_STATS, b)
    c = a.assign(duration_s=2.0)
    assert rows_digest(CONVERSATION_STATS, a) != rows_digest(CONVERSATION_STATS, c)
    assert set(arrow_schema(CONVERSATION_STATS).names) >= set(base)


def test_definitions_read_each_view_from_its_folder():
    defs = build_definitions("s3://bucket/features", "http://127.0.0.1:8333")
    assert sorted(defs.views) == ["conversation_stats", "pair_features", "user_consent"]
    assert defs.sources["pair_features"].path == "s3://bucket/features/pair_features/"
    assert defs.views["conversation_stats"].entities == ["conversation"]
    assert len([f for f in defs.views["conversation_stats"].features
                if f.name.startswith("score_")]) == 7
