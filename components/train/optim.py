"""Optimizer and learning-rate schedule of the preference trainer.

The paper trains the temporal transformer at LR 5e-9. An AdamW update is about lr in size
(Adam's direction is ≈ ±1 per weight), and an fp32 weight of magnitude ≥ 0.125 has a half-ulp of
≥ 7.5e-9: ``p += -5e-9`` rounds back to ``p``, so plain AdamW silently does not train those
weights (and distorts the smaller ones). ``KahanAdamW`` keeps, per weight, the part of each
update that rounding dropped (compensated summation) and adds it back on the next step, so the
weights move by the sum of their updates to within half an ulp, whatever the LR. Compute runs
under bf16 autocast; the weights themselves stay fp32 (the master copy *is* the model's params).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from components.common.config import TrainConfig


class KahanAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments, as torch.optim.AdamW) whose weight
    update is applied with Kahan summation.

    Per parameter the state holds ``step`` (int), ``exp_avg``, ``exp_avg_sq`` and ``comp`` (the
    compensation: what the stored weight holds in excess of the exact sum of its updates). With
    u = lr·m̂/(√v̂ + eps) + lr·wd·p the step is: y = −u − c; t = p + y; c = (t − p) − y; p = t.
    All four are in ``state_dict()``, so a resumed run continues bit for bit."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid betas {betas}")
        if eps <= 0:
            raise ValueError(f"invalid eps {eps}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        # Checked up front, not at the first step: a bf16 weight cannot hold a 5e-9 update even
        # compensated (the compensation would carry almost all of it), so refuse it at once.
        for p in self.param_groups[-1]["params"]:
            _require_fp32(p)

    @torch.no_grad()
    def step(  # type: ignore[override]  # torch types step() as two overloads
            self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue  # no gradient this step (e.g. the depformer under a text-only loss)
                if p.grad.is_sparse:
                    raise RuntimeError("KahanAdamW does not support sparse gradients")
                _require_fp32(p)
                grad = p.grad if p.grad.dtype == torch.float32 else p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["comp"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"]
                exp_avg, exp_avg_sq, comp = state["exp_avg"], state["exp_avg_sq"], state["comp"]
                # Moments exactly as torch.optim.AdamW (single-tensor path), for parity.
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction1 = 1 - beta1 ** step
                bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
                # One temporary the size of p (matters at 7B): denom, then u, then y in place.
                buf = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                torch.div(exp_avg, buf, out=buf)
                buf.mul_(lr / bias_correction1)  # u = Adam step ...
                if wd != 0:
                    buf.add_(p, alpha=lr * wd)  # ... + decoupled decay on the current weight
                y = buf.add_(comp).neg_()  # y = −u − c
                comp.copy_(p)  # comp := p_old (c was consumed into y)
                p.add_(y)  # p := t = p_old + y (rounded)
                comp.sub_(p).add_(y).neg_()  # c := (t − p_old) − y, exactly what rounding added
        return loss


def _require_fp32(p: torch.Tensor) -> None:
    if p.dtype != torch.float32:
        raise TypeError(f"KahanAdamW keeps fp32 master weights; got a {p.dtype} parameter of "
                        f"shape {tuple(p.shape)} (compute in bf16 under autocast, weights fp32)")


def make_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The trainer's optimizer over a policy's ``param_groups()`` (each group keeps its own
    ``lr`` and may set ``weight_decay``; ``name`` and other keys are carried along; a group
    without ``lr`` gets ``cfg.temporal_lr``).

    ``cfg.master_weights == "kahan"``: KahanAdamW; ``"plain"``: torch.optim.AdamW — both with
    ``cfg.adam_betas``, ``cfg.adam_eps`` and ``cfg.weight_decay`` as defaults. Groups without
    parameters are dropped (a frozen part has nothing to optimise)."""
    groups = [dict(g, params=list(g["params"])) for g in groups]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters in any group")
    betas = (cfg.adam_betas[0], cfg.adam_betas[1])
    if cfg.master_weights == "kahan":
        return KahanAdamW(groups, lr=cfg.temporal_lr, betas=betas, eps=cfg.adam_eps,
                          weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.temporal_lr, betas=betas, eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay)


def lr_lambda(step: int, *, warmup_steps: int, total_steps: int, schedule: str,
              min_lr_ratio: float) -> float:
    """LR multiplier of optimizer step ``step`` (0-based, as LambdaLR counts).

    Linear warm-up from 1/warmup_steps (step 0) to 1 (step warmup_steps − 1), then "cosine" or
    "linear" decay from 1 at step warmup_steps to ``min_lr_ratio`` at ``total_steps`` (held
    there beyond), or "constant" 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "linear":
        shape = 1.0 - progress
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``cfg.warmup_steps``/``cfg.schedule``/``cfg.min_lr_ratio`` over ``total_steps`` optimizer
    steps, scaling every group's own LR. Call ``.step()`` after each optimizer step; its
    ``state_dict()`` (with the optimizer's) resumes the schedule."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    # The schedule is a pure function of the step: LambdaLR's state (last_epoch, base_lrs) is all
    # a resume needs, and the multiplier is rebuilt from the config.
    fn = functools.partial(lr_lambda, warmup_steps=cfg.warmup_steps, total_steps=total_steps,
                           schedule=cfg.schedule, min_lr_ratio=cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
