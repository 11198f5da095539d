"""Data-parallel preference training across processes: torchrun's environment, the process group,
FSDP, each rank's share of a step's pairs, metrics summed over ranks, full state dicts.

One code path for every scale: a single process (CPU or one GPU) gets a ``DistContext`` of world
size 1 and every function here is then a no-op or the identity, so the trainer never branches on
"distributed or not". Under ``torchrun`` (one process per GPU, any number of nodes) the model is
sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``): full fine-tuning of the 7B Moshi LM
needs ~140 GB of fp32 master weights, Adam moments, Kahan compensation and gradients
(docs/train.md, "Scale"), more than one 80 GB GPU holds; FSDP splits all of it across the ranks.

Sharding units are the transformer layers (moshi's ``StreamingTransformerLayer`` of the temporal
and depth transformers), then the root, which holds the embeddings, the text head and the
depformer's input/output projections (Hugging Face causal LMs train in one process). The
text-only policy calls ``lm.forward_text`` rather than ``lm(...)``: it is registered as an FSDP
forward method so the root's parameters are gathered for it too.

Mixed precision: on CUDA the shards stay fp32 (the optimizer's master weights, so 5e-9 updates
survive with Kahan summation) and are all-gathered in bf16 for compute, gradients reduced in fp32;
on CPU everything stays fp32 (gloo, tests).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:  # only read (cfg.device, cfg.autocast): importable with torch and moshi alone
    from components.common.config import TrainConfig

# Methods of a model that run a forward pass without going through ``module.__call__``; FSDP must
# gather the root's parameters for them as for ``forward`` (moshi's text-only path).
FORWARD_METHODS = ("forward_text",)

ModelT = TypeVar("ModelT", bound=nn.Module)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its global rank, the number of processes, its rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DistContext":
        """Read torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE); a single
        process when neither RANK nor WORLD_SIZE is set."""
        env = os.environ if environ is None else environ
        if "RANK" not in env and "WORLD_SIZE" not in env:
            return cls()
        if "RANK" not in env or "WORLD_SIZE" not in env:
            # Half a launcher environment is a deployment bug: guessing would train a wrong shard.
            raise ValueError("RANK and WORLD_SIZE must be set together (torchrun sets both)")
        try:
            rank = int(env["RANK"])
            world = int(env["WORLD_SIZE"])
            local_rank = int(env.get("LOCAL_RANK", rank))
            local_world = int(env.get("LOCAL_WORLD_SIZE", world))
        except ValueError as exc:
            raise ValueError(f"torchrun variables must be integers: {exc}") from None
        if world < 1 or not 0 <= rank < world or not 0 <= local_rank < local_world:
            raise ValueError(f"inconsistent torchrun variables: RANK={rank} WORLD_SIZE={world} "
                             f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}")
        return cls(rank=rank, world_size=world, local_rank=local_rank,
                   local_world_size=local_world)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs to MLflow, writes checkpoints and registers the model."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def device(self, requested: str = "auto") -> torch.device:
        """This process's device: ``"auto"`` = its node-local GPU when CUDA is available, else
        the CPU; ``"cuda"`` = its node-local GPU; anything else as given (single process)."""
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        if requested == "cuda":
            return torch.device("cuda", self.local_rank)
        device = torch.device(requested)
        if self.is_distributed and device.type == "cuda" and device.index not in (None,
                                                                                   self.local_rank):
            raise ValueError(f"rank {self.rank} must use cuda:{self.local_rank}, not {device}")
        return device


def is_main(ctx: DistContext | None = None) -> bool:
    """Whether this process is rank 0 (from torchrun's environment when no context is given)."""
    return (ctx or DistContext.from_env()).is_main


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(ctx: DistContext, device: torch.device, *,
                     timeout_s: float = 1800.0) -> bool:
    """Join the process group (env:// rendezvous: MASTER_ADDR/MASTER_PORT, set by torchrun).
    Returns True when this call created it; a single process, or a group that already exists,
    is left as it is."""
    if not ctx.is_distributed or dist.is_initialized():
        return False
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # binds NCCL to this GPU up front
    dist.init_process_group(backend=backend_for(device), rank=ctx.rank,
                            world_size=ctx.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return True


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(ctx: DistContext, device: torch.device, *,
                  timeout_s: float = 1800.0) -> Iterator[DistContext]:
    """``init_distributed`` for the duration of a block; the group is destroyed on exit only if
    this block created it."""
    created = init_distributed(ctx, device, timeout_s=timeout_s)
    try:
        yield ctx
    finally:
        if created:
            destroy_distributed()


# ---------------------------------------------------------------------------------------------
# FSDP


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The submodules FSDP shards as units (all-gathered one at a time in forward and backward):
    moshi's transformer layers, temporal and depth."""
    from moshi.modules.transformer import StreamingTransformerLayer

    return [m for m in model.modules() if isinstance(m, StreamingTransformerLayer)]


def _fsdp_compatible(cls: type[nn.Module]) -> None:
    """Let FSDP2 wrap instances of ``cls``, a subclass of moshi's ``StreamingModule``.

    fully_shard swaps ``module.__class__`` for ``type("FSDP<cls>", (FSDPModule, cls), {})``.
    StreamingModule lists ``abc.ABC`` before ``nn.Module`` among its bases, which changes the
    C-level layout chain, and CPython refuses that assignment ("object layout differs"). The
    same class with ``cls`` first keeps cls's layout; FSDPModule's methods are still found through
    the MRO, except the two it overrides on nn.Module, put back here: ``__new__`` (with the
    original class at MRO index 1, FSDPModule's own knob) and ``_apply`` (``.to()``,
    ``.to_empty()``: reshard first, then re-register the sharded parameters). It goes into
    fully_shard's own class cache, so fully_shard uses it."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp._fully_shard._fully_shard import get_cls_to_fsdp_cls

    cache = get_cls_to_fsdp_cls()
    if cls in cache:
        return

    def _apply(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.reshard()
        ret = cls._apply(self, *args, **kwargs)
        state = self._get_fsdp_state()
        with torch.no_grad():
            for group in state._fsdp_param_groups:
                for param in group.fsdp_params:
                    param.reset_sharded_param()
        return ret

    def _no_deepcopy(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("FSDP does not support deepcopy; use a state dict")

    cache[cls] = type(f"FSDP{cls.__name__}", (cls, FSDPModule),
                      {"__new__": FSDPModule.__new__, "_apply": _apply, "_orig_cls_mro_index": 1,
                       "__deepcopy__": _no_deepcopy})


def mixed_precision(cfg: TrainConfig, device: torch.device) -> Any:
    """FSDP's precision: bf16 all-gathered parameters and fp32 gradient reduction on CUDA (unless
    ``cfg.autocast == "off"``); fp32 throughout on CPU."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device.type == "cuda" and cfg.autocast in ("auto", "bf16"):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def wrap_model(model: ModelT, ctx: DistContext, cfg: TrainConfig, *,
               device: torch.device | None = None) -> ModelT:
    """The model as the trainer should use it: unchanged in a single process (the caller puts it
    on its device); sharded with FSDP2 over all ranks otherwise (parameters move to ``device``,
    default ``ctx.device(cfg.device)``; the object stays the same, its parameters become
    DTensor shards). Build the optimizer AFTER wrapping, on the sharded parameters. Call after
    ``init_distributed``; a model built on the meta device is sharded without ever holding the
    full weights (then ``model.to_empty(device=...)`` and ``load_full_model_state_dict``)."""
    if not ctx.is_distributed:
        return model
    from moshi.models.lm import LMModel

    if not isinstance(model, LMModel):
        # HFCausalPolicy calls the decoder and the head directly, outside the root's forward, so
        # the root's parameters would never be gathered. Hugging Face models train in one process.
        raise NotImplementedError(f"FSDP is set up for moshi's LMModel, not {type(model).__name__}")
    if not dist.is_initialized():
        raise RuntimeError("wrap_model needs the process group: call init_distributed first")
    from moshi.modules.streaming import StreamingModule
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    device = device or ctx.device(cfg.device)
    mesh = init_device_mesh(device.type, (ctx.world_size,))
    policy = mixed_precision(cfg, device)
    units = shard_units(model)
    for module in [*units, model]:
        if isinstance(module, StreamingModule):
            _fsdp_compatible(type(module))
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    _register_forward_methods(model, register_fsdp_forward_method)
    return model


def _register_forward_methods(model: nn.Module, register: Any) -> None:
    """Make each of FORWARD_METHODS gather the root's parameters like ``forward`` does, but only
    when called on its own: moshi's ``forward`` itself calls ``self.forward_text``, and an FSDP
    forward nested in another marks the root idle when it returns, so the end of the outer
    forward frees the root's gathered parameters that the depformer's backward still needs
    (torch 2.11 on CUDA: "storage of size 0"; 2.13 gathers them again in backward)."""
    depth = [0]

    def enter(module: nn.Module, args: Any) -> None:
        depth[0] += 1

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        depth[0] -= 1

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)
    for name in FORWARD_METHODS:
        if not callable(getattr(model, name, None)):
            continue
        register(model, name)
        gathered = getattr(model, name)  # FSDP's: pre-forward, the method, post-forward
        own = getattr(type(model), name).__get__(model)  # the class's own method

        def method(*args: Any, _gathered: Any = gathered, _own: Any = own, **kwargs: Any) -> Any:
            return (_own if depth[0] else _gathered)(*args, **kwargs)

        setattr(model, name, method)


# ---------------------------------------------------------------------------------------------
# Data and metrics


def shard_examples(n: int, ctx: DistContext) -> range:
    """This rank's contiguous slice of a step's ``n`` examples (indices into the step's list):
    sizes differ by at most one, the first ``n % world_size`` ranks take one more, the slices
    partition ``range(n)``. A rank may get none when ``n < world_size``."""
    if n < 0:
        raise ValueError("n must be >= 0")
    base, extra = divmod(n, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    return range(start, start + base + (1 if ctx.rank < extra else 0))


def local_loss_weight(local: int, total: int, ctx: DistContext) -> float:
    """Factor on this rank's mean loss over its ``local`` pairs so that the gradient FSDP averages
    over ranks is the gradient of the mean over all ``total`` pairs of the step (exact even when
    the step does not split evenly): local x world_size / total."""
    if total <= 0:
        raise ValueError("a step needs at least one pair")
    return local * ctx.world_size / total


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """Per key, the sum over ranks (one collective for all keys, float64); the values themselves
    in a single process. Every rank must pass the same keys."""
    keys = sorted(values)
    if not ctx.is_distributed:
        return {k: float(values[k]) for k in keys}
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.cpu().tolist()))


def all_reduce_mean(values: Mapping[str, float], ctx: DistContext, *,
                    weight: float = 1.0) -> dict[str, float]:
    """Per key, the mean over ranks weighted by ``weight`` (e.g. this rank's pairs, so per-rank
    means combine into the step's mean over all pairs)."""
    weighted = {k: float(v) * weight for k, v in values.items()}
    if "__weight__" in weighted:
        raise ValueError("'__weight__' is reserved")
    sums = all_reduce_sum({**weighted, "__weight__": weight}, ctx)
    total = sums.pop("__weight__")
    if total <= 0:
        raise ValueError("the weights sum to zero over the ranks")
    return {k: v / total for k, v in sums.items()}


def broadcast_object(obj: Any, ctx: DistContext, *, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (a run id, a stop decision, a checkpoint path)."""
    if not ctx.is_distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# Full (unsharded) state, for checkpoints written by rank 0 and for loading on every rank


def full_model_state_dict(model: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """The unsharded weights on CPU under the model's own parameter names: on rank 0 (every
    rank must call this: it all-gathers); an empty dict on the other ranks."""
    if not ctx.is_distributed:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_full_model_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor],
                               ctx: DistContext) -> None:
    """Load unsharded weights that only rank 0 needs to hold (the others pass ``{}``): rank 0
    broadcasts, every rank keeps its shard. Single process: ``load_state_dict(strict=True)``."""
    if not ctx.is_distributed:
        model.load_state_dict(dict(state), strict=True)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, dict(state) if ctx.is_main else {},
                         options=StateDictOptions(full_state_dict=True,
                                                  broadcast_from_rank0=True))


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer,
                              ctx: DistContext) -> dict[str, Any]:
    """The optimizer's state (moments, step, Kahan compensation: whatever it keeps per
    parameter) unsharded on CPU, keyed by parameter name, on rank 0; ``{}`` on the others.
    Single process: ``optimizer.state_dict()``."""
    if not ctx.is_distributed:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         get_optimizer_state_dict)

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True,
                                                             cpu_offload=True))


def load_full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer,
                                   state: Mapping[str, Any], ctx: DistContext) -> None:
    """Inverse of ``full_optimizer_state_dict`` (rank 0 holds it, the others pass ``{}``)."""
    if not ctx.is_distributed:
        optimizer.load_state_dict(dict(state))
        return
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         set_optimizer_state_dict)

    set_optimizer_state_dict(model, optimizer, dict(state) if ctx.is_main else {},
                             options=StateDictOptions(full_state_dict=True,
                                                      broadcast_from_rank0=True))
