"""Helpers of the model tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import torch

from components.streams.interleave import StreamLayout


def random_codes(lm, batch: int, frames: int, seed: int) -> torch.Tensor:
    """Random [B, 1 + 2q, T] codes: text ids < text_card, audio codes < card."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, lm.card, (batch, lm.num_codebooks, frames), generator=g)
    codes[:, 0] = torch.randint(0, lm.text_card, (batch, frames), generator=g)
    return codes


def Layout(num_codebooks: int, text_card: int = 1000, card: int = 256) -> StreamLayout:
    """The stream layout of the tests: the embedded tokenizer's 1000 ids, 256 codes per level."""
    return StreamLayout(num_codebooks=num_codebooks, text_card=text_card, card=card)
