"""Kyutai-format export: moshi's own loader reads what we write and computes the same logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from moshi.models import loaders
from moshi.modules.lora import LoRALinear, replace_all_linear_with_lora
from safetensors.torch import save, save_file

from components.model.checkpoint import (
    CHECKPOINT_FILES,
    LoadedModel,
    ModelIdentity,
    lm_state_fp32,
    load_checkpoint,
    merged_lm,
    read_identity,
    save_checkpoint,
        stock_checkpoint_info,
    upload_checkpoint,
)
from components.streams.tokenizer import TokenizerMismatch, train_world_tokenizer
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


def _export(lm, kw, tokenizer, codec, out_dir, **extra) -> ModelIdentity:
    return save_checkpoint(lm, kw, tokenizer, codec, out_dir, {"size": "tiny", **extra})


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
def test_export_then_stock_loader_gives_identical_logits(q, tokenizer, request, out_dir,
                                                        monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any Hub access would fail loudly
    codec = request.getfixturevalue("codec" if q == 4 else "codec8")
    kw = lm_kwargs("tiny", Layout(q, tokenizer.text_card, codec.card), context=64)
    lm = build_lm(kw, seed=3)
    identity = _export(lm, kw, tokenizer, codec, out_dir, version="1")
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(CHECKPOINT_FILES)
    assert identity.num_codebooks == q and identity.tokenizer_hash == tokenizer.hash
    assert identity.codec_hash == codec.hash
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


def test_export_is_deterministic_and_fp32(tokenizer, codec, tmp_path) -> None:
    kw = lm_kwargs("tiny", Layout(4, tokenizer.text_card, codec.card), context=64)
    a = _export(build_lm(kw, seed=1), kw, tokenizer, codec, tmp_path / "a")
    b = _export(build_lm(kw, seed=1).to(torch.bfloat16).to(torch.float32), kw, tokenizer,
                codec, tmp_path / "b")
    c = _export(build_lm(kw, seed=2), kw, tokenizer, codec, tmp_path / "c")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != b""
    assert a.weights_sha256 != b.weights_sha256 != c.weights_sha256  # bf16 round-off shows
    again = _export(build_lm(kw, seed=1), kw, tokenizer, codec, tmp_path / "a")
    assert again == a  # same weights, same bytes; and the folder was replaced cleanly
    from safetensors import safe_open
    with safe_open(str(tmp_path / "a" / "model.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float32}


def test_lora_is_merged_on_export(tokenizer, codec, out_dir) -> None:
    kw = lm_kwargs("tiny", Layout(4, tokenizer.text_card, codec.card), context=64)
    lm = build_lm(kw, seed=4)
    replace_all_linear_with_lora(lm, rank=4, scaling=2.0)
    loras = [m for m in lm.modules() if isinstance(m, LoRALinear)]
    assert loras
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained adapter: non-zero B·A everywhere
        for m in loras:
            m.lora_A.weight.copy_(torch.randn(m.lora_A.weight.shape, generator=g) * 0.05)
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)
    _export(lm, {**kw, "lora": True, "lora_rank": 4, "lora_scaling": 2.0}, tokenizer, codec,
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


# --------------------------------------------------------------------------------------------
# save_checkpoint / load_checkpoint: our objects in, our objects out, identity enforced


def test_save_and_load_checkpoint(tokenizer, codec, out_dir) -> None:
    kw = lm_kwargs("tiny", Layout(4, tokenizer.text_card, codec.card), context=64)
    lm = build_lm(kw, seed=11)
    identity = save_checkpoint(lm, kw, tokenizer, codec, out_dir,
                               {"size": "tiny", "version": "1", "bootstrap_hash": "abc123"})
    assert (identity.size, identity.version, identity.parent) == ("tiny", "1", None)
    assert identity.extra == {"bootstrap_hash": "abc123"}
    assert (identity.tokenizer_hash, identity.codec_hash) == (tokenizer.hash, codec.hash)

    loaded = load_checkpoint(out_dir)
    assert isinstance(loaded, LoadedModel) and loaded.path == out_dir
    assert loaded.identity == identity
    assert loaded.lm_kwargs == kw
    assert loaded.tokenizer.hash == tokenizer.hash
    assert loaded.tokenizer.encode_word("hello") == tokenizer.encode_word("hello")
    assert (loaded.codec.hash, loaded.codec.num_codebooks, loaded.codec.card) == (
        codec.hash, 4, codec.card)
    audio = np.random.default_rng(0).standard_normal(24_000).astype(np.float32) * 0.1
    assert np.array_equal(loaded.codec.encode(audio, 24_000), codec.encode(audio, 24_000))
    codes = random_codes(lm, batch=2, frames=16, seed=5)
    _assert_same_logits(_logits(lm, codes), _logits(loaded.lm, codes))


def test_codec_and_lm_codebooks_must_match(tokenizer, codec, out_dir) -> None:
    kw = lm_kwargs("tiny", Layout(8, tokenizer.text_card), context=64)
    with pytest.raises(ValueError, match="codebooks"):
        save_checkpoint(build_lm(kw, seed=0), kw, tokenizer, codec, out_dir)


def test_load_refuses_files_that_do_not_match_the_identity(tokenizer, codec, tiny_checkpoint,
                                                           tmp_path) -> None:
    def copy_of(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(tiny_checkpoint, folder)
        return folder

    other_tok = copy_of("other-tokenizer")
    (other_tok / "tokenizer.model").write_bytes(train_world_tokenizer(500).model_bytes)
    with pytest.raises(TokenizerMismatch, match=tokenizer.hash):
        load_checkpoint(other_tok)

    other_codec = copy_of("other-codec")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        mimi = loaders.get_mimi(None, mimi_config=codec.mimi_config, num_codebooks=8)
    (other_codec / "mimi.safetensors").write_bytes(
        save({k: v.contiguous() for k, v in mimi.state_dict().items()}))
    with pytest.raises(ValueError, match="trained with codec"):
        load_checkpoint(other_codec)

    other_weights = copy_of("other-weights")
    kw = json.loads((tiny_checkpoint / "config.json").read_text())
    kw = {k: v for k, v in kw.items() if k not in ("moshi_name", "mimi_name", "tokenizer_name",
                                                   "mimi_config_name", "model_type", "model_id")}
    save_file(lm_state_fp32(build_lm(kw, seed=99)), str(other_weights / "model.safetensors"))
    with pytest.raises(ValueError, match="corrupt or replaced"):
        load_checkpoint(other_weights)
    load_checkpoint(other_weights, verify_weights=False)  # an explicit opt-out loads it


def test_a_stock_folder_without_our_identity_loads(tokenizer, codec, tiny_checkpoint,
                                                   tmp_path) -> None:
    folder = tmp_path / "kyutai-style"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "duplexalign.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    del config["model_id"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_checkpoint(folder)
    expected = read_identity(tiny_checkpoint)
    assert loaded.identity.tokenizer_hash == expected.tokenizer_hash == tokenizer.hash
    assert loaded.identity.codec_hash == expected.codec_hash
    assert loaded.identity.weights_sha256 == expected.weights_sha256
    assert (loaded.identity.num_codebooks, loaded.identity.size) == (4, "imported")


@pytest.mark.integration
def test_load_from_s3_downloads_once(services_config, store, tiny_checkpoint, tmp_path) -> None:
    cfg = services_config.model_copy(update={"model": services_config.model.model_copy(
        update={"cache_dir": str(tmp_path / "lm-cache")})})
    uri = upload_checkpoint(store, tiny_checkpoint, "ckpt")
    first = load_checkpoint(uri, cfg)
    assert first.path.parent == tmp_path / "lm-cache"
    assert first.identity == read_identity(tiny_checkpoint)
    mtime = (first.path / "model.safetensors").stat().st_mtime_ns
    second = load_checkpoint(uri, cfg)
    assert second.path == first.path
    assert (second.path / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="needs a Config"):
        load_checkpoint(uri)
