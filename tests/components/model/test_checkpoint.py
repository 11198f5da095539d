"""Kyutai-format export: moshi's own loader reads what we write and computes the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from moshi.models import loaders
from moshi.modules.lora import LoRALinear, replace_all_linear_with_lora

from components.model.checkpoint import (
    CHECKPOINT_FILES,
    ModelIdentity,
    merged_lm,
    read_identity,
    save_checkpoint_files,
    stock_checkpoint_info,
)
from components.model.spec import build_lm, lm_kwargs
from tests.components.model.helpers import Layout, random_codes


def _logits(lm, codes):
    with torch.no_grad():
        out = lm(codes)
    return out.logits, out.text_logits


def _assert_same_logits(a, b, atol: float = 0.0) -> None:
    for x, y in zip(a, b):
        assert x.dtype == y.dtype == torch.float32
        # invalid (delayed) positions are NaN in both: compare them as equal
        torch.testing.assert_close(x, y, rtol=0, atol=atol, equal_nan=True)


def _export(lm, kw, tokenizer, mimi_parts, out_dir, **extra) -> ModelIdentity:
    return save_checkpoint_files(
        lm, kw, tokenizer_bytes=tokenizer.model_bytes, mimi_weights_bytes=mimi_parts.weights_bytes,
        mimi_config=mimi_parts.mimi_config, out_dir=out_dir, size="tiny", **extra)


def _stock_load(folder: Path):
    """Exactly how a moshi user loads a local folder: CheckpointInfo with Paths (no Hub access)
    and get_moshi in fp32 (its default dtype is bf16)."""
    raw = json.loads((folder / "config.json").read_text())
    info = loaders.CheckpointInfo.from_hf_repo(
        "local",
        moshi_weights=folder / raw["moshi_name"],
        mimi_weights=folder / raw["mimi_name"],
        tokenizer=folder / raw["tokenizer_name"],
        config_path=folder / "config.json",
        mimi_config_path=folder / raw["mimi_config_name"],
    )
    return info, info.get_moshi(device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("q", [4, 8])
def test_export_then_stock_loader_gives_identical_logits(q, tokenizer, mimi_parts, out_dir,
                                                        monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any Hub access would fail loudly
    kw = lm_kwargs("tiny", Layout(q, tokenizer.text_card), context=64)
    lm = build_lm(kw, seed=3)
    identity = _export(lm, kw, tokenizer, mimi_parts, out_dir, version="1", parent=None)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(CHECKPOINT_FILES)
    assert identity.num_codebooks == q and identity.tokenizer_hash == tokenizer.hash
    assert read_identity(out_dir) == identity

    info, loaded = _stock_load(out_dir)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    codes = random_codes(lm, batch=2, frames=24, seed=q)
    _assert_same_logits(_logits(lm, codes), _logits(loaded, codes))

    # The rest of the folder loads with moshi too: Mimi with q levels, the SentencePiece model.
    mimi = info.get_mimi(device="cpu")
    assert mimi.num_codebooks == q
    sp = info.get_text_tokenizer()
    assert sp.get_piece_size() == tokenizer.text_card
    assert info.model_id["weights_sha256"] == identity.weights_sha256
    # Our helper resolves the same files.
    ours = stock_checkpoint_info(out_dir)
    assert (ours.moshi_weights, ours.mimi_config) == (info.moshi_weights, info.mimi_config)


def test_export_is_deterministic_and_fp32(tokenizer, mimi_parts, tmp_path) -> None:
    kw = lm_kwargs("tiny", Layout(4, tokenizer.text_card), context=64)
    a = _export(build_lm(kw, seed=1), kw, tokenizer, mimi_parts, tmp_path / "a")
    b = _export(build_lm(kw, seed=1).to(torch.bfloat16).to(torch.float32), kw, tokenizer,
                mimi_parts, tmp_path / "b")
    c = _export(build_lm(kw, seed=2), kw, tokenizer, mimi_parts, tmp_path / "c")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != b""
    assert a.weights_sha256 != b.weights_sha256 != c.weights_sha256  # bf16 round-off shows
    again = _export(build_lm(kw, seed=1), kw, tokenizer, mimi_parts, tmp_path / "a")
    assert again == a  # same weights, same bytes; and the folder was replaced cleanly
    from safetensors import safe_open
    with safe_open(str(tmp_path / "a" / "model.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float32}


def test_lora_is_merged_on_export(tokenizer, mimi_parts, out_dir) -> None:
    kw = lm_kwargs("tiny", Layout(4, tokenizer.text_card), context=64)
    lm = build_lm(kw, seed=4)
    replace_all_linear_with_lora(lm, rank=4, scaling=2.0)
    loras = [m for m in lm.modules() if isinstance(m, LoRALinear)]
    assert loras
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained adapter: non-zero B·A everywhere
        for m in loras:
            m.lora_A.weight.copy_(torch.randn(m.lora_A.weight.shape, generator=g) * 0.05)
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)
    _export(lm, {**kw, "lora": True, "lora_rank": 4, "lora_scaling": 2.0}, tokenizer, mimi_parts,
            out_dir)
    assert any(isinstance(m, LoRALinear) for m in lm.modules())  # the caller's model untouched
    config = json.loads((out_dir / "config.json").read_text())
    assert "lora" not in config and "lora_rank" not in config

    _, loaded = _stock_load(out_dir)
    assert not any(isinstance(m, LoRALinear) for m in loaded.modules())
    codes = random_codes(lm, batch=2, frames=24, seed=9)
    base = _logits(build_lm(kw, seed=4), codes)
    lora_logits = _logits(lm, codes)
    loaded_logits = _logits(loaded, codes)
    assert not torch.allclose(torch.nan_to_num(base[1]), torch.nan_to_num(lora_logits[1]))
    # What was written is exactly the merged model ...
    _assert_same_logits(_logits(merged_lm(lm), codes), loaded_logits)
    # ... and W·x + s·B·(A·x) vs (W + s·B·A)·x differ only by fp32 rounding (measured ~4e-6 on
    # logits of magnitude ~4, i.e. ~1e-6 relative)
    _assert_same_logits(lora_logits, loaded_logits, atol=1e-5)
