"""Fixtures of the tokenize tests: the real embedded text tokenizer and codec of the `ci` profile
(4 codebooks per side), shared per session."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import pytest

from components.common.config import Config, load_config
from components.streams.tokenizer import TextTokenizer, load_tokenizer


@pytest.fixture(scope="session")
def ci_cfg() -> Config:
    # The default streams cache (the same the stage uses under stage_cfg): the world tokenizer is
    # trained once per checkout, not per test session.
    return load_config("ci")


@pytest.fixture(scope="session")
def tokenizer(ci_cfg: Config) -> TextTokenizer:
    return load_tokenizer(ci_cfg)


@pytest.fixture(scope="session")
def codec(ci_cfg: Config):
    from components.streams.codec import load_codec

    assert ci_cfg.streams.num_codebooks == 4
    return load_codec(ci_cfg)
