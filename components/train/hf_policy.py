"""Any Hugging Face causal LM as a preference policy: token-id pairs in, sequence log-probs out.

The text-only counterpart of ``moshi_policy``: a pair is a prompt (the dialogue so far) and two
completions; each side is the sequence prompt + completion and only the completion is scored
(the logits at t − 1 score the token at t, as in TRL's DPOTrainer). |y| is the completion's
token count (a text LM has no PAD/EPAD stream: ``length_norm`` does not apply).

Where the time goes in preference training of a real LM is the LM head: a 2k-hidden model with
a 32k–150k vocabulary spends as much on the head as on several transformer layers, at every
position. Dialogue prompts are long and replies short, so we run the backbone once over the
whole sequence, gather the hidden states of the scored positions only, and apply the head (and
the log-softmax) to those alone. Chosen and rejected run as one batch of 2B.

Right padding makes the attention mask unnecessary for the scored positions: with causal
attention a real token never sees the pads after it, and position ids are 0..T−1 either way. So
the backbone runs without a mask (SDPA's ``is_causal`` path, no [2B, 1, T, T] mask to build);
the pads' own hidden states are garbage and never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from components.common.config import TrainConfig
from components.train.types import PairBatch, SequenceLogps

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from components.common.config import Config


@dataclass(frozen=True)
class TextPair:
    """One preference pair of token ids (the prompt shared by both completions)."""

    pair_id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def _apply_lora(model: "PreTrainedModel", cfg: TrainConfig) -> torch.nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise RuntimeError("train.lora=true on a Hugging Face model needs the `peft` package "
                           "(pip install peft), which is not installed") from exc
    # peft scales the adapter by lora_alpha / r; moshi's LoRA (the Moshi path) by `scaling`:
    # alpha = scaling × rank makes the two settings mean the same thing.
    conf = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_scaling * cfg.lora_rank,
                      lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, conf)


class HFCausalPolicy:
    """PreferencePolicy over a ``transformers`` causal LM (``*ForCausalLM``: a decoder backbone
    and an output embedding). ``pad_id`` fills the right padding (never scored, never attended
    by a scored position). ``max_length`` (optional) cuts the START of long prompts so that
    prompt + the longer completion fits (dialogue: the latest turns matter most)."""

    def __init__(self, model: "PreTrainedModel", cfg: TrainConfig, pad_id: int,
                 max_length: int | None = None) -> None:
        self.cfg = cfg
        self.pad_id = int(pad_id)
        self.max_length = max_length
        if cfg.gradient_checkpointing:
            # Non-reentrant: works with inputs that need no grad and with no_grad scoring.
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # training: no KV cache to build and throw away
        wrapped: Any = _apply_lora(model, cfg) if cfg.lora else model
        self.model: torch.nn.Module = wrapped
        # The causal LM itself (under a peft wrapper when LoRA is on: its layers are patched in
        # place, so the backbone and head found here are the ones that train).
        self._lm: Any = wrapped.get_base_model() if cfg.lora else model
        text_cfg = self._lm.config.get_text_config()
        self._softcap = getattr(text_cfg, "final_logit_softcapping", None)
        self._logit_scale = getattr(text_cfg, "logit_scale", None)

    # ------------------------------------------------------------------ batches

    def _sequences(self, pair: TextPair) -> tuple[list[int], int, list[int], int]:
        prompt = list(pair.prompt_ids)
        if self.max_length is not None:
            room = self.max_length - max(len(pair.chosen_ids), len(pair.rejected_ids))
            if room < 1:
                raise ValueError(f"{pair.pair_id}: a completion alone fills max_length "
                                 f"{self.max_length}")
            prompt = prompt[-room:] if len(prompt) > room else prompt
        return (prompt + list(pair.chosen_ids), len(prompt),
                prompt + list(pair.rejected_ids), len(prompt))

    def collate(self, examples: Sequence[TextPair]) -> PairBatch:
        """Right-pad both sides of every pair to one length T (the batch's longest sequence)."""
        if not examples:
            raise ValueError("collate needs at least one pair")
        rows = [self._sequences(p) for p in examples]
        T = max(max(len(c), len(r)) for c, _, r, _ in rows)
        B = len(examples)
        ids = {s: torch.full((B, T), self.pad_id, dtype=torch.long) for s in ("c", "r")}
        attn = {s: torch.zeros((B, T), dtype=torch.long) for s in ("c", "r")}
        score = {s: torch.zeros((B, T), dtype=torch.bool) for s in ("c", "r")}
        for i, (c, pc, r, pr) in enumerate(rows):
            for s, seq, n_prompt in (("c", c, pc), ("r", r, pr)):
                ids[s][i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                attn[s][i, :len(seq)] = 1
                # Position 0 has no preceding logits: never scored (TRL drops it the same way).
                score[s][i, max(n_prompt, 1):len(seq)] = True
        lens = {s: score[s].sum(1).float().clamp(min=1.0) for s in ("c", "r")}
        return PairBatch(chosen=ids["c"], rejected=ids["r"], chosen_mask=score["c"],
                         rejected_mask=score["r"], chosen_len=lens["c"], rejected_len=lens["r"],
                         pair_ids=[p.pair_id for p in examples], types=["text"] * B,
                         attention_mask=attn["c"], rejected_attention_mask=attn["r"])

    # ------------------------------------------------------------------ log-probs

    def _head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self._lm.get_output_embeddings()(hidden).float()
        if self._logit_scale is not None:
            logits = logits * self._logit_scale
        if self._softcap is not None:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def logps(self, batch: PairBatch) -> SequenceLogps:
        """Summed log-probs of each side's completion tokens (fp32, differentiable)."""
        ids = torch.cat([batch.chosen, batch.rejected])  # [2B, T]
        mask = torch.cat([batch.chosen_mask, batch.rejected_mask])
        # The last column is never a predictor and columns past the longest scored token are
        # never read: trim them before the backbone runs.
        last = int(mask.any(0).nonzero().max()) if bool(mask.any()) else 0
        ids, mask = ids[:, :last + 1], mask[:, :last + 1]
        hidden = self._lm.get_decoder()(input_ids=ids[:, :-1] if last > 0 else ids,
                                        use_cache=False).last_hidden_state
        rows, cols = mask.nonzero(as_tuple=True)
        logits = self._head_logits(hidden[rows, cols - 1])  # [N, V]: scored positions only
        targets = ids[rows, cols]
        token_logps = logits.gather(1, targets[:, None]).squeeze(1) - logits.logsumexp(1)
        per_seq = torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device)
        per_seq = per_seq.index_add(0, rows, token_logps)
        B = len(batch)
        return SequenceLogps(per_seq[:B], per_seq[B:], batch.chosen_len.float(),
                             batch.rejected_len.float())

    # ------------------------------------------------------------------ bookkeeping

    def param_groups(self) -> list[dict[str, Any]]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return [{"name": "model", "params": params, "lr": self.cfg.temporal_lr}]

    def positions(self, batch: PairBatch) -> int:
        """Non-pad tokens of both sides (what TRL's and our tokens/s count)."""
        if batch.attention_mask is None or batch.rejected_attention_mask is None:
            return 2 * int(batch.chosen.numel())
        return int(batch.attention_mask.sum() + batch.rejected_attention_mask.sum())

    def _backbone_matmul_params(self) -> int:
        emb = self._lm.get_input_embeddings().weight
        return sum(p.numel() for p in self._lm.get_decoder().parameters() if p is not emb)

    def train_flops_per_position(self) -> float:
        """6 × the backbone's matmul parameters (the input embedding is a lookup). The LM head
        runs at the scored positions only, so it is not a per-position cost: MFU from this
        figure leaves the head out (``train_flops`` counts it exactly)."""
        return 6.0 * self._backbone_matmul_params()

    def train_flops(self, batch: PairBatch) -> float:
        """Training FLOPs of one logps + backward on ``batch``: the backbone at every non-pad
        position, the head at the scored ones (attention scores left out, as in 6N)."""
        head = self._lm.get_output_embeddings().weight.numel()
        scored = int(batch.chosen_mask.sum() + batch.rejected_mask.sum())
        return self.train_flops_per_position() * self.positions(batch) + 6.0 * head * scored


def _local_folder(source: str, cfg: "Config") -> str:
    if not source.startswith("s3://"):
        return source
    from components.common.storage import cached_s3_folder

    cache = Path(cfg.model.cache_dir).parent / "hf"
    return str(cached_s3_folder(source, cfg.storage, cache, "config.json"))


def load_hf_policy(source: str, cfg: "Config", *, max_length: int | None = None
                   ) -> HFCausalPolicy:
    """The policy over a causal LM from a hub id, a local folder or an s3:// folder (downloaded
    once into the cache, see storage.cached_s3_folder), fp32 weights (bf16 compute is autocast),
    in training mode. The tokenizer is attached as ``policy.tokenizer``; the pad id is the
    tokenizer's pad token, else its EOS (padding is never scored nor attended)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _local_folder(source, cfg)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"{source}: the tokenizer has neither a pad nor an EOS token")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.train()  # from_pretrained returns eval mode: dropout (where a model has it) must run
    policy = HFCausalPolicy(model, cfg.train, pad, max_length=max_length)
    policy.tokenizer = tokenizer  # type: ignore[attr-defined]
    return policy


__all__ = ["HFCausalPolicy", "TextPair", "load_hf_policy"]
