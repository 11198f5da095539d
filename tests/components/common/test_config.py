"""The one typed configuration: profiles, YAML, dotted overrides, pipeline parameters."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from components.common.config import PROFILES, load_config
from components.common.kfp_support import config_from_params
from pipelines.runner import pipeline_overrides


def test_profiles_set_sizes():
    assert load_config("ci").simulate.conversations < load_config("demo").simulate.conversations
    assert load_config("production").consent.dsn.startswith("postgresql://")
    assert set(PROFILES) == {"ci", "demo", "bench", "production"}


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("simulate:\n  conversations: 40\n  seed: 3\ntranscribe:\n  packed: false\n")
    cfg = load_config("ci", path, ["simulate.seed=9", "ingest.accepted_sample_rates=[16000]"])
    assert cfg.simulate.conversations == 40 and cfg.simulate.seed == 9
    assert cfg.transcribe.packed is False and cfg.ingest.accepted_sample_rates == [16000]


@pytest.mark.parametrize("bad", ["simulate.conversation=3", "nosection.x=1", "simulate.seed=abc"])
def test_typos_and_bad_types_are_errors(bad):
    with pytest.raises(ValidationError):
        load_config("ci", overrides=[bad])


def test_unknown_profile_is_an_error():
    with pytest.raises(ValueError, match="unknown profile"):
        load_config("staging")


def test_pipeline_parameters_rebuild_the_same_config():
    cfg = load_config("ci", overrides=["storage.endpoint=127.0.0.1:9999", "simulate.seed=11"])
    overrides = pipeline_overrides(cfg)
    assert overrides == {"simulate.seed": 11, "storage.endpoint": "127.0.0.1:9999"}
    assert config_from_params("ci", json.dumps(overrides)) == cfg


def test_config_dump_carries_no_secret_values():
    dumped = load_config("production").to_json()
    assert "secret_key\"" not in dumped and "password\"" not in dumped
