"""The pipeline's typed run parameters: what the KFP UI's run form shows, folded into the config.

A run is configured by a profile and a JSON object of dotted overrides (the same keys as
``--set``); the parameters below are the knobs an operator turns per run, each typed so the KFP
UI renders and checks it. Each one left at its "unset" value (empty string, 0, or -1 where 0 is a
real setting) keeps the profile's value. The first task (``run_settings``) folds the set ones into
the overrides and validates the whole configuration, so a bad value fails the run before any
data is touched, with the parameter's name in the message; every later task reads the result.

No KFP import here: the task's body (``run_settings_op``, pipelines/alignment.py) imports this
module inside the executor, where KFP's decorators are not available.
"""

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunParameter:
    name: str  # the pipeline parameter
    key: str  # the dotted config key it sets ("train.<loss>.beta": the run's loss's β)
    unset: Any  # the value that means "the profile's"
    help: str


RUN_PARAMETERS: tuple[RunParameter, ...] = (
    RunParameter("judge_endpoint", "judge.endpoint", "",
                 "OpenAI-compatible base URL of the judge (…/v1); empty = the profile's"),
    RunParameter("judge_model", "judge.model", "", "the judge endpoint's model name"),
    RunParameter("loss", "train.loss", "", "dpo_ln (default), dpo, simpo or apo_zero"),
    RunParameter("beta", "train.<loss>.beta", 0.0, "β of the run's loss; 0 = the profile's"),
    RunParameter("temporal_lr", "train.temporal_lr", 0.0,
                 "learning rate of the temporal transformer; 0 = the profile's"),
    RunParameter("depformer_lr", "train.depformer_lr", 0.0,
                 "learning rate of the depth transformer; 0 = the profile's"),
    RunParameter("epochs", "train.epochs", 0.0, "passes over the training mix (stopped early)"),
    RunParameter("batch_size", "train.batch_size", 0, "pairs per optimizer step"),
    RunParameter("timing_fraction", "mix.timing_fraction", -1.0,
                 "target share of timing pairs in the mix (0..1); -1 = the profile's"),
    RunParameter("max_pairs_per_user", "mix.max_pairs_per_user", -1,
                 "cap on one user's pairs in the mix (0 = no cap); -1 = the profile's"),
    RunParameter("qa_items", "evaluate.qa_items", 0, "spoken QA items the evaluation asks"),
    RunParameter("canary_percent", "deploy.canary_percent", -1,
                 "traffic share the proposed canary gets on a promote verdict (1..99)"),
)


def fold_run_parameters(profile: str, overrides: str, values: dict[str, Any]) -> str:
    """The overrides JSON with every set run parameter folded in, validated as a whole config.

    A parameter that is set wins over the same key in ``overrides`` (the form's field is what
    the operator saw last)."""
    from components.common.config import load_config

    merged: dict[str, Any] = json.loads(overrides) if overrides else {}
    if not isinstance(merged, dict):
        raise ValueError("overrides must be a JSON object of dotted keys")
    known = {p.name: p for p in RUN_PARAMETERS}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown run parameters {sorted(unknown)}")
    chosen = {name: v for name, v in values.items() if v != known[name].unset}
    loss = chosen.get("loss") or merged.get("train.loss") or load_config(
        profile or None, overrides=merged).train.loss
    for name, value in chosen.items():
        merged[known[name].key.replace("<loss>", str(loss))] = value
    try:
        load_config(profile or None, overrides=merged)
    except Exception as exc:  # pydantic's message names the dotted key and the rule
        raise ValueError(f"run parameters {sorted(chosen)} give an invalid configuration: "
                         f"{exc}") from exc
    return json.dumps(merged, sort_keys=True)
