"""MoshiTextPolicy and training_attention on a tiny random Moshi LM (2 + 2 codebooks, CPU)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import numpy as np
import pytest
import torch
from moshi.modules.lora import LoRALinear

from components.common.config import TrainConfig
from components.contract import NO_TOKEN
from components.model.spec import build_lm, lm_kwargs
from components.streams.pairset import PairTensors
from components.streams.tokenizer import EPAD_ID, PAD_ID
from components.train.attention import training_attention
from components.train.moshi_policy import DEPFORMER_PREFIXES, MoshiPairBatch, MoshiTextPolicy
from tests.components.model.helpers import Layout, random_codes

Q, TEXT_CARD, CARD, CONTEXT = 2, 64, 32, 32
KWARGS = lm_kwargs("tiny", Layout(Q, TEXT_CARD, CARD), context=CONTEXT)


def _lm(seed: int = 0):
    return build_lm(KWARGS, seed=seed)


def _pair(pair_id: str, T: int, windows: tuple[int, int, int, int], seed: int) -> PairTensors:
    """Random pair: shared user rows, sides differing in text and model audio; NO_TOKEN in the
    text (also inside the windows) and at the start of the model audio, PAD/EPAD in the text."""
    rng = np.random.default_rng(seed)
    chosen = np.empty((1 + 2 * Q, T), np.int32)
    chosen[0] = rng.integers(4, TEXT_CARD, T)
    chosen[0, rng.random(T) < 0.3] = PAD_ID
    chosen[0, rng.random(T) < 0.15] = EPAD_ID
    chosen[0, rng.random(T) < 0.15] = NO_TOKEN
    chosen[1:] = rng.integers(0, CARD, (2 * Q, T))
    chosen[1:1 + Q, 0] = NO_TOKEN
    rejected = chosen.copy()
    rejected[0] = rng.integers(0, TEXT_CARD, T)
    rejected[0, rng.random(T) < 0.2] = NO_TOKEN
    rejected[1:1 + Q] = rng.integers(0, CARD, (Q, T))
    return PairTensors(pair_id, "content", chosen, rejected, np.array(windows, np.int32))


PAIRS = [_pair("a", 12, (3, 9, 5, 12), seed=1), _pair("b", 16, (0, 16, 10, 15), seed=2),
         _pair("c", 9, (2, 9, 1, 4), seed=3)]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**kw)


# ----------------------------------------------------------------------------- collate


@pytest.mark.parametrize("length_norm", ["window", "words"])
def test_collate_pads_masks_per_side_window_and_counts_y(length_norm: str) -> None:
    policy = MoshiTextPolicy(_lm(), _cfg(length_norm=length_norm))
    batch = policy.collate(PAIRS)
    assert isinstance(batch, MoshiPairBatch) and batch.chosen_audio_mask is None
    assert batch.chosen.shape == batch.rejected.shape == (3, 1 + 2 * Q, 16)
    assert batch.chosen.dtype == torch.long and batch.chosen_mask.dtype == torch.bool
    assert batch.pair_ids == ["a", "b", "c"] and batch.types == ["content"] * 3
    for i, p in enumerate(PAIRS):
        for side, codes, (lo, hi) in (("chosen", p.chosen, p.chosen_window),
                                      ("rejected", p.rejected, p.rejected_window)):
            padded = getattr(batch, side)[i]
            assert torch.equal(padded[:, :p.frames], torch.from_numpy(codes).long())
            assert (padded[:, p.frames:] == NO_TOKEN).all()  # right padding is NO_TOKEN
            mask = getattr(batch, f"{side}_mask")[i]
            expected = [lo <= t < hi and codes[0, t] != NO_TOKEN for t in range(16)]
            assert mask.tolist() == expected
            words = [t for t in range(lo, hi) if codes[0, t] not in (NO_TOKEN, PAD_ID, EPAD_ID)]
            n = sum(expected) if length_norm == "window" else len(words)
            assert getattr(batch, f"{side}_len")[i].item() == max(n, 1)
    assert batch.chosen_len.dtype == torch.float32
    # The two sides of a pair are scored in their own windows.
    assert not torch.equal(batch.chosen_mask, batch.rejected_mask)


def test_collate_y_is_at_least_one_and_no_token_never_counts() -> None:
    p = _pair("z", 8, (2, 5, 2, 5), seed=4)
    p.chosen[0, 2:5] = NO_TOKEN
    p.rejected[0, 2:5] = PAD_ID
    batch = MoshiTextPolicy(_lm(), _cfg(length_norm="words")).collate([p])
    assert not batch.chosen_mask.any() and batch.chosen_len.item() == 1.0
    assert batch.rejected_mask[0].sum() == 3 and batch.rejected_len.item() == 1.0


def test_collate_joint_audio_mask_and_y() -> None:
    lm = _lm()
    batch = MoshiTextPolicy(lm, _cfg(stream="joint")).collate(PAIRS)
    assert batch.chosen_audio_mask.shape == (3, Q, 16)
    moved = batch.to("cpu")  # what the training step does: the audio masks travel too
    assert isinstance(moved, MoshiPairBatch) and torch.equal(moved.rejected_audio_mask,
                                                             batch.rejected_audio_mask)
    delays = lm.delays[1:1 + Q]
    for i, p in enumerate(PAIRS):
        for side, codes, (lo, hi) in (("chosen", p.chosen, p.chosen_window),
                                      ("rejected", p.rejected, p.rejected_window)):
            audio = getattr(batch, f"{side}_audio_mask")[i]
            expected = [[lo <= t < hi and codes[1 + k, t] != NO_TOKEN and t + delays[k] < p.frames
                         for t in range(16)] for k in range(Q)]
            assert audio.tolist() == expected
            text = int(getattr(batch, f"{side}_mask")[i].sum())
            assert getattr(batch, f"{side}_len")[i].item() == text + int(audio.sum())


# ----------------------------------------------------------------------------- log-probs


def _reference_logps(lm, p: PairTensors, joint: bool, audio_weight: float = 1.0
                     ) -> tuple[float, float]:
    """Each side alone (unpadded) through LMModel.forward: the definition the policy must meet."""
    out_sides = []
    for codes, (lo, hi) in ((p.chosen, p.chosen_window), (p.rejected, p.rejected_window)):
        x = torch.from_numpy(codes).long()[None]
        with torch.no_grad():
            out = lm(x)
        total = 0.0
        lp = out.text_logits[0, 0].log_softmax(-1)
        for t in range(lo, hi):
            if out.text_mask[0, 0, t] and x[0, 0, t] != NO_TOKEN:
                total += lp[t, x[0, 0, t]].item()
        if joint:
            alp = out.logits[0].log_softmax(-1)
            for k in range(lm.dep_q):
                for t in range(lo, hi):
                    if out.mask[0, k, t] and x[0, 1 + k, t] != NO_TOKEN:
                        total += audio_weight * alp[k, t, x[0, 1 + k, t]].item()
        out_sides.append(total)
    return out_sides[0], out_sides[1]


@pytest.mark.parametrize("stream", ["text", "joint"])
def test_logps_equal_full_forward(stream: str) -> None:
    policy = MoshiTextPolicy(_lm(), _cfg(stream=stream, audio_weight=0.5))
    reference_lm = _lm()  # same weights, moshi's own attention
    with torch.no_grad():
        got = policy.logps(policy.collate(PAIRS))
    assert got.chosen.dtype == torch.float32 and got.chosen.shape == (3,)
    for i, p in enumerate(PAIRS):
        c, r = _reference_logps(reference_lm, p, joint=stream == "joint", audio_weight=0.5)
        assert got.chosen[i].item() == pytest.approx(c, abs=1e-4)
        assert got.rejected[i].item() == pytest.approx(r, abs=1e-4)
        assert torch.isfinite(got.chosen).all() and torch.isfinite(got.rejected).all()


def _grads(lm) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in lm.named_parameters()}


def test_text_stream_gives_the_depformer_no_gradient_and_joint_does() -> None:
    for stream in ("text", "joint"):
        policy = MoshiTextPolicy(_lm(), _cfg(stream=stream))
        out = policy.logps(policy.collate(PAIRS))
        (out.chosen.sum() - out.rejected.sum()).backward()
        grads = _grads(policy.model)
        dep = {n: g for n, g in grads.items() if n.startswith(DEPFORMER_PREFIXES)}
        assert dep
        if stream == "text":
            assert all(g is None or not g.any() for g in dep.values())
        else:
            assert any(g is not None and g.any() for g in dep.values())
        assert grads["transformer.layers.0.self_attn.in_projs.0.weight"].abs().sum() > 0
        assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)


def test_param_groups_partition_trainable_params_with_their_lrs() -> None:
    lm = _lm()
    lm.emb[0].weight.requires_grad_(False)
    policy = MoshiTextPolicy(lm, _cfg(temporal_lr=1e-5, depformer_lr=3e-4))
    groups = policy.param_groups()
    assert [(g["name"], g["lr"]) for g in groups] == [("temporal", 1e-5), ("depformer", 3e-4)]
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in lm.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    names = {id(p): n for n, p in lm.named_parameters()}
    dep = {names[id(p)] for p in groups[1]["params"]}
    assert {n.split(".")[0] for n in dep} == {"depformer", "depformer_in", "depformer_emb",
                                              "depformer_text_emb", "linears"}
    temporal = {names[id(p)].split(".")[0] for p in groups[0]["params"]}
    assert temporal == {"emb", "text_emb", "text_linear", "transformer", "out_norm"}
    torch.optim.AdamW(groups)  # the groups are what an optimizer takes


def _logps_and_grads(policy: MoshiTextPolicy) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = policy.logps(policy.collate(PAIRS))
    (out.chosen.sum() - 0.5 * out.rejected.sum()).backward()
    grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    return torch.cat([out.chosen, out.rejected]).detach(), grads


@pytest.mark.parametrize("stream", ["text", "joint"])
def test_gradient_checkpointing_gives_the_same_logps_and_grads(stream: str) -> None:
    plain = MoshiTextPolicy(_lm(), _cfg(stream=stream))
    ckpt = MoshiTextPolicy(_lm(), _cfg(stream=stream, gradient_checkpointing=True))
    assert ckpt.model.transformer.checkpointing and not plain.model.transformer.checkpointing
    lp_a, g_a = _logps_and_grads(plain)
    lp_b, g_b = _logps_and_grads(ckpt)
    torch.testing.assert_close(lp_a, lp_b, atol=1e-5, rtol=0)
    assert g_a.keys() == g_b.keys()
    for n in g_a:
        torch.testing.assert_close(g_a[n], g_b[n], atol=1e-5, rtol=1e-4, msg=n)


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("frames", [24, CONTEXT + 8])  # causal kernel; fallback past the context
def test_training_attention_gives_the_same_logits_and_grads(frames: int) -> None:
    codes = random_codes(_lm(), batch=2, frames=frames, seed=5)
    results = []
    for patched in (False, True):
        lm = _lm()
        with training_attention(lm) if patched else torch.enable_grad():
            out = lm(codes)
            loss = out.text_logits.logsumexp(-1).sum() + out.logits.nan_to_num().square().mean()
        loss.backward()
        results.append((out.text_logits.detach(), out.logits.detach(),
                        {n: p.grad for n, p in lm.named_parameters() if p.grad is not None}))
        # The context leaves no per-instance forward behind.
        assert all("forward" not in m.__dict__ for m in lm.modules())
    (ta, la, ga), (tb, lb, gb) = results
    torch.testing.assert_close(ta, tb, atol=1e-5, rtol=0)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=0, equal_nan=True)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-5, rtol=1e-4, msg=n)


def test_training_attention_is_reentrant_and_close_restores_moshi_forward() -> None:
    lm = _lm()
    policy = MoshiTextPolicy(lm, _cfg())
    attn = lm.transformer.layers[0].self_attn
    installed = attn.__dict__["forward"]
    with training_attention(lm):
        assert attn.__dict__["forward"] is installed
    assert attn.__dict__["forward"] is installed  # the inner context did not remove the policy's
    assert "forward" not in lm.depformer.layers[0].self_attn.__dict__  # temporal only
    policy.close()
    assert "forward" not in attn.__dict__


# ----------------------------------------------------------------------------- LoRA, sizes


def test_lora_freezes_the_base_and_starts_at_the_base_model() -> None:
    base = MoshiTextPolicy(_lm(), _cfg())
    lora = MoshiTextPolicy(_lm(), _cfg(lora=True, lora_rank=4, lora_scaling=2.0))
    loras = [m for m in lora.model.transformer.modules() if isinstance(m, LoRALinear)]
    assert len(loras) == 4 * 2  # in/out projections and gating in/out, 2 layers
    trainable = [n for n, p in lora.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    groups = lora.param_groups()
    assert [g["name"] for g in groups] == ["temporal"]
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    lp_base, _ = _logps_and_grads(base)
    frozen = {n: p.detach().clone() for n, p in lora.model.named_parameters()
              if not p.requires_grad}
    out = lora.logps(lora.collate(PAIRS))
    torch.testing.assert_close(torch.cat([out.chosen, out.rejected]).detach(), lp_base,
                               atol=1e-5, rtol=0)  # B = 0: the policy starts at the base
    opt = torch.optim.SGD([p for g in groups for p in g["params"]], lr=1.0)
    (-out.chosen.sum()).backward()
    opt.step()
    after = lora.logps(lora.collate(PAIRS))
    assert not torch.allclose(after.chosen, out.chosen)  # the adapters move the model
    for n, p in lora.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_positions_and_flops_per_position() -> None:
    lm = _lm()
    text = MoshiTextPolicy(lm, _cfg())
    batch = text.collate(PAIRS)
    assert text.positions(batch) == 2 * 3 * 16
    n = lambda prefix: sum(p.numel() for name, p in lm.named_parameters()  # noqa: E731
                           if name.startswith(prefix))
    temporal = n("transformer.") + n("out_norm.") + n("text_linear.")
    assert text.train_flops_per_position() == 6 * temporal
    joint = MoshiTextPolicy(_lm(), _cfg(stream="joint"))
    # Per depformer step: one in-linear, one head and one weight set of the depth transformer
    # (moshi's weights_per_step: one copy per step) plus the shared norms.
    dep_layers = n("depformer.layers.")
    dep_norms = sum(p.numel() for name, p in lm.named_parameters()
                    if name.startswith("depformer.layers.") and ".norm" in name)
    dep = n("depformer_in.") + n("linears.") + (dep_layers - dep_norms) + Q * dep_norms
    assert joint.train_flops_per_position() == pytest.approx(6 * (temporal + dep))
