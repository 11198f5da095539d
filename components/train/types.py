"""The data types every part of the trainer shares: a collated batch of preference pairs, the
per-pair sequence log-probs a policy computes, and the interface a policy implements.

A *policy* adapts one model family to the trainer: the Moshi LM (``moshi_policy.MoshiTextPolicy``,
pair tensors of the pairs dataset) or any Hugging Face causal LM (``hf_policy.HFCausalPolicy``,
token-id pairs). The losses, the optimizer, the step and the loop only see these types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import torch


@dataclass
class PairBatch:
    """Collated preference pairs (chosen and rejected side per pair, same T within the batch).

    ``chosen``/``rejected`` are the model inputs (Moshi: long [B, 1+2q, T]; HF: long [B, T]);
    ``*_mask`` are bool [B, T]: the positions whose log-prob is scored; ``*_len`` are float32 [B]:
    |y| for the length-normalised losses (>= 1)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_mask: torch.Tensor
    rejected_mask: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor
    pair_ids: list[str]
    types: list[str]
    attention_mask: torch.Tensor | None = None  # HF: long [B, T] of the chosen side
    rejected_attention_mask: torch.Tensor | None = None  # HF: long [B, T] of the rejected side

    def to(self, device: torch.device | str) -> "PairBatch":
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    def __len__(self) -> int:
        return len(self.pair_ids)


@dataclass
class SequenceLogps:
    """Per pair (fp32 [B]): summed log-probs of each side over its scored positions, and |y|."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor

    def detach(self) -> "SequenceLogps":
        return SequenceLogps(*(t.detach() for t in (self.chosen, self.rejected, self.chosen_len,
                                                    self.rejected_len)))

    def to(self, device: torch.device | str) -> "SequenceLogps":
        return SequenceLogps(*(t.to(device) for t in (self.chosen, self.rejected, self.chosen_len,
                                                      self.rejected_len)))

    @staticmethod
    def cat(parts: Sequence["SequenceLogps"]) -> "SequenceLogps":
        return SequenceLogps(*(torch.cat([getattr(p, n) for p in parts]) for n in
                               ("chosen", "rejected", "chosen_len", "rejected_len")))


class PreferencePolicy(Protocol):
    """What the trainer needs from a model family."""

    @property
    def model(self) -> torch.nn.Module:
        """The trainable model (read-only here: an adapter may narrow its type)."""
        ...

    def collate(self, examples: Sequence[Any]) -> PairBatch:
        """Pad and stack examples (pair tensors, token-id pairs) into one batch."""
        ...

    def logps(self, batch: PairBatch) -> SequenceLogps:
        """Sequence log-probs of both sides, differentiable w.r.t. the model's parameters."""
        ...

    def param_groups(self) -> list[dict[str, Any]]:
        """``[{"name": str, "params": [...], "lr": float}, ...]``: trainable params, by group."""
        ...

    def positions(self, batch: PairBatch) -> int:
        """Positions (frames or tokens) one ``logps(batch)`` processes, both sides."""
        ...

    def train_flops_per_position(self) -> float:
        """Training FLOPs per position (6 x parameters touched), for MFU."""
        ...
