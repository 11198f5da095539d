"""Fixtures of the validate tests: the ci profile's real embedded tokenizer and codec (shared with
the model tests), for a champion registered for real."""

from tests.components.model.conftest import ci_cfg, codec, tokenizer  # noqa: F401  (fixtures)
