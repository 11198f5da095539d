"""Fixtures of the model tests: the real embedded tokenizer (ci profile, cached under a temp dir)
and small Mimi codecs, so checkpoints carry real tokenizer and codec files."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from moshi.models import loaders
from safetensors.torch import save

from components.common.config import Config, load_config
from components.streams.tokenizer import TextTokenizer, load_tokenizer
from tests.components.model.helpers import small_mimi_config


@pytest.fixture(scope="session")
def ci_cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    cache = tmp_path_factory.mktemp("model-cache")
    return load_config("ci", overrides=[f"streams.cache_dir={cache}/streams",
                                        f"model.cache_dir={cache}/lm"])


@pytest.fixture(scope="session")
def tokenizer(ci_cfg: Config) -> TextTokenizer:
    return load_tokenizer(ci_cfg)


@dataclass
class MimiParts:
    weights_bytes: bytes
    mimi_config: dict
    num_codebooks: int


@pytest.fixture(scope="session")
def mimi_parts() -> MimiParts:
    cfg = small_mimi_config(8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mimi = loaders.get_mimi(None, mimi_config=cfg, num_codebooks=8)
    data = save({k: v.contiguous() for k, v in mimi.state_dict().items()})
    return MimiParts(data, cfg, 8)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "ckpt"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer: TextTokenizer,
                    mimi_parts: MimiParts) -> Path:
    """A saved tiny 4+4 checkpoint (read-only for the tests that share it)."""
    from components.model.checkpoint import save_checkpoint_files
    from components.model.spec import build_lm, lm_kwargs
    from tests.components.model.helpers import Layout

    kw = lm_kwargs("tiny", Layout(4, tokenizer.text_card), context=64)
    folder = tmp_path_factory.mktemp("tiny-ckpt") / "ckpt"
    save_checkpoint_files(build_lm(kw, seed=0), kw, tokenizer_bytes=tokenizer.model_bytes,
                          mimi_weights_bytes=mimi_parts.weights_bytes,
                          mimi_config=mimi_parts.mimi_config, out_dir=folder, size="tiny")
    return folder
