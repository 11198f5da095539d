"""Fixtures of the model tests: the real embedded tokenizer and codec of the `ci` profile
(components/streams; caches under a temp dir), so checkpoints carry the real files."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

from pathlib import Path

import pytest

from components.common.config import Config, load_config
from components.streams.codec import Codec, load_codec
from components.streams.tokenizer import TextTokenizer, load_tokenizer


@pytest.fixture(scope="session")
def ci_cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    cache = tmp_path_factory.mktemp("model-cache")
    return load_config("ci", overrides=[f"streams.cache_dir={cache}/streams",
                                        f"model.cache_dir={cache}/lm"])


@pytest.fixture(scope="session")
def tokenizer(ci_cfg: Config) -> TextTokenizer:
    return load_tokenizer(ci_cfg)


@pytest.fixture(scope="session")
def codec(ci_cfg: Config) -> Codec:
    """The embedded codec with the ci profile's 4 codebooks per side."""
    assert ci_cfg.streams.num_codebooks == 4
    return load_codec(ci_cfg)


@pytest.fixture(scope="session")
def codec8(ci_cfg: Config) -> Codec:
    """The same codec with 8 levels: the 8 + 8 conformance case."""
    return load_codec(ci_cfg.model_copy(update={
        "streams": ci_cfg.streams.model_copy(update={"num_codebooks": 8})}))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer: TextTokenizer,
                    codec: Codec) -> Path:
    """A saved tiny 4+4 checkpoint (read-only for the tests that share it)."""
    from components.model.checkpoint import save_checkpoint
    from components.model.spec import build_lm, lm_kwargs
    from tests.components.model.helpers import Layout

    kw = lm_kwargs("tiny", Layout(4, tokenizer.text_card, codec.card), context=64)
    folder = tmp_path_factory.mktemp("tiny-ckpt") / "ckpt"
    save_checkpoint(build_lm(kw, seed=0), kw, tokenizer, codec, folder, {"size": "tiny"})
    return folder


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "ckpt"
