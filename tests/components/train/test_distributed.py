"""Data-parallel training (components/train/distributed.py).

The main test runs two real processes (torch.multiprocessing, gloo on CPU) that shard the
tiny Moshi LM with FSDP2 and train it for a few steps on their shards of the pairs; the result
must equal one process training on all the pairs. Text-only steps go through the trainer's own
``MoshiTextPolicy.logps`` (forward_text, the causal attention kernel, gradient checkpointing);
joint steps through ``lm(codes)`` (depformer and audio heads). The loss is a plain DPO-LN
written here (losses.py is tested on its own; this test is about distribution).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import socket
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from components.common.config import TrainConfig
from components.model.spec import build_lm, lm_kwargs
from components.train.distributed import (
    DistContext,
    all_reduce_mean,
    all_reduce_sum,
    broadcast_object,
    full_model_state_dict,
    full_optimizer_state_dict,
    init_distributed,
    load_full_model_state_dict,
    load_full_optimizer_state_dict,
    local_loss_weight,
    process_group,
    shard_examples,
    shard_units,
    wrap_model,
)
from components.train.moshi_policy import MoshiTextPolicy
from components.train.types import PairBatch
from tests.components.model.helpers import Layout, random_codes

CONTEXT = 16
FRAMES = 12
PAIRS = 5  # odd on purpose: ranks get 3 and 2 pairs, local_loss_weight must even it out
# One flag per optimizer step: the text-only path (lm.forward_text, FSDP forward method) or the
# joint one (lm(codes): depformer and audio heads too).
STEPS = (False, True, False)
BETA = 0.1


# ---------------------------------------------------------------------------------------------
# Pure functions


def test_context_from_env() -> None:
    assert DistContext.from_env({}) == DistContext()
    assert DistContext().is_main and not DistContext().is_distributed
    ctx = DistContext.from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                "LOCAL_WORLD_SIZE": "4"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size) == (3, 8, 1, 4)
    assert ctx.is_distributed and not ctx.is_main
    assert ctx.device("cpu") == torch.device("cpu")
    assert ctx.device("cuda") == torch.device("cuda", 1)
    with pytest.raises(ValueError):
        ctx.device("cuda:0")  # another rank's GPU
    with pytest.raises(ValueError):
        DistContext.from_env({"RANK": "0"})
    with pytest.raises(ValueError):
        DistContext.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError):
        DistContext.from_env({"RANK": "x", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("n,world", [(0, 2), (1, 3), (5, 2), (16, 4), (17, 8)])
def test_shard_examples_partition(n: int, world: int) -> None:
    shards = [shard_examples(n, DistContext(rank=r, world_size=world)) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))  # contiguous, disjoint, complete
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    if n:
        # Weighted per-rank means, averaged over ranks (what FSDP does to gradients), are the
        # global mean.
        values = torch.arange(n, dtype=torch.float64) ** 2
        avg = sum(values[list(s)].mean() * local_loss_weight(len(s), n, DistContext(r, world))
                  for r, s in enumerate(shards) if len(s)) / world
        assert float(avg) == pytest.approx(float(values.mean()))


def test_single_process_is_the_identity() -> None:
    ctx = DistContext()
    lm = build_lm(lm_kwargs("tiny", Layout(2), CONTEXT), seed=0)
    assert wrap_model(lm, ctx, TrainConfig()) is lm
    assert init_distributed(ctx, torch.device("cpu")) is False
    with process_group(ctx, torch.device("cpu")) as same:
        assert same is ctx
    assert all_reduce_sum({"b": 2, "a": 1.5}, ctx) == {"a": 1.5, "b": 2.0}
    assert all_reduce_mean({"loss": 0.25}, ctx, weight=3) == {"loss": 0.25}
    assert broadcast_object({"run": "x"}, ctx) == {"run": "x"}
    state = full_model_state_dict(lm, ctx)
    assert set(state) == set(lm.state_dict())
    other = build_lm(lm_kwargs("tiny", Layout(2), CONTEXT), seed=1)
    load_full_model_state_dict(other, state, ctx)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in state.items())
    # the temporal and depth transformers' layers are the sharding units
    assert len(shard_units(lm)) == len(lm.transformer.layers) + len(lm.depformer.layers)
    with pytest.raises(NotImplementedError):  # FSDP is set up for the Moshi LM only
        wrap_model(torch.nn.Linear(2, 2), DistContext(rank=0, world_size=2), TrainConfig())


# ---------------------------------------------------------------------------------------------
# Two processes vs one


@dataclass
class Pairs:
    chosen: torch.Tensor  # long [N, K, T]
    rejected: torch.Tensor
    chosen_mask: torch.Tensor  # bool [N, T]: the reply window
    rejected_mask: torch.Tensor


def _pairs(lm) -> Pairs:
    chosen = random_codes(lm, PAIRS, FRAMES, seed=1)
    rejected = chosen.clone()
    rejected[:, 0, 5:] = random_codes(lm, PAIRS, FRAMES - 5, seed=2)[:, 0]
    rejected[:, 1:, 5:] = random_codes(lm, PAIRS, FRAMES - 5, seed=3)[:, 1:]
    lo = torch.tensor([5, 5, 6, 5, 7])[:, None]
    hi = torch.tensor([12, 10, 12, 11, 12])[:, None]
    t = torch.arange(FRAMES)[None]
    window = (t >= lo) & (t < hi)
    other = (t >= lo) & (t < hi - 1)  # per-side windows differ
    return Pairs(chosen, rejected, window, other)


def _policy(lm) -> MoshiTextPolicy:
    return MoshiTextPolicy(lm, TrainConfig(gradient_checkpointing=True))


def _text_logps(policy: MoshiTextPolicy, pairs: Pairs, idx: list[int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    lens = [m[idx].sum(-1).float() for m in (pairs.chosen_mask, pairs.rejected_mask)]
    batch = PairBatch(chosen=pairs.chosen[idx], rejected=pairs.rejected[idx],
                      chosen_mask=pairs.chosen_mask[idx], rejected_mask=pairs.rejected_mask[idx],
                      chosen_len=lens[0], rejected_len=lens[1],
                      pair_ids=[str(i) for i in idx], types=["content"] * len(idx))
    out = policy.logps(batch)
    return out.chosen, out.rejected


def _joint_logps(lm, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probs of the window's text and the model's audio codebooks (full forward)."""
    out = lm(codes)
    valid = mask & out.text_mask[:, 0]
    logits = torch.where(valid[..., None], out.text_logits[:, 0].float(), 0.0)
    lp = F.log_softmax(logits, -1).gather(-1, codes[:, 0, :, None])[..., 0]
    total = torch.where(valid, lp, 0.0).sum(-1)
    audio = codes[:, 1:1 + lm.dep_q]
    avalid = out.mask & mask[:, None]
    alogits = torch.where(avalid[..., None], out.logits.float(), 0.0)
    alp = F.log_softmax(alogits, -1).gather(-1, audio[..., None])[..., 0]
    return total + torch.where(avalid, alp, 0.0).sum((1, 2))


def _dpo_ln(pc, pr, rc, rr, len_c, len_r) -> torch.Tensor:
    logits = (pc - rc) / len_c - (pr - rr) / len_r
    return -F.logsigmoid(BETA * logits)


def _logps(policy: MoshiTextPolicy, pairs: Pairs, idx: list[int], joint: bool
           ) -> tuple[torch.Tensor, torch.Tensor]:
    if not joint:
        return _text_logps(policy, pairs, idx)
    return (_joint_logps(policy.model, pairs.chosen[idx], pairs.chosen_mask[idx]),
            _joint_logps(policy.model, pairs.rejected[idx], pairs.rejected_mask[idx]))


def _train(policy: MoshiTextPolicy, pairs: Pairs,
           reference: dict[bool, tuple[torch.Tensor, torch.Tensor]],
           ctx: DistContext) -> tuple[torch.optim.Optimizer, list[dict[str, float]]]:
    """The steps, each on this rank's shard of all the pairs; metrics reduced over ranks."""
    lm = policy.model
    idx = list(shard_examples(PAIRS, ctx))
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-3, weight_decay=0.01)
    len_c = pairs.chosen_mask[idx].sum(-1).float()
    len_r = pairs.rejected_mask[idx].sum(-1).float()
    history = []
    for joint in STEPS:
        pc, pr = _logps(policy, pairs, idx, joint)
        rc, rr = (r[idx] for r in reference[joint])
        losses = _dpo_ln(pc, pr, rc, rr, len_c, len_r)
        (losses.mean() * local_loss_weight(len(idx), PAIRS, ctx)).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(lm.parameters()), 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({**all_reduce_mean({"loss": float(losses.mean().detach())}, ctx,
                                          weight=len(idx)),
                        "grad_norm": float(grad_norm)})
    return optimizer, history


def _reference(policy: MoshiTextPolicy, pairs: Pairs
               ) -> dict[bool, tuple[torch.Tensor, torch.Tensor]]:
    with torch.no_grad():
        return {joint: _logps(policy, pairs, list(range(PAIRS)), joint)
                for joint in (False, True)}


def _model():
    return build_lm(lm_kwargs("tiny", Layout(2), CONTEXT), seed=0)


def _worker(rank: int, world: int, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    ctx = DistContext.from_env()
    device = ctx.device("cpu")
    cfg = TrainConfig()
    with process_group(ctx, device):
        policy = _policy(_model())
        pairs = _pairs(policy.model)
        reference = _reference(policy, pairs)
        lm = wrap_model(policy.model, ctx, cfg, device=device)
        assert lm is policy.model and type(lm).__name__ == "FSDPLMModel"
        optimizer, history = _train(policy, pairs, reference, ctx)
        weights = full_model_state_dict(lm, ctx)
        optim_state = full_optimizer_state_dict(lm, optimizer, ctx)
        assert broadcast_object("run-0" if ctx.is_main else None, ctx) == "run-0"

        # Reload into a model built on the meta device (how a 7B model avoids materialising
        # the full weights on every rank): only rank 0 holds the full state dicts.
        from moshi.models.lm import LMModel

        with torch.device("meta"):
            meta_lm = LMModel(**lm_kwargs("tiny", Layout(2), CONTEXT))
        fresh = wrap_model(meta_lm, ctx, cfg, device=device)
        fresh.to_empty(device=device)  # FSDP's _apply path: shards re-registered on the CPU
        load_full_model_state_dict(fresh, weights, ctx)
        fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3, weight_decay=0.01)
        load_full_optimizer_state_dict(fresh, fresh_optimizer, optim_state, ctx)
        reloaded = full_model_state_dict(fresh, ctx)
        reloaded_optim = full_optimizer_state_dict(fresh, fresh_optimizer, ctx)
        with torch.no_grad():
            a = lm.forward_text(pairs.chosen)[1]
            b = fresh.forward_text(pairs.chosen)[1]
        assert torch.equal(a, b)
        if ctx.is_main:
            torch.save({"weights": weights, "history": history, "optim": optim_state,
                        "reloaded": reloaded, "reloaded_optim": reloaded_optim}, out_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(240)
def test_fsdp_two_processes_equal_one_process(tmp_path) -> None:
    import torch.multiprocessing as mp

    # fork, not spawn: the children inherit the imported torch/moshi/dynamo (FSDP2 imports
    # torch._dynamo on first use) instead of importing them again, ~15 s less on 2 cores.
    import torch._dynamo  # noqa: F401

    out = tmp_path / "rank0.pt"
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True,
                       start_method="fork")
    result = torch.load(out, weights_only=False)

    policy = _policy(_model())
    lm = policy.model
    pairs = _pairs(lm)
    optimizer, history = _train(policy, pairs, _reference(policy, pairs), DistContext())
    single = lm.state_dict()

    assert set(result["weights"]) == set(single)
    initial = _model().state_dict()
    moved = 0
    for name, value in single.items():
        # atol: Adam divides by sqrt(v), so a gradient of ~1e-8 summed in another order can
        # move a weight by ~1e-6 differently; a wrong reduction moves it by ~lr = 1e-3
        torch.testing.assert_close(result["weights"][name], value, rtol=1e-4, atol=1e-5,
                                   msg=f"{name} differs")
        moved += int(not torch.equal(value, initial[name]))
    assert moved > len(single) // 2  # the steps did train (depformer included, joint step)
    for got, want in zip(result["history"], history):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    # the optimizer's full state, by parameter name, equals the single process's
    names = [n for n, _ in lm.named_parameters()]
    for i, name in enumerate(names):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(result["optim"]["state"][name][key],
                                       optimizer.state[list(lm.parameters())[i]][key],
                                       rtol=1e-4, atol=1e-9)
    # meta-built, sharded, loaded from rank 0: the same weights and optimizer state
    for name, value in result["weights"].items():
        assert torch.equal(result["reloaded"][name], value), name
    for name in names:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(result["reloaded_optim"]["state"][name][key],
                               result["optim"]["state"][name][key])
