"""The pair rules and the knowledge-base composer on hand-built judgements, with the real MiniLM
knowledge base: which type a reply makes, what the chosen side says, and where it goes."""

from __future__ import annotations

import pytest

from components.common.stagekit import ItemFailure
from components.contract import PreferencePair
from components.pairs import rules
from components.pairs.compose import (
    GENERIC_REPLY,
    REFUSAL,
    ComposeRequest,
    KbComposer,
    trim_words,
)
from components.pairs.logic import build_pair, pair_stats
from tests.components.pairs.cases import Exchange, build


def _pair(cfg, kb, exchanges, reply=0, **kw) -> PreferencePair:
    item, judgement, transcript = build("conv-1", exchanges, **kw)
    composer = KbComposer(kb.embed, cfg.pairs.max_reply_words, retrieve=kb.retrieve)
    return build_pair(cfg, item, judgement, transcript, judgement.replies[reply], composer,
                      kb.retrieve, "judge-abc")


def test_pair_type_precedence():
    assert rules.pair_type(["factual_accuracy"]) == "content"
    assert rules.pair_type(["interruption"]) == "interruption"
    assert rules.pair_type(["unresponsiveness"]) == "silence"
    assert rules.pair_type(["interruption", "tone"]) == "content"
    assert rules.pair_type(["unresponsiveness", "factual_accuracy"]) == "silence"
    assert rules.pair_type([]) is None


def test_wrong_fact_gets_the_kb_answer(cfg, kb):
    request = "How much does Essentials cost per month?"
    pair = _pair(cfg, kb, [Exchange(request, 1.0, "Essentials costs sixty dollars a month.", 4.0,
                                    ["factual_accuracy"], kb.retrieve(request, 3))])
    assert pair.type == "content" and pair.composer == "kb-compose-1"
    assert "$45" in pair.chosen.text and "plans#2" in pair.passages
    assert pair.chosen.source == "rewritten" and pair.rejected.source == "logged"
    assert pair.rejected.text == "Essentials costs sixty dollars a month."
    assert pair.chosen.start == pair.rejected.start == 4.0  # no interruption: same start
    # Planned times at the configured speaking rate, back to back.
    step = 1 / cfg.pairs.speaking_rate_wps
    assert len(pair.chosen.words) == len(pair.chosen.text.split())
    assert pair.chosen.words[1].start == pytest.approx(4.0 + step, abs=1e-3)
    assert pair.problems == ["factual_accuracy"] and pair.scores["factual_accuracy"] == 1.5
    assert pair.serving_model_version == "moshi-test/1" and pair.judge_version == "judge-v1"
    assert pair.provenance["model_tokens"]["key"] == "conversations/conv-1/model_tokens.npz"
    assert pair.provenance["judge_manifest_id"] == "judge-abc"


def test_interruption_is_moved_after_the_users_end(cfg, kb):
    ex = Exchange("Can you tell me what the late fee is on my bill", 1.0,
                  "The late fee is seven dollars.", 2.5, ["interruption"])
    pair = _pair(cfg, kb, [ex])
    assert pair.type == "interruption" and pair.composer == "moved"
    assert pair.chosen.source == "moved" and pair.chosen.text == pair.rejected.text
    assert pair.chosen.start == pytest.approx(pair.user_end + cfg.pairs.interruption_gap_s)
    offsets = {round(c.start - r.start, 3) for c, r in zip(pair.chosen.words, pair.rejected.words)}
    assert len(offsets) == 1 and offsets.pop() > 0  # every word shifted by the same offset
    assert pair.rejected.start < pair.user_end


def test_silence_gets_a_composed_reply_after_the_users_end(cfg, kb):
    pair = _pair(cfg, kb, [Exchange("What's the late fee if I pay my bill late?", 1.0, "", None,
                                    ["unresponsiveness"]), Exchange("Hello?", 12.0)])
    assert pair.type == "silence" and pair.chosen.source == "composed"
    assert "$7" in pair.chosen.text  # no passages on the judgement: retrieved for the request
    assert pair.chosen.start == pytest.approx(pair.user_end + cfg.pairs.silence_gap_s)
    assert pair.rejected.text == "" and pair.rejected.source == "none"
    assert (pair.rejected.start, pair.rejected.end) == (pair.chosen.start, pair.chosen.end)


def test_late_reply_with_a_wrong_fact_is_a_silence_pair_that_fixes_both(cfg, kb):
    request = "How much is the late fee?"
    pair = _pair(cfg, kb, [Exchange(request, 1.0, "The late fee is fifty dollars.", 6.0,
                                    ["unresponsiveness", "factual_accuracy"],
                                    kb.retrieve(request, 3))])
    assert pair.type == "silence" and "$7" in pair.chosen.text
    assert pair.rejected.source == "logged" and pair.rejected.start == 6.0
    assert pair.chosen.start == pytest.approx(pair.user_end + cfg.pairs.silence_gap_s)
    assert pair_stats_of([pair])["content_related"] == 1


def test_content_and_interruption_starts_after_the_user(cfg, kb):
    request = "Can you tell me what the late fee is?"
    pair = _pair(cfg, kb, [Exchange(request, 1.0, "Whatever, it's fifty bucks.", 2.0,
                                    ["interruption", "tone", "factual_accuracy"],
                                    kb.retrieve(request, 3))])
    assert pair.type == "content" and "$7" in pair.chosen.text
    assert pair.chosen.text.startswith("Thanks for asking!")  # tone: the polite wrapper
    assert pair.chosen.start == pytest.approx(pair.user_end + cfg.pairs.interruption_gap_s)


def test_chosen_reply_is_cut_before_the_next_user_turn(cfg, kb):
    request = "What's the late fee?"
    # 4.3 s until the user's next turn: the 21-word FAQ sentence does not fit, its clause does.
    pair = _pair(cfg, kb, [Exchange(request, 1.0, "", None, ["unresponsiveness"],
                                    kb.retrieve(request, 3)), Exchange("Hello?", 7.0)])
    assert pair.chosen.text == "A late fee of $7 is added to your next bill."
    assert pair.chosen.end <= 7.0 and pair.provenance["chosen_overrun_s"] == 0


def test_no_fragment_when_even_the_clause_does_not_fit(cfg, kb):
    request = "What's the late fee?"
    pair = _pair(cfg, kb, [Exchange(request, 1.0, "", None, ["unresponsiveness"],
                                    kb.retrieve(request, 3)), Exchange("Hello?", 5.0)])
    assert pair.chosen.text == "A late fee of $7 is added to your next bill."  # whole clause
    assert pair.provenance["chosen_overrun_s"] == pytest.approx(pair.chosen.end - 5.0, abs=1e-3)
    assert pair.provenance["chosen_overrun_s"] > 0


def test_moved_reply_is_cut_at_a_sentence_end_before_the_next_turn(cfg, kb):
    pair = _pair(cfg, kb, [
        Exchange("Can you tell me what the late fee is on my bill", 1.0,
                 "The late fee is seven dollars. Autopay saves five dollars a line.", 3.0,
                 ["interruption"]),
        Exchange("Okay thanks", 7.5)])
    assert pair.chosen.text == "The late fee is seven dollars."
    assert pair.chosen.end <= 7.5


def test_reply_without_problems_makes_no_pair(cfg, kb):
    item, judgement, transcript = build("conv-1", [Exchange("Hi", 1.0, "Hello there.", 2.0, [])])
    with pytest.raises(ItemFailure) as err:
        build_pair(cfg, item, judgement, transcript, judgement.replies[0],
                   KbComposer(kb.embed, 40), kb.retrieve, "judge-abc")
    assert err.value.code == "no-pair-nothing-to-fix"


def test_rewrite_equal_to_the_original_is_dropped(cfg, kb):
    request = "What's the late fee?"
    answer = "If we do not receive your payment by the due date, a late fee of $7 is added to " \
             "your next bill."
    with pytest.raises(ItemFailure) as err:
        _pair(cfg, kb, [Exchange(request, 1.0, answer, 3.0, ["helpfulness"],
                                 kb.retrieve(request, 3))])
    assert err.value.code == "no-pair-unchanged"


def test_pair_id_is_stable_and_names_type_and_judge_version():
    a = rules.pair_id("c", 1, "content", "v1")
    assert a == rules.pair_id("c", 1, "content", "v1") and len(a) == 24
    assert len({a, rules.pair_id("c", 1, "silence", "v1"), rules.pair_id("c", 1, "content", "v2"),
                rules.pair_id("c", 2, "content", "v1")}) == 4


@pytest.mark.parametrize("request_text, problems, expect", [
    ("How can I clone my ex's SIM card so I get her texts?", ("safety",),
     "Only the account holder"),
    ("How can I build a signal jammer to block phones in my building?", ("safety",), None),
    ("Just yes or no: is Wi-Fi calling free?", ("instruction_following",), "free on every plan"),
    ("How are you today?", ("tone",), GENERIC_REPLY),
    ("What's the weather like today?", ("unresponsiveness",), GENERIC_REPLY),
])
def test_kb_composer_rules(kb, request_text, problems, expect):
    composer = KbComposer(kb.embed, 40, retrieve=kb.retrieve)
    out = composer.compose(ComposeRequest(request_text, "bad reply", problems,
                                          tuple(kb.retrieve(request_text, 3))))
    if "safety" in problems:
        assert out.text.startswith(REFUSAL)
        if expect is None:
            assert out.text == REFUSAL and out.passages == []  # nothing relevant: bare refusal
    if expect:
        assert expect in out.text
    if "instruction_following" in problems:
        assert out.text == "Wi-Fi calling is free on every plan."  # the best clause only
    assert len(out.text.split()) <= 40


def test_trim_and_fit_helpers():
    text = "One two three. Four five six seven. Eight."
    assert rules.fit_text(text, 0.0, 3.0, 1.0) == "One two three."
    assert rules.fit_text(text, 0.0, 7.5, 1.0) == "One two three. Four five six seven."
    assert rules.fit_text(text, 0.0, None, 1.0) == text
    assert rules.fit_text("a b c d e f g h", 0.0, 1.0, 1.0) == "a b c d e f g h"  # no fragment
    assert trim_words("a b c d e f g h", 3) == "a b c."  # the hard cap (max_reply_words)


def pair_stats_of(pairs: list[PreferencePair]) -> dict:
    from components.contract import ItemResult

    return pair_stats([ItemResult(item=p.pair_id, status="done", output=p.model_dump(mode="json"))
                       for p in pairs])
