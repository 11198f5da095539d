"""The Moshi LM as a preference policy: pair tensors in, per-side sequence log-probs out.

A pair (components/streams/pairset.py ``PairTensors``) holds two undelayed [1 + 2q, T] streams
(text, q model codebooks, q user codebooks) that share their context; each side is scored inside
its own reply window [lo, hi) only. Two streams can be scored (``cfg.stream``):

* ``"text"`` — the text tokens of the window, teacher-forced on both audio streams. Only the
  temporal transformer and the text head run (``LMModel.forward_text``): the depformer gets no
  gradient and costs nothing.
* ``"joint"`` — text plus the model's own q audio codebooks in the window (the full forward with
  the depformer), the audio log-probs weighted by ``cfg.audio_weight``.

|y| (the length of a side for the length-normalised losses) is the number of scored text
positions (``length_norm="window"``: every frame of the window with a text token, PAD included,
since timing pairs differ mainly in where PAD falls) or of its word tokens (``"words"``: PAD and
EPAD left out); for ``"joint"`` the count of scored audio positions is added, unweighted (every
scored audio code is one more predicted token of the side, whatever weight its log-prob has).
NO_TOKEN (-1) is never scored and never counted.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models: no compile on CPU workers

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from moshi.models.lm import LMModel
from moshi.models.lm_utils import _delay_sequence, _undelay_sequence
from moshi.modules.lora import LoRALinear, replace_all_linear_with_lora

from components.common.config import TrainConfig
from components.contract import NO_TOKEN
from components.streams.pairset import PairTensors
from components.streams.tokenizer import EPAD_ID, PAD_ID
from components.train.attention import training_attention
from components.train.types import PairBatch, SequenceLogps

# Parameters of the depth transformer and its audio heads (everything else is "temporal").
DEPFORMER_PREFIXES = ("depformer.", "depformer_in.", "depformer_emb.", "depformer_text_emb.",
                      "depformer_norms.", "linears.")
# Embedding tables are lookups, not matmuls: left out of the FLOP count.
_EMBEDDING_PREFIXES = ("emb.", "text_emb.", "depformer_emb.", "depformer_text_emb.")


@dataclass
class MoshiPairBatch(PairBatch):
    """A PairBatch plus, for the joint stream, the scored audio positions of each side:
    bool [B, dep_q, T] over the model's own codebooks (rows 1..dep_q); None for "text"."""

    chosen_audio_mask: torch.Tensor | None = None
    rejected_audio_mask: torch.Tensor | None = None


def _is_depformer(name: str) -> bool:
    return name.startswith(DEPFORMER_PREFIXES)


def add_lora(lm: LMModel, rank: int, scaling: float) -> None:
    """LoRA on every Linear of the temporal transformer; every other weight frozen.

    moshi's LoRALinear initialises both factors at random, which would move the model before
    the first step; B is zeroed (the usual LoRA init) so the policy starts equal to the
    reference. A transformer that already has LoRA layers is not wrapped twice."""
    if not any(isinstance(m, LoRALinear) for m in lm.transformer.modules()):
        replace_all_linear_with_lora(lm.transformer, rank, scaling)
        for m in lm.transformer.modules():
            if isinstance(m, LoRALinear):
                torch.nn.init.zeros_(m.lora_B.weight)
    for name, p in lm.named_parameters():
        p.requires_grad_(".lora_A." in name or ".lora_B." in name)


class MoshiTextPolicy:
    """``PreferencePolicy`` over ``PairTensors`` for a moshi ``LMModel`` (see the module doc).

    Construction applies the config to the model in place: LoRA (``cfg.lora``), gradient
    checkpointing, and the causal attention kernel (components/train/attention.py). The kernel
    stays installed for the policy's lifetime rather than around ``logps`` only, because
    checkpointed layers are recomputed during backward, after ``logps`` has returned; it falls
    back to moshi's own attention wherever it would not be exact (streaming, T > context), so
    generation with the same model is unaffected. ``close()`` removes it."""

    def __init__(self, lm: LMModel, cfg: TrainConfig) -> None:
        if lm.dep_q < 1 or lm.n_q != 2 * lm.dep_q:
            raise ValueError(f"expected an LM reading 2q audio rows and predicting q "
                             f"(n_q={lm.n_q}, dep_q={lm.dep_q})")
        if any(d != 0 for d in lm.delays[:1]):
            # The text row is scored at the positions of the input; a delayed text stream would
            # need the windows shifted, which the pair format does not describe.
            raise ValueError(f"text delay {lm.delays[0]} != 0 is not supported")
        self.model = lm
        self.cfg = cfg
        if cfg.lora:
            add_lora(lm, cfg.lora_rank, cfg.lora_scaling)
        lm.transformer.checkpointing = bool(cfg.gradient_checkpointing)
        if lm.depformer is not None and cfg.stream == "joint":
            lm.depformer.checkpointing = bool(cfg.gradient_checkpointing)
        self._attention = contextlib.ExitStack()
        self._attention.enter_context(training_attention(lm))

    def close(self) -> None:
        """Give the model back its own attention forward."""
        self._attention.close()

    # ------------------------------------------------------------------ collate

    @property
    def joint(self) -> bool:
        return self.cfg.stream == "joint"

    def _side(self, codes: np.ndarray, window: tuple[int, int], T: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
        """Padded codes [K, T], text mask [T], audio mask [dep_q, T] (joint) and |y| of a side."""
        K, n = codes.shape
        padded = torch.full((K, T), NO_TOKEN, dtype=torch.long)
        padded[:, :n] = torch.from_numpy(np.asarray(codes, dtype=np.int64))
        lo, hi = window
        in_window = torch.zeros(T, dtype=torch.bool)
        in_window[lo:hi] = True
        text = padded[0]
        mask = in_window & (text != NO_TOKEN)
        if self.cfg.length_norm == "words":
            length = int((mask & (text != PAD_ID) & (text != EPAD_ID)).sum())
        else:
            length = int(mask.sum())
        audio = None
        if self.joint:
            q = self.model.dep_q
            delays = torch.tensor(self.model.delays[1:1 + q]).view(q, 1)
            # moshi's own validity (LMOutput.mask) for the unpadded side: code k at t is
            # predicted at delayed step t + delay_k, which must exist in the side's n frames;
            # using n (not the padded T) keeps a side's log-prob independent of its batch.
            valid = torch.arange(T).view(1, T) + delays < n
            audio = in_window.view(1, T) & valid & (padded[1:1 + q] != NO_TOKEN)
            length += int(audio.sum())
        return padded, mask, audio, float(max(length, 1))

    def collate(self, examples: Sequence[PairTensors]) -> MoshiPairBatch:
        """Right-pad the pairs to the longest (NO_TOKEN) and build the scored-position masks and
        |y| of each side (module docstring)."""
        if not examples:
            raise ValueError("cannot collate an empty list of pairs")
        rows = self.model.num_codebooks
        for ex in examples:
            ex.validate(num_codebooks=self.model.dep_q)
            if ex.chosen.shape[0] != rows:
                raise ValueError(f"{ex.pair_id}: {ex.chosen.shape[0]} rows, the LM reads {rows}")
        T = max(ex.frames for ex in examples)
        chosen = [self._side(ex.chosen, ex.chosen_window, T) for ex in examples]
        rejected = [self._side(ex.rejected, ex.rejected_window, T) for ex in examples]
        chosen_audio = [s[2] for s in chosen if s[2] is not None]
        rejected_audio = [s[2] for s in rejected if s[2] is not None]
        return MoshiPairBatch(
            chosen=torch.stack([s[0] for s in chosen]),
            rejected=torch.stack([s[0] for s in rejected]),
            chosen_mask=torch.stack([s[1] for s in chosen]),
            rejected_mask=torch.stack([s[1] for s in rejected]),
            chosen_len=torch.tensor([s[3] for s in chosen], dtype=torch.float32),
            rejected_len=torch.tensor([s[3] for s in rejected], dtype=torch.float32),
            pair_ids=[ex.pair_id for ex in examples], types=[ex.type for ex in examples],
            chosen_audio_mask=torch.stack(chosen_audio) if chosen_audio else None,
            rejected_audio_mask=torch.stack(rejected_audio) if rejected_audio else None)

    # ------------------------------------------------------------------ log-probs

    def _text_logits(self, codes: torch.Tensor) -> torch.Tensor:
        """Text logits [B, 1, T, text_card] aligned with ``codes``: LMModel.forward's
        preprocessing, then the temporal transformer and text head only."""
        lm = self.model
        B = codes.shape[0]
        initial = lm._get_initial_token().expand(B, -1, -1)
        delayed = torch.cat([initial, _delay_sequence(lm.delays, codes, initial)], dim=2)
        _, text_logits = lm.forward_text(delayed[:, :, :-1])
        text_logits, _ = _undelay_sequence(lm.delays[:1], text_logits, fill_value=float("nan"))
        return text_logits

    @staticmethod
    def _gathered_logps(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
                        ) -> torch.Tensor:
        """Per-sequence sums of log p(target) over ``mask`` [B, ...] (logits [B, ..., V]).

        Only the scored positions are gathered before the fp32 log-softmax: masked-out positions
        (which may hold moshi's NaN fill) are never read, so no NaN can reach the sum or the
        gradient, and a short window costs a few rows of log-softmax, not B x T."""
        index = mask.nonzero(as_tuple=True)
        picked = logits[index].float().log_softmax(dim=-1)
        token = picked.gather(-1, targets[index].unsqueeze(-1)).squeeze(-1)
        out = torch.zeros(mask.shape[0], dtype=torch.float32, device=logits.device)
        return out.index_add(0, index[0], token)

    def logps(self, batch: PairBatch) -> SequenceLogps:
        """Summed log-probs of each side over its scored positions, chosen and rejected run as
        one batch of 2B; differentiable w.r.t. the model's trainable parameters."""
        lm = self.model
        B = len(batch)
        codes = torch.cat([batch.chosen, batch.rejected]).long()
        text_mask = torch.cat([batch.chosen_mask, batch.rejected_mask])
        with training_attention(lm):  # a no-op while the policy's own install is active
            if self.joint:
                out = lm(codes)
                text_logits = out.text_logits
            else:
                text_logits = self._text_logits(codes)
        total = self._gathered_logps(text_logits[:, 0], codes[:, 0], text_mask)
        if self.joint:
            if (not isinstance(batch, MoshiPairBatch) or batch.chosen_audio_mask is None
                    or batch.rejected_audio_mask is None):
                raise ValueError("the joint stream needs a batch collated with stream='joint'")
            q = lm.dep_q
            audio_mask = torch.cat([batch.chosen_audio_mask, batch.rejected_audio_mask])
            audio_mask = audio_mask & out.mask  # moshi's validity, on top of collate's own
            audio = self._gathered_logps(out.logits, codes[:, 1:1 + q], audio_mask)
            total = total + self.cfg.audio_weight * audio
        return SequenceLogps(chosen=total[:B], rejected=total[B:],
                             chosen_len=batch.chosen_len.to(total.device),
                             rejected_len=batch.rejected_len.to(total.device))

    # ------------------------------------------------------------------ optimisation

    def param_groups(self) -> list[dict[str, Any]]:
        """"temporal" (transformer, embeddings, text head, out_norm) at cfg.temporal_lr and
        "depformer" (depth transformer, its inputs/embeddings/norms, audio heads) at
        cfg.depformer_lr; trainable parameters only, empty groups left out."""
        groups: dict[str, list[torch.nn.Parameter]] = {"temporal": [], "depformer": []}
        seen: set[int] = set()
        for name, p in self.model.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            groups["depformer" if _is_depformer(name) else "temporal"].append(p)
        lrs = {"temporal": self.cfg.temporal_lr, "depformer": self.cfg.depformer_lr}
        return [{"name": n, "params": ps, "lr": lrs[n]} for n, ps in groups.items() if ps]

    def positions(self, batch: PairBatch) -> int:
        """Frames one logps() runs through the model: 2 sides x B x T."""
        return 2 * len(batch) * int(batch.chosen.shape[-1])

    def train_flops_per_position(self) -> float:
        """6 x the parameters a frame goes through (embedding lookups excluded): the temporal
        transformer, out_norm and text head; for "joint" also the depformer, run dep_q times a
        frame — a module with one weight set per depformer step (moshi's weights_per_step) is
        used once per step it serves, so its FLOPs are its params x dep_q / its copies."""
        lm = self.model
        temporal = dep = 0.0
        seen: set[int] = set()
        for name, p in lm.named_parameters():
            if id(p) in seen or name.startswith(_EMBEDDING_PREFIXES):
                continue
            seen.add(id(p))
            if not _is_depformer(name):
                temporal += p.numel()
            elif self.joint:
                dep += p.numel() * lm.dep_q / _copies(lm, name)
        return 6.0 * (temporal + dep)


def _copies(lm: LMModel, name: str) -> int:
    """How many per-step copies the parameter ``name``'s module list holds (1 when shared):
    ``linears.3.weight`` → len(linears); ``depformer.layers.0.self_attn.in_projs.2.weight`` →
    len(in_projs)."""
    parts = name.split(".")
    module: Any = lm
    copies = 1
    for part in parts[:-1]:
        if part.isdigit() and isinstance(module, torch.nn.ModuleList) and module is not \
                getattr(getattr(lm, "depformer", None), "layers", None):
            copies = len(module)
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return max(copies, 1)
