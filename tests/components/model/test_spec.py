from __future__ import annotations

import time

import pytest
import torch
from moshi.models import loaders

from components.model.spec import build_lm, count_params, lm_kwargs
from tests.components.model.helpers import Layout, random_codes


@pytest.mark.parametrize("q", [4, 8])
def test_presets_follow_moshi_layout(q: int) -> None:
    kw = lm_kwargs("tiny", Layout(q), context=256)
    assert kw["n_q"] == 2 * q and kw["dep_q"] == q and kw["depformer_context"] == q
    assert kw["delays"] == Layout(q).delays == [0] + ([0] + [1] * (q - 1)) * 2
    assert kw["existing_text_padding_id"] == 3 and kw["existing_text_end_padding_id"] == 0
    assert kw["context"] == 256 and kw["text_card"] == 1000 and kw["card"] == 256
    assert kw["norm"] == "rms_norm_f32" and kw["positional_embedding"] == "rope"
    assert kw["gating"] == "silu" and kw["depformer_pos_emb"] == "none"
    assert kw["depformer_multi_linear"] and kw["depformer_weights_per_step"]
    if q == 8:
        assert kw["delays"] == loaders._lm_kwargs["delays"]


def test_moshi_7b_is_kyutais_config_with_our_layout() -> None:
    kw = lm_kwargs("moshi-7b", Layout(8, text_card=32000, card=2048), context=3000)
    expected = dict(loaders._lm_kwargs)
    expected["existing_text_end_padding_id"] = 0  # LMModel's default, now explicit
    assert kw == expected
    small = lm_kwargs("moshi-7b", Layout(4, text_card=1000, card=256), context=500)
    assert (small["n_q"], small["dep_q"], small["text_card"], small["card"], small["context"]) == (
        8, 4, 1000, 256, 500)
    assert small["dim"] == 4096


def test_unknown_size_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model size"):
        lm_kwargs("huge", Layout(4), context=256)


@pytest.mark.parametrize("size,q,low,high", [("tiny", 4, 0.8e6, 1.3e6), ("tiny", 8, 1.1e6, 1.8e6),
                                             ("small", 4, 3.5e6, 5.5e6)])
def test_sizes_and_speed(size: str, q: int, low: float, high: float) -> None:
    lm = build_lm(lm_kwargs(size, Layout(q), context=256), seed=0)
    n = count_params(lm)
    assert low < n < high, n
    codes = random_codes(lm, batch=4, frames=96, seed=1)
    with torch.no_grad():
        lm(codes)  # warm-up
        t0 = time.perf_counter()
        out = lm(codes)
        dt = time.perf_counter() - t0
    assert out.logits.shape == (4, q, 96, 256) and out.text_logits.shape == (4, 1, 96, 1000)
    print(f"\n{size} {q}+{q}: {n / 1e6:.2f} M params, forward {4 * 96 / dt:,.0f} frames/s")


def test_build_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    kw = lm_kwargs("tiny", Layout(4), context=64)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_lm(kw, seed=5)
    after = torch.rand(3)
    assert torch.equal(before, after)  # seeding inside build_lm did not move the caller's RNG
    b = build_lm(kw, seed=5)
    c = build_lm(kw, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert all(p.dtype == torch.float32 for p in a.parameters())
    assert not a.training  # moshi's loader returns eval-mode models
