"""The run form's typed parameters fold into the configuration the tasks read."""

from __future__ import annotations

import json

import pytest

from components.common.config import load_config
from components.common.kfp_support import config_from_params
from pipelines.run_params import RUN_PARAMETERS, fold_run_parameters

UNSET = {p.name: p.unset for p in RUN_PARAMETERS}


def test_unset_parameters_keep_the_profile_and_the_overrides():
    overrides = json.dumps({"simulate.seed": 11})
    folded = fold_run_parameters("ci", overrides, UNSET)
    assert json.loads(folded) == {"simulate.seed": 11}
    assert config_from_params("ci", folded) == load_config("ci", overrides=["simulate.seed=11"])


def test_set_parameters_reach_their_keys_beta_of_the_runs_loss():
    values = {**UNSET, "loss": "simpo", "beta": 2.5, "temporal_lr": 3e-6, "batch_size": 4,
              "timing_fraction": 0.0, "max_pairs_per_user": 0, "canary_percent": 5,
              "judge_endpoint": "http://judge:8000/v1"}
    cfg = config_from_params("production", fold_run_parameters("production", "{}", values))
    assert cfg.train.loss == "simpo" and cfg.train.simpo.beta == 2.5
    assert cfg.train.dpo_ln.beta == load_config("production").train.dpo_ln.beta
    assert (cfg.train.temporal_lr, cfg.train.batch_size) == (3e-6, 4)
    # 0 is a real setting where -1 means unset: no timing pairs, no per-user cap
    assert (cfg.mix.timing_fraction, cfg.mix.max_pairs_per_user) == (0.0, 0)
    assert cfg.deploy.canary_percent == 5 and cfg.judge.endpoint == "http://judge:8000/v1"


def test_beta_follows_the_loss_named_in_overrides():
    values = {**UNSET, "beta": 0.7}
    cfg = config_from_params("ci", fold_run_parameters(
        "ci", json.dumps({"train.loss": "apo_zero"}), values))
    assert cfg.train.apo_zero.beta == 0.7


def test_a_parameter_wins_over_the_same_key_in_overrides():
    folded = fold_run_parameters("ci", json.dumps({"train.epochs": 3.0}),
                                 {**UNSET, "epochs": 1.5})
    assert json.loads(folded)["train.epochs"] == 1.5


@pytest.mark.parametrize("name,value,words", [
    ("canary_percent", 150, "canary_percent"),
    ("loss", "ppo", "train.loss"),
    ("beta", -1.0, "beta"),
])
def test_a_bad_value_fails_before_any_data_is_touched(name, value, words):
    with pytest.raises(ValueError, match=words):
        fold_run_parameters("ci", "{}", {**UNSET, name: value})


def test_unknown_parameters_and_bad_overrides_are_errors():
    with pytest.raises(ValueError, match="unknown run parameters"):
        fold_run_parameters("ci", "{}", {"betta": 0.1})
    with pytest.raises(ValueError, match="JSON object"):
        fold_run_parameters("ci", "[1]", UNSET)
