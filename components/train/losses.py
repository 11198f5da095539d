"""The paper's four preference losses (DPO, SimPO, APO-Zero, DPO-LN) on per-pair sequence
log-probs, and the one switch the trainer calls.

Each loss is a plain function on [B] tensors returning the per-pair losses [B] (the caller
averages), written to match TRL 1.16 term for term (DPOTrainer ``_compute_loss`` loss types
"sigmoid", "sigmoid_norm", "apo_zero"; experimental CPOTrainer ``cpo_loss`` with
``loss_type="simpo"``, ``cpo_alpha=0``, ``label_smoothing=0``): the tests compare them with TRL on
identical inputs, so a number reported here means what it means in TRL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from components.common.config import TrainConfig
from components.train.types import SequenceLogps

LOSS_NAMES = ("dpo", "simpo", "apo_zero", "dpo_ln")
REFERENCE_FREE = {"simpo"}  # losses that never look at a reference model


def _per_token(logratio: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    # TRL clamps |y| at 1 (an empty side would divide by zero); so do we, whatever the caller sent.
    return logratio / length.clamp(min=1.0)


def dpo_sigmoid_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor,
                     beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023; TRL ``sigmoid``): −log σ(β·((pc − rc) − (pr − rr))).

    ``pc``/``pr``: policy log-probs of the chosen/rejected side (summed over the scored
    positions); ``rc``/``rr``: the reference's."""
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))


def dpo_ln_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor,
                len_c: torch.Tensor, len_r: torch.Tensor, beta: float) -> torch.Tensor:
    """Length-normalised DPO (the paper's DPO-LN; TRL ``sigmoid_norm``):
    −log σ(β·((pc − rc)/|y_w| − (pr − rr)/|y_l|)), |y| clamped ≥ 1."""
    return -F.logsigmoid(beta * (_per_token(pc - rc, len_c) - _per_token(pr - rr, len_r)))


def apo_zero_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """APO-Zero (D'Oosterlinck et al. 2024, eq. 7; TRL ``apo_zero``):
    (1 − σ(β·(pc − rc))) + σ(β·(pr − rr)) — pushes the chosen side up and the rejected side down
    in absolute terms, not only their difference."""
    return (1 - torch.sigmoid(beta * (pc - rc))) + torch.sigmoid(beta * (pr - rr))


def simpo_loss(pc: torch.Tensor, pr: torch.Tensor, len_c: torch.Tensor, len_r: torch.Tensor,
               beta: float, gamma: float) -> torch.Tensor:
    """SimPO (Meng et al. 2024; TRL CPOTrainer ``simpo``, ``cpo_alpha=0``), reference-free:
    −log σ(β·(pc/|y_w| − pr/|y_l| − γ/β)) = −log σ(β·(avg_w − avg_l) − γ).

    TRL subtracts γ/β from the averaged log-prob difference before scaling by β; we keep that
    order so the rounding matches too."""
    logits = _per_token(pc, len_c) - _per_token(pr, len_r) - gamma / beta
    return -F.logsigmoid(beta * logits)


@dataclass
class PreferenceLoss:
    """One loss evaluation: ``loss`` (scalar mean, differentiable), the per-pair ``losses``, and the
    detached rewards TRL logs for the algorithm (``margins`` = chosen − rejected rewards;
    ``accuracy`` = fraction of pairs with chosen reward > rejected reward)."""

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    margins: torch.Tensor
    accuracy: float


def preference_loss(cfg: TrainConfig, policy: SequenceLogps,
                    reference: SequenceLogps | None) -> PreferenceLoss:
    """The loss ``cfg.loss`` with its own β (and γ for SimPO), computed in fp32.

    Rewards: β·log-ratio for DPO and APO-Zero (TRL's), β·log-ratio/|y| for DPO-LN (what its loss
    compares, so accuracy agrees with the sign of the loss's margin; TRL logs the unnormalised
    ratio there), β·average log-prob for SimPO (TRL's)."""
    if cfg.loss not in LOSS_NAMES:
        raise ValueError(f"unknown loss {cfg.loss!r}; expected one of {LOSS_NAMES}")
    if reference is None and cfg.loss not in REFERENCE_FREE:
        raise ValueError(f"loss {cfg.loss!r} needs reference log-probs (only "
                         f"{sorted(REFERENCE_FREE)} are reference-free)")
    # fp32 whatever autocast produced: sums of hundreds of log-probs lose the margin in bf16.
    pc, pr = policy.chosen.float(), policy.rejected.float()
    len_c, len_r = policy.chosen_len.float(), policy.rejected_len.float()
    if cfg.loss == "simpo":
        beta = cfg.simpo.beta
        losses = simpo_loss(pc, pr, len_c, len_r, beta, cfg.simpo.gamma)
        chosen_rewards = beta * _per_token(pc, len_c)
        rejected_rewards = beta * _per_token(pr, len_r)
    else:
        assert reference is not None
        rc = reference.chosen.to(pc.device, torch.float32)
        rr = reference.rejected.to(pc.device, torch.float32)
        if cfg.loss == "dpo":
            beta = cfg.dpo.beta
            losses = dpo_sigmoid_loss(pc, pr, rc, rr, beta)
            chosen_rewards, rejected_rewards = beta * (pc - rc), beta * (pr - rr)
        elif cfg.loss == "apo_zero":
            beta = cfg.apo_zero.beta
            losses = apo_zero_loss(pc, pr, rc, rr, beta)
            chosen_rewards, rejected_rewards = beta * (pc - rc), beta * (pr - rr)
        else:  # dpo_ln
            beta = cfg.dpo_ln.beta
            losses = dpo_ln_loss(pc, pr, rc, rr, len_c, len_r, beta)
            chosen_rewards = beta * _per_token(pc - rc, len_c)
            rejected_rewards = beta * _per_token(pr - rr, len_r)
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return PreferenceLoss(
        loss=losses.mean(),
        losses=losses,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        margins=chosen_rewards - rejected_rewards,
        accuracy=float((chosen_rewards > rejected_rewards).float().mean()) if len(losses) else 0.0,
    )
