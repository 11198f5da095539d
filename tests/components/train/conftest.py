"""Fixtures of the train tests: the ci profile's real embedded tokenizer and codec (shared with
the model tests), so checkpoints and datasets carry real stream hashes."""

from tests.components.model.conftest import ci_cfg, codec, tokenizer  # noqa: F401  (fixtures)
