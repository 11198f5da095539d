"""`bootstrap`: deterministic from its seed, cached by content, registered as the champion."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import shutil
import uuid
from pathlib import Path

import pytest

from components.bootstrap.logic import HASH_TAG, bootstrap, bootstrap_key
from components.common.config import Config, load_config

# A few conversations, a tiny model, a few steps: the whole path in seconds.
TINY = ["model.size=tiny", "model.context=64", "bootstrap.conversations=3", "bootstrap.max_steps=3",
        "bootstrap.batch_size=2", "bootstrap.window_frames=48", "bootstrap.warmup_steps=1",
        "bootstrap.time_budget_s=600", "bootstrap.drill_gains=[]"]


def _cfg(cache: Path, extra: list[str] | None = None, base: Config | None = None) -> Config:
    overrides = [f"model.cache_dir={cache}/lm", f"streams.cache_dir={cache}/streams", *TINY, *(extra or [])]
    if base is None:
        return load_config("ci", overrides=overrides)
    from components.common.config import deep_merge, parse_override

    data = base.model_dump()
    for item in overrides:
        data = deep_merge(data, parse_override(item))
    return Config.model_validate(data)


def test_same_seed_same_weights_and_second_call_is_cached(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    first = bootstrap(cfg, progress=False, publish=False)
    assert not first.cached and first.steps == 3 and first.version is None
    assert (first.checkpoint_dir / "model.safetensors").exists()
    again = bootstrap(cfg, progress=False, force=True, publish=False)
    assert again.model_hash == first.model_hash and not again.cached
    cached = bootstrap(cfg, progress=False, publish=False)
    assert cached.cached and cached.model_hash == first.model_hash and cached.steps == 3
    assert cached.metrics == again.metrics and cached.corpus["conversations"] == 3
    # another seed: another model
    other = bootstrap(_cfg(tmp_path, ["bootstrap.seed=99"]), progress=False, publish=False)
    assert other.model_hash != first.model_hash and other.key != first.key


def test_key_covers_what_changes_the_model_but_not_threads() -> None:
    base = load_config("ci")
    k = bootstrap_key(base, "spm-a", "mimi-b")
    assert bootstrap_key(load_config("ci", overrides=["bootstrap.threads=1"]), "spm-a", "mimi-b") == k
    assert bootstrap_key(load_config("ci", overrides=["bootstrap.lr=0.01"]), "spm-a", "mimi-b") != k
    assert bootstrap_key(load_config("ci", overrides=["model.context=512"]), "spm-a", "mimi-b") != k
    assert bootstrap_key(base, "spm-c", "mimi-b") != k and bootstrap_key(base, "spm-a", "mimi-c") != k


@pytest.mark.integration
def test_bootstrap_registers_the_champion_with_its_identity(services_config: Config, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from components.model.registry import register_model

    name = f"bootstrap-test-{uuid.uuid4().hex[:8]}"
    cfg = _cfg(tmp_path, [f"model.registered_name={name}"], base=services_config)
    result = bootstrap(cfg, progress=False)
    assert result.version is not None and result.champion and not result.cached
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    champ = client.get_model_version_by_alias(name, "champion")
    assert str(champ.version) == result.version
    tags = champ.tags
    assert tags[HASH_TAG] == result.key and tags["weights_sha256"] == result.model_hash
    assert tags["tokenizer_hash"].startswith("spm-") and tags["codec_hash"].startswith("mimi-")
    assert tags["num_codebooks"] == str(cfg.streams.num_codebooks)
    assert float(tags["rate_wrong_fact"]) == cfg.bootstrap.rate_wrong_fact
    history = client.get_metric_history(champ.run_id, "train_loss")
    assert [m.step for m in history] == [rec["step"] for rec in result.history if "train_loss" in rec]

    # second call: nothing trained, nothing registered again
    again = bootstrap(cfg, progress=False)
    assert again.cached and again.version == result.version and again.champion
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # a fresh machine on the same bucket downloads the model instead of training it
    shutil.rmtree(result.checkpoint_dir)
    fresh = bootstrap(cfg, progress=False)
    assert fresh.cached and fresh.model_hash == result.model_hash and fresh.version == result.version

    # a later, promoted champion that is not a bootstrap model is never demoted
    promoted = register_model(cfg, result.checkpoint_dir, metrics={}, params={}, alias="champion",
                              run_name="aligned model")
    kept = bootstrap(cfg, progress=False)
    assert kept.version == result.version and not kept.champion
    assert str(client.get_model_version_by_alias(name, "champion").version) == promoted
