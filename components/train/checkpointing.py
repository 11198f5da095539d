"""The trainer's checkpoint plumbing: full (unsharded) weights and optimizer state for
``resume.pt`` and the best checkpoint, in a single process or gathered from FSDP shards, and
back, across world sizes.

Layouts of the optimizer state in resume.pt: torch's own ``state_dict()`` (parameters by index;
a single process) or the full per-name state of torch.distributed.checkpoint (FSDP); a resume
file written at one world size loads at another (tests/components/train/test_trainer_distributed.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from components.train.distributed import (
    DistContext,
    broadcast_object,
    full_model_state_dict,
    full_optimizer_state_dict,
)

INDEXED, NAMED = "indexed", "named"


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def reshard(model: torch.nn.Module) -> None:
    """Put an FSDP root's parameters back into their shards (nothing otherwise). FSDP2 keeps the
    root unsharded after a forward (it expects the backward to need it at once): after a no-grad
    forward (scoring, evaluation) the model's registered parameters are the full tensors, not
    the shards the optimizer holds, until the next backward."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reshard()


def _param_order(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters by name, in its own (index) order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _indexed_to_named(state: dict[str, Any], order: list[str]) -> dict[str, Any]:
    return {"state": {order[int(i)]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]}
                             for g in state["param_groups"]]}


def _named_to_indexed(state: dict[str, Any], order: list[str]) -> dict[str, Any]:
    index = {n: i for i, n in enumerate(order)}
    return {"state": {index[n]: v for n, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                             for g in state["param_groups"]]}


def full_weights(model: torch.nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """The unsharded weights on CPU (rank 0; ``{}`` elsewhere). Collective when distributed."""
    if not ctx.is_distributed:
        return model_state(model)
    return {k: v.contiguous() for k, v in full_model_state_dict(model, ctx).items()}


def _stateful_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> set[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in optimizer.state}


def _drop_state_except(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       names: set[str]) -> None:
    """Forget the optimizer state of parameters not in ``names``. torch.distributed.checkpoint
    gives an optimizer without state one by a step at LR 0 (every parameter: step 1, zero
    moments), which would change the bias correction of parameters that had no gradient yet
    (the depformer under the text-only loss) from a single process's."""
    for name, p in model.named_parameters():
        if name not in names:
            optimizer.state.pop(p, None)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         ctx: DistContext) -> tuple[dict[str, Any], str]:
    """The optimizer's state for resume.pt and its layout: torch's state_dict() in a single
    process; the full per-name state on rank 0 (``{}`` elsewhere), a collective, when
    distributed."""
    if not ctx.is_distributed:
        return optimizer.state_dict(), INDEXED
    had = _stateful_names(model, optimizer)
    state = full_optimizer_state_dict(model, optimizer, ctx)
    _drop_state_except(model, optimizer, had)
    if ctx.is_main:
        state = {**state, "state": {k: v for k, v in state["state"].items() if k in had}}
    return state, NAMED


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any], layout: str, ctx: DistContext) -> None:
    """Inverse of ``full_optimizer_state`` (``state``: rank 0's; others pass ``{}``),
    converting a resume.pt written at another world size."""
    if not ctx.is_distributed:
        if layout != INDEXED:
            state = _named_to_indexed(state, _param_order(model, optimizer))
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if ctx.is_main and layout == INDEXED:
        state = _indexed_to_named(state, _param_order(model, optimizer))
    names = set(broadcast_object(list(state["state"]) if ctx.is_main else None, ctx))
    # distributed.load_full_optimizer_state_dict is strict: a parameter that never had a
    # gradient (the depformer under the text-only loss) has no saved state, which is right.
    set_optimizer_state_dict(model, optimizer, state if ctx.is_main else {},
                             options=StateDictOptions(full_state_dict=True,
                                                      broadcast_from_rank0=True, strict=False))
    _drop_state_except(model, optimizer, names)
    for group in optimizer.param_groups:  # the broadcast turns tuples into lists
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
