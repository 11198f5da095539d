"""One optimizer step of preference training: micro-batches → log-probs → loss → backward,
accumulated to the effective batch, clipped, applied.

Kept apart from the loop (trainer.py) so benchmarks and tests time exactly what training runs.

Data-parallel (``ctx`` of world size > 1, the model sharded with FSDP2): each rank passes its own
micro-batches and ``loss_weight`` = ``distributed.local_loss_weight`` (FSDP averages the ranks'
gradients, the weight makes that average the gradient of the mean over all the step's pairs);
the metrics are summed over the ranks, so every rank returns the step's global means, and
``clip_grad_norm_`` over DTensor gradients is already the global norm. Every rank must run the
same number of micro-batches (each forward and backward is a collective).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from components.common.config import TrainConfig
from components.train.distributed import DistContext, all_reduce_sum
from components.train.losses import preference_loss
from components.train.types import PairBatch, PreferencePolicy, SequenceLogps


@dataclass
class StepMetrics:
    """What one optimizer step measured (means over the step's pairs)."""

    loss: float
    chosen_rewards: float
    rejected_rewards: float
    margins: float
    accuracy: float
    logps_chosen: float
    logps_rejected: float
    grad_norm: float
    pairs: int
    positions: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> Any:
    """bf16 autocast for compute (weights stay fp32 masters), or nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_step(policy: PreferencePolicy, optimizer: torch.optim.Optimizer,
               micro_batches: Sequence[PairBatch], reference: Sequence[SequenceLogps] | None,
               cfg: TrainConfig, *, autocast_dtype: torch.dtype | None = None,
               params: list[torch.nn.Parameter] | None = None,
               ctx: DistContext | None = None, loss_weight: float = 1.0) -> StepMetrics:
    """Accumulate the gradient of the preference loss over ``micro_batches`` (each micro-batch's
    mean loss weighted by its share of the step's pairs, so the step's loss is the mean over all
    its pairs whatever the split), clip to ``cfg.max_grad_norm``, step the optimizer (the LR
    scheduler is the caller's), zero the gradients. ``reference`` holds one SequenceLogps per
    micro-batch (None only for reference-free losses).

    Distributed (``ctx``): ``micro_batches`` are this rank's share of the step, each micro-batch's
    scaled loss is multiplied by ``loss_weight`` (see the module doc), and the returned metrics,
    ``pairs`` and ``positions`` are over all ranks' pairs (the same on every rank)."""
    t0 = time.perf_counter()
    total = sum(len(b) for b in micro_batches)
    if total == 0:
        raise ValueError("a training step needs at least one pair")
    if reference is not None and len(reference) != len(micro_batches):
        raise ValueError("one reference SequenceLogps per micro-batch")
    if params is None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
    device = next(iter(policy.model.parameters())).device
    sums = {k: 0.0 for k in ("loss", "chosen_rewards", "rejected_rewards", "margins", "accuracy",
                             "logps_chosen", "logps_rejected")}
    positions = 0
    for i, batch in enumerate(micro_batches):
        batch = batch.to(device)
        with autocast_context(device, autocast_dtype):
            logps = policy.logps(batch)
        ref = reference[i].to(device) if reference is not None else None
        out = preference_loss(cfg, logps, ref)
        share = len(batch) / total
        (out.loss * (share * loss_weight)).backward()  # world size 1: loss_weight = 1.0 exactly
        n = len(batch)
        sums["loss"] += float(out.loss.detach()) * n
        sums["chosen_rewards"] += float(out.chosen_rewards.sum())
        sums["rejected_rewards"] += float(out.rejected_rewards.sum())
        sums["margins"] += float(out.margins.sum())
        sums["accuracy"] += float(out.accuracy) * n
        sums["logps_chosen"] += float(logps.chosen.detach().sum())
        sums["logps_rejected"] += float(logps.rejected.detach().sum())
        positions += policy.positions(batch)
    # Under FSDP2 the gradients are DTensor shards: clip_grad_norm_ reduces the shard norms over
    # the ranks, so the norm (and the clipping) is the global one, the same on every rank.
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    # One collective for all sums (a no-op in a single process): global means on every rank.
    reduced = all_reduce_sum({**sums, "__pairs__": float(total), "__positions__": float(positions)},
                             ctx or DistContext())
    total = int(reduced.pop("__pairs__"))
    positions = int(reduced.pop("__positions__"))
    return StepMetrics(**{k: reduced[k] / total for k in sums}, grad_norm=float(grad_norm),
                       pairs=total, positions=positions, seconds=time.perf_counter() - t0)


@torch.no_grad()
def score(policy: PreferencePolicy, batch: PairBatch, *,
          autocast_dtype: torch.dtype | None = None) -> SequenceLogps:
    """Log-probs without gradient (reference log-probs, held-out evaluation), on CPU."""
    device = next(iter(policy.model.parameters())).device
    was_training = policy.model.training
    policy.model.eval()
    try:
        with autocast_context(device, autocast_dtype):
            out = policy.logps(batch.to(device))
    finally:
        policy.model.train(was_training)
    return SequenceLogps(*(t.float().cpu() for t in (out.chosen, out.rejected, out.chosen_len,
                                                     out.rejected_len)))
