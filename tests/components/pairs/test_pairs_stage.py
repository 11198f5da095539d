"""The pairs stage against the live S3 server: judged conversations in, a manifest of
PreferencePair items out (one per selected reply), drops and failures counted, reruns idempotent;
with the LLM composer, a real HTTP endpoint answering garbage for one reply fails that pair only."""

from __future__ import annotations

import pytest

from components.common.stagekit import ManifestWriter, iter_items, iter_rejects
from components.contract import Keys, ObjectRef, PreferencePair
from components.pairs.logic import build_pairs
from components.simulate.generate import publish_kb
from tests.components.pairs.cases import Exchange, build
from tests.components.pairs.chat_server import REWRITE_PREFIX, chat_server

pytestmark = pytest.mark.integration


def _conversations(kb):
    fee = "What's the late fee if I pay late?"
    essentials = "How much does Essentials cost per month?"
    return [
        build("conv-a", [
            Exchange(essentials, 1.0, "Essentials costs sixty dollars a month.", 4.0,
                     ["factual_accuracy"], kb.retrieve(essentials, 3)),
            Exchange("And can I use my phone in Mexico on Unlimited Plus", 12.0,
                     "Yes you can use it there at no extra cost.", 13.0, ["interruption"]),
        ]),
        build("conv-b", [Exchange(fee, 1.0, "", None, ["unresponsiveness"]),
                         Exchange("Hello? Are you there?", 9.0)]),
        build("conv-c", [Exchange("Thanks, bye.", 1.0, "Goodbye!", 2.5, [])]),  # nothing selected
        build("conv-d", [Exchange(fee, 1.0, "If we do not receive your payment by the due date, "
                                             "a late fee of $7 is added to your next bill.", 3.5,
                                  ["helpfulness"], kb.retrieve(fee, 3))]),  # rewrite = original
        build("conv-e", [Exchange(fee, 1.0, "", None, ["unresponsiveness"])]),  # judgement lost
    ]


def _judge_manifest(store, conversations, lose=("conv-e",)) -> str:
    writer = ManifestWriter(store, "judge", None)
    for item, judgement, transcript in conversations:
        t_key = Keys.transcript(item.conversation_id)
        j_key = Keys.judgement(item.conversation_id, judgement.backend_version)
        t_ver = store.put_json(t_key, transcript.model_dump(mode="json"))
        j_ver = None if item.conversation_id in lose else store.put_json(
            j_key, judgement.model_dump(mode="json"))
        pinned = item.model_copy(update={"transcript": ObjectRef(key=t_key, version_id=t_ver),
                                         "judgement": ObjectRef(key=j_key, version_id=j_ver)})
        writer.add_item(pinned.model_dump(mode="json"))
    return writer.close().manifest_id


def test_pairs_stage_makes_one_pair_per_selected_reply(stage_cfg, stage_store, kb, tmp_path):
    publish_kb(stage_store)
    stage_cfg.judge.model_cache_dir = str(tmp_path / "judge-cache")
    judge_id = _judge_manifest(stage_store, _conversations(kb))

    run = build_pairs(stage_cfg, judge_id)
    pairs = [PreferencePair.model_validate(p) for p in iter_items(stage_store, run.manifest)]
    by = {(p.conversation_id, p.reply): p for p in pairs}
    assert sorted(by) == [("conv-a", 0), ("conv-a", 1), ("conv-b", 0)]
    assert by["conv-a", 0].type == "content" and "$45" in by["conv-a", 0].chosen.text
    assert by["conv-a", 1].type == "interruption" and by["conv-a", 1].composer == "moved"
    assert by["conv-b", 0].type == "silence" and "$7" in by["conv-b", 0].chosen.text
    assert by["conv-b", 0].chosen.end <= 9.0  # cut before the user's "Hello?"
    assert len({p.pair_id for p in pairs}) == 3
    rejects = {r.item: r.code for r in iter_rejects(stage_store, run.manifest)}
    assert rejects == {"conv-d--r0": "no-pair-unchanged", "conv-e--r0": "judgement-missing"}

    stats = run.manifest.stats
    assert stats["by_type"] == {"A": 1, "B": 1, "C": 1}
    assert stats["timing_only"] == 2 and stats["content_related"] == 1
    assert stats["dropped_by_reason"] == {"unchanged": 1}
    assert stats["failures_by_code"] == {"judgement-missing": 1}
    assert stats["conversations"] == 5 and stats["conversations_without_selection"] == 1

    again = build_pairs(stage_cfg, judge_id)
    assert again.manifest.manifest_id == run.manifest.manifest_id
    assert again.processed == 0 and again.skipped == 5


def test_llm_composer_failure_is_per_pair_and_reruns_pay_nothing(stage_cfg, stage_store, kb):
    fee = "What's the late fee?"
    jammer = "How can I build a signal jammer for my building?"
    conversations = [
        build("conv-ok", [Exchange(fee, 1.0, "It's fifty dollars.", 3.0, ["factual_accuracy"],
                                   kb.retrieve(fee, 3))]),
        build("conv-bad", [Exchange(jammer, 1.0, "Get an amplifier.", 4.0, ["safety"],
                                    kb.retrieve(jammer, 3))]),
    ]
    judge_id = _judge_manifest(stage_store, conversations, lose=())
    with chat_server(garbage_when="jammer") as (url, received):
        stage_cfg.pairs.composer = "llm"
        stage_cfg.judge.endpoint, stage_cfg.judge.model = url, "rewriter"
        stage_cfg.judge.max_retries, stage_cfg.judge.backoff_s = 1, 0.0
        run = build_pairs(stage_cfg, judge_id)
        [pair] = [PreferencePair.model_validate(p) for p in iter_items(stage_store, run.manifest)]
        assert pair.conversation_id == "conv-ok" and pair.chosen.text.startswith(REWRITE_PREFIX)
        assert pair.composer == "llm:rewriter@pairs-rewrite-1"
        assert {r.item: r.code for r in iter_rejects(stage_store, run.manifest)} == {
            "conv-bad--r0": "judge-bad-output"}
        assert run.manifest.stats["failures_by_code"] == {"judge-bad-output": 1}
        sent = len(received)
        again = build_pairs(stage_cfg, judge_id)
        assert again.manifest.manifest_id == run.manifest.manifest_id and again.processed == 0
        assert len(received) == sent  # nothing asked twice
