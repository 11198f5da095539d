"""The four preference losses: by hand on small numbers, through the switch, and against TRL 1.16
itself (a real DPOTrainer / CPOTrainer on a tiny random Llama, identical inputs)."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import torch

from components.common.config import TrainConfig
from components.train.losses import (
    LOSS_NAMES,
    REFERENCE_FREE,
    apo_zero_loss,
    dpo_ln_loss,
    dpo_sigmoid_loss,
    preference_loss,
    simpo_loss,
)
from components.train.types import SequenceLogps


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def softplus(x: float) -> float:  # log(1 + eˣ); −log σ(z) = softplus(−z)
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------------------- by hand


def test_dpo_sigmoid_by_hand() -> None:
    # Δ_w = −10 − (−11) = 1, Δ_l = −12 − (−11.5) = −0.5: −log σ(0.1·1.5)
    out = dpo_sigmoid_loss(t(-10), t(-12), t(-11), t(-11.5), beta=0.1)
    assert out.shape == (1,)
    assert math.isclose(out.item(), softplus(-0.15), rel_tol=1e-6)


def test_dpo_ln_by_hand() -> None:
    # Δ_w/|y_w| = 1/4, Δ_l/|y_l| = −0.5/2: −log σ(0.3·0.5); |y| = 0 is clamped to 1.
    out = dpo_ln_loss(t(-10, -10), t(-12, -12), t(-11, -11), t(-11.5, -11.5),
                      t(4, 0), t(2, 2), beta=0.3)
    assert math.isclose(out[0].item(), softplus(-0.15), rel_tol=1e-6)
    assert math.isclose(out[1].item(), softplus(-0.3 * (1 + 0.25)), rel_tol=1e-6)


def test_apo_zero_by_hand() -> None:
    # (1 − σ(0.1·1)) + σ(0.1·(−0.5)): chosen pushed up, rejected pushed down, each on its own.
    out = apo_zero_loss(t(-10), t(-12), t(-11), t(-11.5), beta=0.1)
    assert math.isclose(out.item(), (1 - sigmoid(0.1)) + sigmoid(-0.05), rel_tol=1e-6)


def test_simpo_by_hand() -> None:
    # avg_w = −8/4 = −2, avg_l = −9/3 = −3: −log σ(2·(1 − 0.5/2)) = −log σ(2·1 − 0.5)
    out = simpo_loss(t(-8), t(-9), t(4), t(3), beta=2.0, gamma=0.5)
    assert math.isclose(out.item(), softplus(-1.5), rel_tol=1e-6)
    # γ = 0 and equal averages: log 2, whatever the lengths.
    same = simpo_loss(t(-8), t(-4), t(4), t(2), beta=2.0, gamma=0.0)
    assert math.isclose(same.item(), math.log(2), rel_tol=1e-6)


# ---------------------------------------------------------------------------- the switch

POLICY = SequenceLogps(chosen=t(-10, -20, -5), rejected=t(-12, -18, -9),
                       chosen_len=t(4, 10, 1), rejected_len=t(2, 6, 3))
REFERENCE = SequenceLogps(chosen=t(-11, -19, -6), rejected=t(-11.5, -19, -8),
                          chosen_len=t(4, 10, 1), rejected_len=t(2, 6, 3))


def test_switch_names() -> None:
    assert set(LOSS_NAMES) == {"dpo", "simpo", "apo_zero", "dpo_ln"}
    assert REFERENCE_FREE == {"simpo"}


@pytest.mark.parametrize("loss", ["dpo", "apo_zero", "dpo_ln"])
def test_switch_uses_each_losses_own_beta_and_rewards(loss: str) -> None:
    # Every β distinct, so reading the wrong sub-config shows.
    cfg = TrainConfig(loss=loss, dpo={"beta": 0.2}, dpo_ln={"beta": 0.7},
                      apo_zero={"beta": 0.05}, simpo={"beta": 3.0, "gamma": 0.1})
    p, r = POLICY, REFERENCE
    out = preference_loss(cfg, p, r)
    lr_c, lr_r = p.chosen - r.chosen, p.rejected - r.rejected
    if loss == "dpo":
        expected = dpo_sigmoid_loss(p.chosen, p.rejected, r.chosen, r.rejected, 0.2)
        rc, rr = 0.2 * lr_c, 0.2 * lr_r
    elif loss == "apo_zero":
        expected = apo_zero_loss(p.chosen, p.rejected, r.chosen, r.rejected, 0.05)
        rc, rr = 0.05 * lr_c, 0.05 * lr_r
    else:
        expected = dpo_ln_loss(p.chosen, p.rejected, r.chosen, r.rejected, p.chosen_len,
                               p.rejected_len, 0.7)
        rc, rr = 0.7 * lr_c / p.chosen_len, 0.7 * lr_r / p.rejected_len
    torch.testing.assert_close(out.losses, expected)
    torch.testing.assert_close(out.loss, expected.mean())
    torch.testing.assert_close(out.chosen_rewards, rc)
    torch.testing.assert_close(out.rejected_rewards, rr)
    torch.testing.assert_close(out.margins, rc - rr)
    assert out.accuracy == pytest.approx(float((rc > rr).float().mean()))
    with pytest.raises(ValueError, match="reference"):
        preference_loss(cfg, p, None)


def test_simpo_is_reference_free() -> None:
    cfg = TrainConfig(loss="simpo", simpo={"beta": 3.0, "gamma": 0.1})
    out = preference_loss(cfg, POLICY, None)
    expected = simpo_loss(POLICY.chosen, POLICY.rejected, POLICY.chosen_len, POLICY.rejected_len,
                          3.0, 0.1)
    torch.testing.assert_close(out.losses, expected)
    torch.testing.assert_close(out.chosen_rewards, 3.0 * POLICY.chosen / POLICY.chosen_len)
    torch.testing.assert_close(out.rejected_rewards, 3.0 * POLICY.rejected / POLICY.rejected_len)
    # Chosen averages −2.5, −2, −5 vs rejected −6, −3, −3: two of three pairs ranked right.
    assert out.accuracy == pytest.approx(2 / 3)
    # A reference, if given, changes nothing.
    torch.testing.assert_close(preference_loss(cfg, POLICY, REFERENCE).losses, expected)


def test_fp32_from_bf16_and_gradient_flows_to_the_policy_only() -> None:
    cfg = TrainConfig(loss="dpo_ln")
    chosen = POLICY.chosen.to(torch.bfloat16).requires_grad_()
    rejected = POLICY.rejected.to(torch.bfloat16).requires_grad_()
    policy = SequenceLogps(chosen, rejected, POLICY.chosen_len, POLICY.rejected_len)
    out = preference_loss(cfg, policy, REFERENCE)
    assert out.loss.dtype == torch.float32 and out.losses.dtype == torch.float32
    assert not out.chosen_rewards.requires_grad and not out.margins.requires_grad
    out.loss.backward()
    assert chosen.grad is not None and bool((chosen.grad < 0).all())  # raise the chosen side
    assert rejected.grad is not None and bool((rejected.grad > 0).all())  # lower the rejected


# ---------------------------------------------------------------------------- against TRL

VOCAB = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(40)]
PAIRS = {  # prompts longer than completions, lengths differing within and across pairs
    "prompt": ["w1 w2 w3 w4 ", "w5 w6 ", "w7 w8 w9 ", "w10 w11 w12 w13 w14 "],
    "chosen": ["w20 w21", "w22 w23 w24 w25 w26", "w27", "w28 w29 w30"],
    "rejected": ["w31", "w32 w33", "w34 w35 w36 w37", "w38 w39 w20"],
}
# Reference log-probs = the model's own (what TRL precomputed) shifted by these, so the
# log-ratios are non-zero and of both signs.
REF_SHIFT_CHOSEN = t(0.9, -1.3, 0.4, -0.2)
REF_SHIFT_REJECTED = t(-0.6, 0.8, -1.1, 0.5)


@pytest.fixture(scope="module")
def tiny() -> tuple:
    # Offline: a word-level tokenizer built in memory and a random 2-layer Llama from a config.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                        eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=1))
    return tokenizer, model


def _plain_logps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 scored: torch.Tensor) -> SequenceLogps:
    """Summed log-probs from a plain full-logits forward: logits at t−1 score token t, where
    ``scored[:, t]``; rows are [chosen..., rejected...] as TRL stacks them."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    per_token = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = scored[:, 1:].bool()
    sums = torch.where(mask, per_token, 0.0).sum(1)
    counts = mask.sum(1).float()
    b = input_ids.shape[0] // 2
    return SequenceLogps(sums[:b], sums[b:], counts[:b], counts[b:])


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    out = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("loss, trl_loss_type", [("dpo", "sigmoid"), ("dpo_ln", "sigmoid_norm"),
                                                 ("apo_zero", "apo_zero")])
def test_equals_trl_dpo_trainer(tiny: tuple, tmp_path: Path, loss: str,
                                trl_loss_type: str) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer, base = tiny
    cfg = TrainConfig(loss=loss)
    beta = getattr(cfg, loss).beta
    model = copy.deepcopy(base)
    args = DPOConfig(output_dir=str(tmp_path), loss_type=[trl_loss_type], beta=beta,
                     precompute_ref_log_probs=True, per_device_train_batch_size=4,
                     report_to=[], use_cpu=True, bf16=False, disable_tqdm=True, save_strategy="no",
                     logging_strategy="no", dataloader_pin_memory=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_dict(PAIRS),
                         processing_class=tokenizer)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS["prompt"]))])
    ids, attn, completion = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]

    ours_policy = _plain_logps(model, ids, attn, completion)
    # TRL's precomputed reference (its fused LM head, same weights) = our plain computation.
    torch.testing.assert_close(inputs["ref_chosen_logps"], ours_policy.chosen.detach(),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(inputs["ref_rejected_logps"], ours_policy.rejected.detach(),
                               atol=1e-5, rtol=0)
    inputs["ref_chosen_logps"] = inputs["ref_chosen_logps"] + REF_SHIFT_CHOSEN
    inputs["ref_rejected_logps"] = inputs["ref_rejected_logps"] + REF_SHIFT_REJECTED
    reference = SequenceLogps(inputs["ref_chosen_logps"], inputs["ref_rejected_logps"],
                              ours_policy.chosen_len, ours_policy.rejected_len)
    assert not torch.equal(ours_policy.chosen_len, ours_policy.rejected_len)  # LN matters

    ours = preference_loss(cfg, ours_policy, reference)
    ours.loss.backward()
    ours_grads = _grads(model)
    trl_loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    trl_loss.backward()
    trl_grads = _grads(model)

    assert abs(ours.loss.item() - trl_loss.item()) <= 1e-6
    assert 0.05 < ours.loss.item()  # not a degenerate zero loss
    assert len(ours_grads) == len(trl_grads) > 0
    for a, b in zip(ours_grads, trl_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    if loss == "dpo_ln":
        # Ours: the per-token rewards the loss compares; TRL logs the unnormalised β·log-ratio.
        n_c, n_r = ours_policy.chosen_len, ours_policy.rejected_len
        assert (ours.chosen_rewards * n_c).mean().item() == pytest.approx(
            metrics["rewards/chosen"], abs=1e-5)
        assert (ours.rejected_rewards * n_r).mean().item() == pytest.approx(
            metrics["rewards/rejected"], abs=1e-5)
    else:
        assert ours.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"],
                                                                  abs=1e-6)
        assert ours.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"],
                                                                    abs=1e-6)
        assert ours.margins.mean().item() == pytest.approx(metrics["rewards/margins"], abs=1e-6)
        assert ours.accuracy == pytest.approx(metrics["rewards/accuracies"])


def test_equals_trl_cpo_trainer_simpo(tiny: tuple, tmp_path: Path) -> None:
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tokenizer, base = tiny
    cfg = TrainConfig(loss="simpo")
    model = copy.deepcopy(base)
    args = CPOConfig(output_dir=str(tmp_path), loss_type="simpo", cpo_alpha=0.0,
                     beta=cfg.simpo.beta, simpo_gamma=cfg.simpo.gamma, label_smoothing=0.0,
                     max_length=64, per_device_train_batch_size=4, report_to=[], use_cpu=True,
                     bf16=False, disable_tqdm=True, save_strategy="no", logging_strategy="no",
                     dataloader_pin_memory=False, remove_unused_columns=False)
    trainer = CPOTrainer(model=model, args=args, train_dataset=Dataset.from_dict(PAIRS),
                         processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS["prompt"]))])

    # TRL's loss method on hand-picked tensors: its inputs are average log-probs.
    pc, pr, lc, lr = t(-8, -3, -20), t(-9, -1, -21), t(4, 2, 10), t(3, 1, 7)
    trl_losses, trl_rc, trl_rr = trainer.cpo_loss(pc / lc, pr / lr)
    torch.testing.assert_close(simpo_loss(pc, pr, lc, lr, cfg.simpo.beta, cfg.simpo.gamma),
                               trl_losses, atol=1e-6, rtol=0)

    # And the whole chain on the model: TRL's forward + loss vs our loss on plain log-probs.
    cat = trainer.concatenated_inputs(batch, padding_value=trainer.pad_token_id)
    labels = cat["concatenated_labels"]
    ours_policy = _plain_logps(model, cat["concatenated_input_ids"],
                               cat["concatenated_attention_mask"], labels != -100)
    ours = preference_loss(cfg, ours_policy, None)
    ours.loss.backward()
    ours_grads = _grads(model)
    trl_loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    trl_loss.backward()
    trl_grads = _grads(model)

    assert abs(ours.loss.item() - trl_loss.item()) <= 1e-6
    for a, b in zip(ours_grads, trl_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert ours.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=1e-5)
    assert ours.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"],
                                                                abs=1e-5)
    assert ours.margins.mean().item() == pytest.approx(metrics["rewards/margins"], abs=1e-5)
    assert ours.accuracy == pytest.approx(metrics["rewards/accuracies"])
