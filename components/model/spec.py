"""Architecture presets of the Moshi LM (moshi.models.lm.LMModel) and deterministic construction.

Every preset is a plain kwargs dict for ``LMModel`` — exactly what Kyutai's ``config.json`` holds —
so a checkpoint written by components/model/checkpoint.py is loaded by moshi's own loader without
any code of ours. The stream layout (text card, codec card, codebooks per side) comes from
components/streams, the one owner of the stream format.

Measured on this project's 2-core CPU machine (fp32, text_card 1000, card 256, batch 8 x 192
frames, ``torch.no_grad`` forward of the training path):

======  ==========  ==========  ==================
size    codebooks   parameters  forward frames/s
======  ==========  ==========  ==================
tiny    4 + 4       1.06 M      ~36,000
tiny    8 + 8       1.46 M      ~28,000
small   4 + 4       4.59 M      ~12,700
small   8 + 8       5.51 M      ~11,200
======  ==========  ==========  ==================
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models: no compile on CPU workers

import copy
from typing import Any

import torch
from moshi.models import loaders
from moshi.models.lm import LMModel

from components.streams.interleave import StreamLayout, moshi_delays

SIZES = ("tiny", "small", "moshi-7b")

# Shared by the small presets: Moshi 7B's choices (RMSNorm in fp32, RoPE, SiLU gating, a
# depformer with one set of weights per codebook step and no positional embedding), so a small
# model exercises the same code paths as the production one (LMGen, the loader, LoRA).
_COMMON: dict[str, Any] = {
    "causal": True,
    "layer_scale": None,
    "max_period": 10000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "depformer_layer_scale": None,
    "depformer_multi_linear": True,
    "depformer_max_period": 10000,
    "depformer_gating": "silu",
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
}

# (dim, layers, heads, hidden_scale, depformer dim, depformer layers, depformer heads)
_SMALL_SHAPES: dict[str, tuple[int, int, int, float, int, int, int]] = {
    "tiny": (128, 2, 4, 4, 32, 1, 2),  # ~1.1 M params: unit tests, the ci profile
    "small": (256, 4, 4, 4, 64, 1, 4),  # ~4.6 M params: the embedded champion
}


def lm_kwargs(size: str, layout: StreamLayout, context: int) -> dict[str, Any]:
    """``LMModel`` kwargs for a preset and a stream layout.

    The depformer predicts the model's q codebooks (``dep_q = q``); the LM reads 2q (model + user,
    ``n_q = 2q``), as Moshi does. ``context`` is the temporal transformer's window in frames.
    """
    q = int(layout.num_codebooks)
    common = {
        "text_card": int(layout.text_card),
        "card": int(layout.card),
        "n_q": 2 * q,
        "dep_q": q,
        "delays": moshi_delays(q),
        "existing_text_padding_id": 3,
        "existing_text_end_padding_id": 0,
        "context": int(context),
        "depformer_context": q,
    }
    if size == "moshi-7b":
        # Kyutai's 7B config, with our stream layout (text/codec cards, codebooks) and context.
        return {**copy.deepcopy(loaders._lm_kwargs), **common}
    if size not in _SMALL_SHAPES:
        raise ValueError(f"unknown model size {size!r}; choose one of {SIZES}")
    dim, layers, heads, hidden_scale, ddim, dlayers, dheads = _SMALL_SHAPES[size]
    return {
        **_COMMON,
        **common,
        "dim": dim,
        "num_layers": layers,
        "num_heads": heads,
        "hidden_scale": hidden_scale,
        "depformer_dim": ddim,
        "depformer_dim_feedforward": int(hidden_scale * ddim),
        "depformer_num_layers": dlayers,
        "depformer_num_heads": dheads,
    }


def build_lm(kwargs: dict[str, Any], seed: int, dtype: torch.dtype = torch.float32) -> LMModel:
    """A freshly initialised LM, identical for identical (kwargs, seed), on CPU.

    Built through moshi's own ``get_moshi_lm`` (the loader path) so LoRA keys etc. are handled
    the same way as when loading; the global RNG is forked so seeding here does not disturb the
    caller's random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = loaders.get_moshi_lm(None, lm_kwargs=dict(kwargs), device="cpu", dtype=dtype)
    return lm


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
