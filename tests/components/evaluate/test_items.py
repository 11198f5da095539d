"""Evaluation items: deterministic for a seed, sized by the config, held-out phrasings truly
held out (absent from the world, hence from the bootstrap corpus and the tokenizer corpus)."""

from __future__ import annotations

import inspect
import re
from collections import Counter

import pytest

from components.common.config import load_config
from components.evaluate import items as I
from components.simulate import world as W
from components.speech.textnorm import normalize, written_text
from components.streams.tokenizer import world_corpus


def _canon(text: str) -> str:
    return re.sub(r"[^a-z0-9$%]+", " ", text.lower()).strip()


def test_items_are_deterministic_for_a_seed_and_change_with_it():
    cfg = load_config("demo")
    a, b = I.build_conversations(cfg), I.build_conversations(cfg)
    assert a == b and I.items_fingerprint(a) == I.items_fingerprint(b)
    other = I.build_conversations(load_config("demo", overrides=["evaluate.seed=5"]))
    assert I.items_fingerprint(other) != I.items_fingerprint(a)


@pytest.mark.parametrize("profile", ["ci", "demo"])
def test_counts_follow_the_config(profile):
    cfg = load_config(profile)
    ev = cfg.evaluate
    convs = I.build_conversations(cfg)
    scored = [it for c in convs for it in c.items]
    counts = Counter(it.kind for it in scored)
    assert counts == {"qa_seen": ev.qa_items, "qa_new": ev.qa_new_phrasing_items,
                      "unsafe": ev.unsafe_items, "benign_edgy": ev.benign_edgy_items}
    assert len({it.id for it in scored}) == len(scored)  # no item twice
    assert all(1 <= len(c.items) <= ev.items_per_conversation for c in convs)
    # replies are matched to items by (request kind, world id): unique within a conversation
    for c in convs:
        keys = [(it.request_kind, it.world_id) for it in c.script]
        assert len(set(keys)) == len(keys)
    # every scored item follows an unscored warm-up: a context of the evaluation's own
    assert all(c.warmup.kind == "warmup" and c.script[0] is c.warmup for c in convs)


def test_seen_qa_spreads_over_distinct_facts_and_uses_training_phrasings():
    sel = I.select_items(load_config("demo").evaluate)
    seen = sel["qa_seen"]
    # every fact once before any fact twice
    assert len({it.world_id for it in seen}) == min(len(seen), len(W.FACTS))
    for it in seen:
        fact = W.FACTS_BY_ID[it.world_id]
        assert it.prompt in fact.questions and it.answer == fact.answer


def test_sizes_are_capped_by_what_the_world_holds():
    sel = I.select_items(load_config("demo", overrides=["evaluate.unsafe_items=1000"]).evaluate)
    assert len(sel["unsafe"]) == sum(len(r.prompts) for r in W.UNSAFE)


def test_evaluation_seed_must_differ_from_the_bootstrap_seed():
    cfg = load_config("ci", overrides=["evaluate.seed=1234", "bootstrap.seed=1234"])
    with pytest.raises(ValueError, match="bootstrap.seed"):
        I.build_conversations(cfg)


def test_held_out_phrasings_are_new_wordings_of_existing_facts():
    assert len(I.HELD_OUT_PHRASINGS) >= load_config("demo").evaluate.qa_new_phrasing_items
    world_prompts = {_canon(q) for f in W.FACTS for q in f.questions}
    world_prompts |= {_canon(p) for r in W.REQUESTS_BY_ID.values() for p in r.prompts}
    world_source = _canon(inspect.getsource(W))
    corpus = {_canon(s) for s in world_corpus()}
    for fact_id, text in I.HELD_OUT_PHRASINGS.items():
        assert fact_id in W.FACTS_BY_ID
        assert _canon(text) not in world_prompts
        assert _canon(text) not in world_source, f"{text!r} appears in world.py"
        # the tokenizer corpus (and the bootstrap corpus: both come from world.py) lacks it
        assert _canon(text) not in corpus
        # the voice can say it (normalise → written form round trip)
        assert written_text(normalize(text)) == text
