"""HFCausalPolicy: collation, log-probs equal to a plain full-logits forward (the head at the
scored positions only, no attention mask), gradients, checkpointing, loading from a folder and
from s3://. Tiny random Llama built from a config: no hub access."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from components.common.config import TrainConfig
from components.train.hf_policy import HFCausalPolicy, TextPair, load_hf_policy

VOCAB = 96
PAD = 0


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=PAD)
    return LlamaForCausalLM(cfg)


def pairs() -> list[TextPair]:
    g = torch.Generator().manual_seed(1)

    def ids(n: int) -> list[int]:
        return torch.randint(1, VOCAB, (n,), generator=g).tolist()

    # different prompt and completion lengths, chosen longer / shorter than rejected
    return [TextPair("a", ids(9), ids(4), ids(2)), TextPair("b", ids(5), ids(1), ids(6)),
            TextPair("c", ids(12), ids(3), ids(3))]


def reference_logps(model: LlamaForCausalLM, pair: TextPair, side: str) -> torch.Tensor:
    """Sum of log p(completion token) from the full logits of the unpadded sequence."""
    completion = pair.chosen_ids if side == "chosen" else pair.rejected_ids
    seq = torch.tensor([pair.prompt_ids + completion])
    logp = model(input_ids=seq).logits.float().log_softmax(-1)[0]  # [T, V]
    n = len(pair.prompt_ids)
    return sum(logp[t - 1, seq[0, t]] for t in range(n, seq.shape[1]))


def test_collate_pads_right_and_scores_completions_only() -> None:
    policy = HFCausalPolicy(tiny_llama(), TrainConfig(), pad_id=PAD)
    ps = pairs()
    b = policy.collate(ps)
    T = max(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in ps)
    assert b.chosen.shape == b.rejected.shape == b.chosen_mask.shape == (3, T)
    assert b.pair_ids == ["a", "b", "c"] and b.types == ["text"] * 3
    for i, p in enumerate(ps):
        for seq, mask, attn, comp in ((b.chosen, b.chosen_mask, b.attention_mask, p.chosen_ids),
                                      (b.rejected, b.rejected_mask, b.rejected_attention_mask,
                                       p.rejected_ids)):
            n, m = len(p.prompt_ids), len(comp)
            assert seq[i, :n + m].tolist() == p.prompt_ids + comp
            assert (seq[i, n + m:] == PAD).all()
            assert mask[i].nonzero().flatten().tolist() == list(range(n, n + m))
            assert attn[i].tolist() == [1] * (n + m) + [0] * (T - n - m)
    assert b.chosen_len.tolist() == [4.0, 1.0, 3.0]
    assert b.rejected_len.tolist() == [2.0, 6.0, 3.0]
    assert b.chosen_len.dtype == torch.float32
    # the positions both sides process: every non-pad token
    assert policy.positions(b) == sum(2 * len(p.prompt_ids) + len(p.chosen_ids)
                                      + len(p.rejected_ids) for p in ps)


def test_max_length_cuts_the_start_of_the_prompt() -> None:
    policy = HFCausalPolicy(tiny_llama(), TrainConfig(), pad_id=PAD, max_length=8)
    p = TextPair("x", list(range(1, 11)), [20, 21, 22], [30])
    b = policy.collate([p])
    assert b.chosen.shape[1] == 8
    assert b.chosen[0].tolist() == [6, 7, 8, 9, 10, 20, 21, 22]
    assert b.rejected[0, :6].tolist() == [6, 7, 8, 9, 10, 30]
    assert b.chosen_len.tolist() == [3.0] and b.rejected_len.tolist() == [1.0]


def test_logps_equal_a_full_logits_forward_and_are_differentiable() -> None:
    model = tiny_llama()
    policy = HFCausalPolicy(model, TrainConfig(), pad_id=PAD)
    ps = pairs()
    out = policy.logps(policy.collate(ps))
    assert out.chosen.dtype == torch.float32 and out.chosen.shape == (3,)
    with torch.no_grad():
        want_c = torch.stack([reference_logps(model, p, "chosen") for p in ps])
        want_r = torch.stack([reference_logps(model, p, "rejected") for p in ps])
    torch.testing.assert_close(out.chosen.detach(), want_c, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.rejected.detach(), want_r, atol=1e-5, rtol=0)
    assert out.chosen_len.tolist() == [4.0, 1.0, 3.0]

    # gradients equal too (the head gathered at the scored positions only)
    (out.chosen.sum() - 0.5 * out.rejected.sum()).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    want = torch.stack([reference_logps(model, p, "chosen") for p in ps]).sum() \
        - 0.5 * torch.stack([reference_logps(model, p, "rejected") for p in ps]).sum()
    want.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_gradient_checkpointing_gives_the_same_logps_and_grads() -> None:
    ps = pairs()
    grads = []
    for ckpt in (False, True):
        model = tiny_llama()
        policy = HFCausalPolicy(model, TrainConfig(gradient_checkpointing=ckpt), pad_id=PAD)
        assert model.is_gradient_checkpointing is ckpt
        out = policy.logps(policy.collate(ps))
        (out.chosen - out.rejected).sum().backward()
        grads.append((out.chosen.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for n, g in grads[0][1].items():
        torch.testing.assert_close(g, grads[1][1][n], msg=n)


def test_param_groups_and_flops() -> None:
    model = tiny_llama()
    cfg = TrainConfig(temporal_lr=3e-7)
    policy = HFCausalPolicy(model, cfg, pad_id=PAD)
    (group,) = policy.param_groups()
    assert group["name"] == "model" and group["lr"] == 3e-7
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}
    emb = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - emb - head
    assert policy.train_flops_per_position() == 6.0 * body
    b = policy.collate(pairs())
    scored = int(b.chosen_mask.sum() + b.rejected_mask.sum())
    assert policy.train_flops(b) == 6.0 * body * policy.positions(b) + 6.0 * head * scored


@pytest.mark.skipif(importlib.util.find_spec("peft") is not None, reason="peft is installed")
def test_lora_without_peft_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="peft"):
        HFCausalPolicy(tiny_llama(), TrainConfig(lora=True), pad_id=PAD)


def _save_with_tokenizer(folder: Path) -> LlamaForCausalLM:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<unk>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="</s>")
    model = tiny_llama(seed=3)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return model


def test_load_hf_policy_from_a_folder(tmp_path: Path) -> None:
    from components.common.config import load_config

    model = _save_with_tokenizer(tmp_path)
    policy = load_hf_policy(str(tmp_path), load_config("ci"))
    assert policy.pad_id == PAD and policy.model.training
    assert policy.tokenizer("w5 w7")["input_ids"] == [5, 7]
    b = policy.collate(pairs())
    with torch.no_grad():
        got = policy.logps(b).chosen
        want = HFCausalPolicy(model, TrainConfig(), PAD).logps(b).chosen
    torch.testing.assert_close(got, want)


@pytest.mark.integration
def test_load_hf_policy_from_s3(tmp_path: Path, store, services_config) -> None:
    folder = tmp_path / "model"
    model = _save_with_tokenizer(folder)
    for f in folder.iterdir():
        store.put_bytes(f"hf/{f.name}", f.read_bytes())
    cfg = services_config.model_copy(deep=True)
    cfg.model.cache_dir = str(tmp_path / "cache" / "lm")
    uri = f"s3://{store.bucket}/{store.full_key('hf')}"
    policy = load_hf_policy(uri, cfg)
    assert (tmp_path / "cache" / "hf").is_dir()
    b = policy.collate(pairs())
    with torch.no_grad():
        torch.testing.assert_close(policy.logps(b).rejected,
                                   HFCausalPolicy(model, TrainConfig(), PAD).logps(b).rejected)
