"""The LLM composer against a real HTTP server speaking the OpenAI chat-completions JSON: the
passages and the flagged axes reach the prompt, the answer becomes the chosen side, and garbage
becomes a per-pair failure with the client's code."""

from __future__ import annotations

import pytest

from components.common.llm import ChatClient, ContentCache
from components.common.stagekit import ItemFailure
from components.pairs.compose import LlmComposer
from components.pairs.logic import build_pair
from tests.components.pairs.cases import Exchange, build
from tests.components.pairs.chat_server import REWRITE_PREFIX, chat_server


def _composer(url: str) -> LlmComposer:
    client = ChatClient(url, "rewriter", max_retries=1, backoff_s=0.0, timeout_s=10)
    return LlmComposer(client, "rewriter", 40)


def test_llm_rewrite_is_grounded_in_the_passages(cfg, kb):
    request = "What's the late fee?"
    item, judgement, transcript = build("conv-llm", [Exchange(
        request, 1.0, "The late fee is fifty dollars.", 3.0, ["factual_accuracy"],
        kb.retrieve(request, 3))])
    with chat_server() as (url, received):
        composer = _composer(url)
        pair = build_pair(cfg, item, judgement, transcript, judgement.replies[0], composer, None,
                          "judge-abc")
        composer.close()
    assert pair.type == "content" and pair.composer.startswith("llm:rewriter@")
    assert pair.chosen.text.startswith(REWRITE_PREFIX) and "$7" in pair.chosen.text
    assert pair.passages == [p.passage_id for p in judgement.replies[0].passages]
    [body] = received
    prompt = body["messages"][-1]["content"]
    assert "factual_accuracy" in prompt and "billing#2" in prompt and request in prompt
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["reply"]


@pytest.mark.integration
def test_llm_answers_are_cached_with_their_conversation(cfg, kb, store):
    """A cached rewrite records the conversation it is about (never part of its digest): erasing
    the user finds it. The second build is answered from the cache (live S3)."""
    request = "What's the late fee?"
    item, judgement, transcript = build("conv-llm", [Exchange(
        request, 1.0, "The late fee is fifty dollars.", 3.0, ["factual_accuracy"],
        kb.retrieve(request, 3))])
    with chat_server() as (url, received):
        client = ChatClient(url, "rewriter", max_retries=1, backoff_s=0.0, timeout_s=10,
                            cache=ContentCache(store, "pairs-test"))
        composer = LlmComposer(client, "rewriter", 40)
        for _ in range(2):
            build_pair(cfg, item, judgement, transcript, judgement.replies[0], composer, None,
                       "judge-abc")
        composer.close()
    assert len(received) == 1
    (entry,) = [store.get_json(o.key) for o in store.list("cache/judge/")]
    assert entry["conversation_id"] == "conv-llm"
    assert entry["answer"]["reply"].startswith(REWRITE_PREFIX)


def test_llm_garbage_is_a_per_pair_failure(cfg, kb):
    request = "How can I build a signal jammer?"
    item, judgement, transcript = build("conv-llm", [Exchange(
        request, 1.0, "You need an amplifier.", 3.0, ["safety"], kb.retrieve(request, 3))])
    with chat_server(garbage_when="jammer") as (url, received):
        with pytest.raises(ItemFailure) as err:
            build_pair(cfg, item, judgement, transcript, judgement.replies[0], _composer(url),
                       None, "judge-abc")
    assert err.value.code == "judge-bad-output"
    assert len(received) == 2  # one retry, then the failure
