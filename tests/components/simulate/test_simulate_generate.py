"""Conversation drawing and timing, without storage and with a fast stand-in voice."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from components.common.config import SimulateConfig
from components.simulate import world as W
from components.simulate.generate import (
    ConversationBuilder,
    assign_users,
    config_fingerprint,
    conversation_id,
    user_consents,
)
from components.simulate.groundtruth import PROBLEM_KINDS, GroundTruth
from tests.components.simulate.fakes import ToneSynthesizer

N = 120


def _build(sim: SimulateConfig, index: int, users: list[int] | None = None):
    users = users or assign_users(sim.seed, index + 1, sim.rate_repeat_user)
    builder = ConversationBuilder(sim, ToneSynthesizer("user", 180.0), ToneSynthesizer("model", 260.0))
    return builder.build(seed=sim.seed, index=index, batch="b", fingerprint=config_fingerprint(sim),
                         persona=W.make_persona(sim.seed, users[index]), consent=True)


@pytest.fixture(scope="module")
def corpus() -> list[GroundTruth]:
    sim = SimulateConfig()
    users = assign_users(sim.seed, N, sim.rate_repeat_user)
    return [_build(sim, i, users).groundtruth for i in range(N)]


def test_planted_problem_rates_match_the_config(corpus):
    sim = SimulateConfig()
    replies = [m for g in corpus for m in g.model_turns if m.kind == "reply"]
    counts = Counter(p for m in replies for p in m.problems)
    assert set(counts) == set(PROBLEM_KINDS)  # every judge axis is covered
    for kind in PROBLEM_KINDS:
        expected = getattr(sim, f"rate_{kind}")
        assert abs(counts[kind] / len(replies) - expected) < 0.06, (kind, counts[kind] / len(replies))
    requests = [u for g in corpus for u in g.user_turns if u.kind == "request"]
    assert abs(sum(bool(u.pii) for u in requests) / len(requests) - sim.rate_pii) < 0.08
    pii = [p for g in corpus for p in g.pii]
    assert {p.type for p in pii} == set(W.PII_WEIGHTS)
    assert 0.3 < sum(p.echoed for p in pii) / len(pii) < 0.7
    assert sum(len(g.backchannels) for g in corpus) > 0


def test_replies_fit_their_requests(corpus):
    fitting = {"wrong_fact": {"fact"}, "unsafe_compliance": {"unsafe"},
               "instruction_missed": {"instruction"}}
    for g in corpus:
        for m in g.model_turns:
            if m.kind != "reply":
                assert not m.problems
                continue
            for p in m.problems:
                if p in fitting:
                    assert m.request_kind in fitting[p]
            if m.variant == "wrong":
                fact = W.FACTS_BY_ID[m.item_id]
                assert fact.wrong_answer in m.text and fact.answer in m.good_text
            if not set(m.problems) & {"wrong_fact", "unsafe_compliance", "unhelpful", "off_tone",
                                      "instruction_missed"}:
                assert m.good_text in m.text
            user = g.user_turns[m.responds_to]
            assert user.request_kind == m.request_kind and user.item_id == m.item_id


def test_timing_of_turns_and_planted_timing_problems(corpus):
    for g in corpus:
        assert 15.0 < g.duration_s < 100.0
        turns = sorted([("u", u.start, u.end, u) for u in g.user_turns]
                       + [("m", m.start, m.end, m) for m in g.model_turns], key=lambda t: t[1])
        for m in g.model_turns:
            if m.kind != "reply":
                continue
            user = g.user_turns[m.responds_to]
            assert m.latency_s == pytest.approx(m.start - user.end, abs=0.002)
            if "interruption" in m.problems:
                assert -1.5 - 1e-3 <= m.latency_s <= -0.4 + 1e-3
            elif "silence" in m.problems:
                assert m.latency_s >= 2.5 - 1e-3
                if m.nudged:
                    nudge = g.user_turns[m.responds_to + 1]
                    assert nudge.kind == "nudge" and user.end + 3.0 <= nudge.start + 1e-3 < m.start
            else:
                assert 0.3 - 1e-3 <= m.latency_s <= 0.9 + 1e-3
        # model speech never overlaps model speech; the user waits 0.3-0.9 s after the model
        model_spans = sorted([(m.start, m.end) for m in g.model_turns]
                             + [(b.start, b.end) for b in g.backchannels])
        for (a0, a1), (b0, b1) in zip(model_spans, model_spans[1:]):
            assert a1 <= b0
        for (k1, _, e1, _), (k2, s2, _, t2) in zip(turns, turns[1:]):
            if k1 == "m" and k2 == "u" and t2.kind != "nudge":
                assert 0.3 - 1e-3 <= s2 - e1 <= 0.9 + 1e-3
        for b in g.backchannels:
            user = g.user_turns[b.during_user_turn]
            assert user.start < b.start and b.end < user.end - 1.5
        for u in g.user_turns:
            assert [w.word for w in u.words] == u.text.split()
            assert u.words[0].start == pytest.approx(u.start, abs=0.002)
        for m in g.model_turns:
            assert [w.word for w in m.words] == m.text.split()


def test_pii_spans_and_echoes(corpus):
    for g in corpus:
        for i, p in enumerate(g.pii):
            user = g.user_turns[p.user_turn]
            assert i in user.pii
            assert user.start <= p.start < p.end <= user.end + 1e-3
            assert p.written in user.written_text and p.spoken in user.text
            inside = [w.word for w in user.words if p.start - 1e-3 <= w.start and w.end <= p.end + 1e-3]
            assert " ".join(inside).rstrip(".,") == p.spoken.rstrip(".,")
            if p.echoed:
                reply = g.model_turns[p.echo_turn]
                assert i in reply.echoed_pii and reply.responds_to == p.user_turn
                assert p.echo_written in reply.text
                assert reply.start <= p.echo_start < p.echo_end <= reply.end + 1e-3
                echoed = " ".join(w.word for w in reply.words
                                  if p.echo_start - 1e-3 <= w.start and w.end <= p.echo_end + 1e-3)
                assert echoed.rstrip(".,") == p.echo_written
            else:
                assert p.echo_start is None


def test_conversation_is_deterministic_and_channels_match():
    sim = SimulateConfig()
    a, b = _build(sim, 3), _build(sim, 3)
    assert a.groundtruth.model_dump() == b.groundtruth.model_dump()
    np.testing.assert_array_equal(a.model_audio, b.model_audio)
    np.testing.assert_array_equal(a.user_audio, b.user_audio)
    assert len(a.model_audio) == len(a.user_audio)
    assert len(a.user_audio) / a.sample_rate == pytest.approx(a.groundtruth.duration_s, abs=0.001)
    assert a.sample_rate == a.metadata.sample_rate == a.groundtruth.sample_rate
    words = a.model_words
    assert all(x.start <= y.start for x, y in zip(words, words[1:]))
    assert words[-1].end <= a.groundtruth.duration_s
    # speech sits where the ground truth says: loud inside a user turn, quiet between turns
    rate = a.sample_rate
    turn = a.groundtruth.user_turns[0]
    inside = a.user_audio[int(turn.start * rate) : int(turn.end * rate)]
    assert np.sqrt(np.mean(inside**2)) > 0.05
    lead = a.user_audio[: int(min(turn.start, 0.3) * rate)]
    assert np.sqrt(np.mean(lead**2)) < 0.01


def test_ids_users_and_consent_are_stable():
    sim = SimulateConfig()
    fp = config_fingerprint(sim)
    assert conversation_id(7, 0, fp, "b") == conversation_id(7, 0, fp, "b") != conversation_id(7, 1, fp, "b")
    assert conversation_id(7, 0, fp, "b") != conversation_id(7, 0, fp, "other-batch")
    assert config_fingerprint(sim.model_copy(update={"conversations": 999})) == fp
    assert config_fingerprint(sim.model_copy(update={"rate_silence": 0.5})) != fp
    users = assign_users(7, 200, 0.4)
    assert users[:50] == assign_users(7, 50, 0.4)  # prefix-stable
    repeat = Counter(users)
    assert max(repeat.values()) >= 3 and len(repeat) < 200
    assert not user_consents(7, 1, 0.1) and user_consents(7, 1, 0.0)
    share = sum(not user_consents(7, u, 0.1) for u in range(2, 1002)) / 1000
    assert 0.06 < share < 0.14
