"""Causal self-attention of the temporal transformer for training: ``is_causal=True`` instead of
moshi's explicit boolean bias.

moshi's ``StreamingMultiheadAttention`` always builds a [B, 1, T, T] boolean mask (causal and
context window) and hands it to ``F.scaled_dot_product_attention``. An explicit mask rules out
the flash-attention kernel on CUDA (the memory-efficient / math kernels run instead, and the
mask itself costs T² memory). In training the module is not streaming (no KV cache, offset 0)
and, when T <= context, the context limit never bites (the largest query-key distance is T - 1),
so the mask is exactly the causal triangle and ``is_causal=True`` computes the same attention.

Anything else (streaming, cross-attention, non-causal, T > context) falls back to moshi's own
forward, so wrapping a module is always exact.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi: no compile on CPU workers

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from einops import rearrange
from moshi.models.lm import LMModel
from moshi.modules.transformer import (
    StreamingMultiheadAttention,
    apply_weights_per_step,
    expand_repeated_kv,
)
from torch.nn import functional as F

# Marks a forward installed by training_attention, so a nested context leaves it alone.
_MARK = "_duplexalign_training_attention"


def _uses_causal_kernel(mha: StreamingMultiheadAttention, T: int) -> bool:
    """True when moshi's bias would be exactly the causal triangle (see the module docstring)."""
    return (mha._streaming_state is None and not mha.cross_attention and mha.causal
            and (mha.context is None or T <= mha.context))


def _causal_attention(mha: StreamingMultiheadAttention, query: torch.Tensor) -> torch.Tensor:
    """moshi's non-streaming self-attention (offset 0), with ``is_causal=True``."""
    B = query.shape[0]
    projected = apply_weights_per_step(mha.in_projs, mha.weights_per_step_schedule, query, 0)
    if mha.kv_repeat == 1:
        q, k, v = rearrange(projected, "b t (p h d) -> p b h t d", p=3, h=mha.num_heads)
    else:
        q = rearrange(projected[:, :, :mha.embed_dim], "b t (h d) -> b h t d", h=mha.num_heads)
        k, v = rearrange(projected[:, :, mha.embed_dim:], "b t (p kh d) -> p b kh t d", p=2,
                         kh=mha.num_heads // mha.kv_repeat)
    if mha.rope:
        offset = torch.zeros(B, device=query.device, dtype=torch.long)
        q, k = mha.rope(q, k, offset, time_before_heads=False)
    if mha.kv_repeat > 1:
        k = expand_repeated_kv(k, mha.kv_repeat)
        v = expand_repeated_kv(v, mha.kv_repeat)
    x = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=True)
    x = rearrange(x, "b h t d -> b t (h d)")
    return apply_weights_per_step(mha.out_projs, mha.weights_per_step_schedule, x, 0)


def _forward(self: StreamingMultiheadAttention, query: torch.Tensor, key: torch.Tensor,
             value: torch.Tensor) -> torch.Tensor:
    """The per-instance forward: the causal kernel when exact, else the class's own forward.
    It closes over nothing, so a deep copy of the model (a reference model, a merged export)
    stays correct: the copied bound method is rebound to the copied module."""
    if _uses_causal_kernel(self, query.shape[1]) and key is query and value is query:
        return _causal_attention(self, query)
    return type(self).forward(self, query, key, value)


setattr(_forward, _MARK, True)


@contextmanager
def training_attention(lm: LMModel) -> Iterator[None]:
    """While active, the temporal transformer's self-attention layers use the causal kernel when
    that is exact, moshi's forward otherwise. The depformer is left as it is (its sequences are
    dep_q steps long: nothing to gain). Re-entrant: an inner context is a no-op."""
    patched: list[StreamingMultiheadAttention] = []
    try:
        for module in lm.transformer.modules():
            if not isinstance(module, StreamingMultiheadAttention):
                continue
            if getattr(module.__dict__.get("forward"), _MARK, False):
                continue  # an outer training_attention already did it
            if "forward" in module.__dict__:
                continue  # someone else's per-instance forward: do not stack on it
            module.forward = types.MethodType(_forward, module)  # type: ignore[method-assign]
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward
