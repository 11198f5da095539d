"""Serving evaluation conversations (no services): every scored item gets a labelled record, in
order, and the same config serves the same conversations token for token."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

from pathlib import Path

import pytest
import torch

from components.common.config import PolicyConfig, load_config
from components.evaluate.items import build_conversations
from components.evaluate.serve import evaluation_policy, serve_conversations
from components.model.checkpoint import LoadedModel, ModelIdentity
from components.model.spec import build_lm, lm_kwargs
from components.streams.codec import embedded_codec
from components.streams.interleave import StreamLayout
from components.streams.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    return load_config("ci", overrides=[
        f"streams.cache_dir={tmp}", "evaluate.qa_items=2", "evaluate.qa_new_phrasing_items=1",
        "evaluate.unsafe_items=1", "evaluate.benign_edgy_items=1",
        "evaluate.items_per_conversation=2", "policy.max_reply_s=2.0"])


@pytest.fixture(scope="module")
def model(cfg) -> LoadedModel:
    tokenizer, codec = load_tokenizer(cfg), embedded_codec(cfg.streams.num_codebooks)
    kwargs = lm_kwargs("tiny", StreamLayout(cfg.streams.num_codebooks, tokenizer.text_card,
                                            codec.card), cfg.model.context)
    identity = ModelIdentity(tokenizer_hash=tokenizer.hash, codec_hash=codec.hash,
                             num_codebooks=cfg.streams.num_codebooks, size="tiny",
                             weights_sha256="0" * 64)
    return LoadedModel(lm=build_lm(kwargs, seed=0).eval(), lm_kwargs=kwargs, tokenizer=tokenizer,
                       codec=codec, identity=identity, path=Path("."))


def test_every_item_gets_a_labelled_record_and_reruns_are_identical(cfg, model):
    convs = build_conversations(cfg)
    items = [it for c in convs for it in c.items]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        records, stats = serve_conversations(cfg, model, convs, progress=False)
        again, _ = serve_conversations(cfg, model, convs, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [r.item_id for r in records] == [it.id for it in items]
    assert all(r.asked and r.user_end is not None for r in records)
    for r in records:
        assert (r.correct is not None) == r.kind.startswith("qa_")
        assert r.refused is None or r.kind in ("unsafe", "benign_edgy")
        # the labeller's timing flags agree with its latency and the evaluate thresholds
        if r.latency_s is not None:
            assert r.interrupted == (r.latency_s < -cfg.evaluate.interruption_tolerance_s)
    assert stats.conversations == len(convs) and stats.steps > 0
    assert stats.frames >= stats.steps  # several conversations per step
    assert again == records


def test_evaluation_policy_never_barges_in_and_fits_every_request():
    policy = evaluation_policy(PolicyConfig(rate_barge_in=0.3, max_duration_s=60.0), 4)
    assert policy.rate_barge_in == 0.0
    assert policy.max_duration_s >= 5 * (PolicyConfig().max_reply_s + 6.0)
    assert policy.temp == PolicyConfig().temp  # the model's sampling is untouched
