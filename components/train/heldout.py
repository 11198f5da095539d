"""What early stopping looks at: held-out pairs and generations on a held-out slice.

* Pair metrics: the policy scores the held-out pairs (no gradient) against their cached reference
  log-probs: preference loss, accuracy (chosen reward > rejected reward), mean margin.
* Generation metrics: the policy (its current weights, as they are at that step) SERVES a few
  evaluation conversations through the same batched LMGen path the evaluate stage uses
  (components/evaluate), with ``train.eval_seed`` instead of ``evaluate.seed`` so the mixes and
  contexts differ from the final evaluation's. Rates as evaluate defines them, plus the replay
  length: the mean number of words the model says in reply to a scored request (the paper's
  over-optimisation signal: silence data made replies run on, 20.8 → 88.5).
* ``generation_score`` = mean of qa_seen, refusal_unsafe, 1 − over_refusal_benign,
  1 − interruption, 1 − silence (the rates that exist on the slice): higher is better.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

import torch

from components.common.config import Config, TrainConfig
from components.train.losses import preference_loss
from components.train.reference import ReferenceLogps
from components.train.step import score
from components.train.types import PreferencePolicy, SequenceLogps

if TYPE_CHECKING:  # pragma: no cover
    from components.model.checkpoint import LoadedModel

# higher-is-better form of each rate in the generation score
_SCORE_TERMS = {"qa_seen": False, "refusal_unsafe": False, "over_refusal_benign": True,
                "interruption": True, "silence": True}


@torch.no_grad()
def pair_metrics(policy: PreferencePolicy, pairs: list[Any], reference: ReferenceLogps | None,
                 cfg: TrainConfig, batch_size: int, *,
                 autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Held-out preference loss, accuracy, mean margin and rewards (empty dict: no pairs)."""
    if not pairs:
        return {}
    parts: list[SequenceLogps] = []
    refs: list[SequenceLogps] = []
    for i in range(0, len(pairs), batch_size):
        batch = policy.collate(pairs[i : i + batch_size])
        parts.append(score(policy, batch, autocast_dtype=autocast_dtype))
        if reference is not None:
            refs.append(reference.batch(batch.pair_ids))
    logps = SequenceLogps.cat(parts)
    out = preference_loss(cfg, logps, SequenceLogps.cat(refs) if refs else None)
    return {"heldout_loss": float(out.loss), "heldout_accuracy": float(out.accuracy),
            "heldout_margin": float(out.margins.mean()),
            "heldout_chosen_reward": float(out.chosen_rewards.mean()),
            "heldout_rejected_reward": float(out.rejected_rewards.mean()),
            "heldout_pairs": float(len(pairs))}


def generation_score(metrics: dict[str, Any]) -> float | None:
    terms = []
    for name, lower_is_better in _SCORE_TERMS.items():
        value = metrics.get(name)
        if value is not None:
            terms.append(1.0 - value if lower_is_better else value)
    return sum(terms) / len(terms) if terms else None


class GenerationEval:
    """Serves ``train.eval_conversations`` held-out conversations with the policy's current
    weights and returns the behaviour rates, replay length and generation score."""

    def __init__(self, cfg: Config):
        from components.evaluate.items import build_conversations

        self.cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(
            update={"seed": cfg.train.eval_seed})})
        self.conversations = build_conversations(self.cfg)[: cfg.train.eval_conversations]

    @property
    def items(self) -> int:
        return sum(len(c.items) for c in self.conversations)

    def __call__(self, model: "LoadedModel") -> dict[str, Any]:
        from components.evaluate.behaviour import aggregate
        from components.evaluate.serve import serve_conversations

        if not self.conversations:
            return {}
        t0 = time.monotonic()
        lm = model.lm
        was_training = lm.training
        threads = torch.get_num_threads()
        torch.set_num_threads(self.cfg.evaluate.threads)
        try:
            lm.eval()
            with torch.no_grad():
                records, _ = serve_conversations(self.cfg, model, self.conversations, progress=False)
        finally:
            torch.set_num_threads(threads)
            lm.train(was_training)
        agg = aggregate(records)
        out: dict[str, Any] = {name: rate.value for name, rate in agg.rates.items()}
        asked = [r for r in records if r.asked]
        out["replay_length"] = (statistics.fmean(len(r.text.split()) for r in asked)
                                if asked else None)
        out["generation_score"] = generation_score(out)
        out["generation_items"] = len(asked)
        out["generation_seconds"] = round(time.monotonic() - t0, 1)
        print(f"[train] generation on {len(asked)} held-out items: "
              f"score {out['generation_score']}, replay length {out['replay_length']} "
              f"({out['generation_seconds']}s)", file=sys.stderr, flush=True)
        return out
