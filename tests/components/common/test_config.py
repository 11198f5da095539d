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
    data = json.loads(load_config("production").to_json())
    refs = data.pop("secrets")  # only references: the Secret's name and key
    assert refs and all(set(ref) == {"name", "key", "optional"} for ref in refs.values())
    dumped = json.dumps(data)
    assert "secret_key\"" not in dumped and "password\"" not in dumped


def test_secret_env_maps_each_secret_to_the_variable_the_config_reads():
    cfg = load_config("production")
    refs = cfg.secret_env("s3_access_key", "consent_dsn")
    assert {env: (r.name, r.key) for env, r in refs.items()} == {
        "DUPLEXALIGN_S3_ACCESS_KEY": ("duplexalign-s3", "access-key"),
        "DUPLEXALIGN_CONSENT_DSN": ("duplexalign-consent-db", "dsn")}
    assert len(cfg.secret_env()) == 6
    with pytest.raises(ValueError, match="unknown secrets"):
        cfg.secret_env("s3_password")


def test_the_consent_dsn_from_a_secret_wins_over_the_configured_one(monkeypatch):
    cfg = load_config("production")
    assert cfg.consent.resolved_dsn() == cfg.consent.dsn
    monkeypatch.setenv("DUPLEXALIGN_CONSENT_DSN", "postgresql://u@db.example:5432/consent")
    assert cfg.consent.resolved_dsn() == "postgresql://u@db.example:5432/consent"


def test_a_mounted_config_file_is_read_when_none_is_named(tmp_path, monkeypatch):
    """A pod's ConfigMap (DUPLEXALIGN_CONFIG): the platform's endpoints; a named file wins."""
    mounted = tmp_path / "config.yaml"
    mounted.write_text("profile: production\nstorage: {endpoint: s3.eu-west-1.amazonaws.com}\n")
    monkeypatch.setenv("DUPLEXALIGN_CONFIG", str(mounted))
    assert load_config("production").storage.endpoint == "s3.eu-west-1.amazonaws.com"
    named = tmp_path / "named.yaml"
    named.write_text("storage: {endpoint: other:9000}\n")
    assert load_config("production", named).storage.endpoint == "other:9000"
    monkeypatch.setenv("DUPLEXALIGN_CONFIG", str(tmp_path / "absent.yaml"))
    assert load_config("production").storage.endpoint == "s3.amazonaws.com"
