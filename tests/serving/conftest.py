"""Fixtures of the serving tests: the tiny 4+4 checkpoint of the model tests (the real embedded
tokenizer and codec of the ci profile) and a config for a predictor on loopback, port 0."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import pytest

from components.common.config import Config
from tests.components.model.conftest import ci_cfg, codec, tiny_checkpoint, tokenizer  # noqa: F401


@pytest.fixture
def serve_cfg(stage_cfg: Config) -> Config:
    """stage_cfg (a fresh bucket, consent registry and pseudonym key on the live services) with
    the predictor on a free loopback port and short replies (a random model never stops)."""
    cfg = stage_cfg.model_copy(deep=True)
    cfg.serving.host = "127.0.0.1"
    cfg.serving.port = 0
    cfg.serving.max_streams = 4
    cfg.serving.gather_ms = 30.0  # a loaded CI machine must not split concurrent frames
    cfg.serving.max_reply_s = 1.0
    cfg.serving.end_of_reply_s = 0.4
    cfg.serving.drain_timeout_s = 5.0
    return cfg
