"""The train stage against the live S3 and MLflow servers: a tiny champion registered, a pairs
dataset, a training run with early stopping on held-out pairs AND generations, the challenger
registered with its lineage, exportable in Kyutai's format; reruns return the finished run."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import uuid

import pytest
from mlflow import MlflowClient

from components.common.stagekit import load_manifest
from components.common.storage import ObjectStore
from components.model.registry import register_model
from components.train.data import NotEnoughPairs
from components.train.logic import train
from components.train.reference import PREFIX
from tests.components.train.synthetic import store_dataset, synthetic_pairs, tiny_checkpoint

pytestmark = pytest.mark.integration

FAST = {"temporal_lr": 3e-3, "depformer_lr": 1e-3, "batch_size": 4, "micro_batch_size": 4,
        "warmup_steps": 1, "max_steps": 6, "eval_every": 3, "patience": 5, "min_pairs": 4,
        "heldout_fraction": 0.25, "eval_conversations": 1, "seed": 3}


@pytest.fixture
def champion(stage_cfg, ci_cfg, tokenizer, codec, tmp_path):
    """A tiny checkpoint registered as `champion` of a model name of this test's own."""
    cfg = stage_cfg.model_copy(deep=True)
    cfg.model.registered_name = f"t-train-{uuid.uuid4().hex[:8]}"
    cfg.model.cache_dir = str(tmp_path / "lm-cache")
    cfg.streams = ci_cfg.streams.model_copy()
    cfg.train = cfg.train.model_copy(update={**FAST, "work_dir": str(tmp_path / "train")})
    folder = tiny_checkpoint(tmp_path / "champion", tokenizer, codec)
    version = register_model(cfg, folder, metrics={}, params={}, alias="champion",
                             run_name="test champion")
    return cfg, f"{cfg.model.registered_name}/{version}"


def dataset(cfg, tokenizer, codec, tag, off_policy: int = 0, seed: int = 0):
    pairs = synthetic_pairs(24 + off_policy, seed=seed)
    serving = {p.pair_id: (tag if i >= off_policy else "some-other-model/7")
               for i, p in enumerate(pairs)}
    return store_dataset(ObjectStore.from_config(cfg.storage), pairs,
                         tokenizer_hash=tokenizer.hash, codec_hash=codec.hash, serving=serving)


def test_training_registers_a_challenger_with_its_lineage(champion, tokenizer, codec, tmp_path):
    from components.model.exchange import export_checkpoint

    cfg, tag = champion
    manifest = dataset(cfg, tokenizer, codec, tag, off_policy=4)
    result = train(cfg, dataset_version=manifest.version, pipeline_run="run-123")
    assert not result.cached and result.policy_version == tag
    assert result.dropped_off_policy == 4 and result.train_pairs + result.heldout_pairs == 24
    assert 0 < result.stopped_at_step <= result.total_steps == 6
    assert result.best_step is not None and result.best_step > 0
    assert result.heldout_pair_accuracy is not None
    assert result.best_metrics["generation_items"] == 3  # one held-out conversation served
    assert "generation_score" in result.best_metrics and "replay_length" in result.best_metrics

    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    name = cfg.model.registered_name
    version = client.get_model_version_by_alias(name, "challenger")
    assert version.version == result.challenger_version == "2"
    assert version.run_id == result.train_run_id  # lineage: version → training run
    assert version.tags["dataset_version"] == manifest.version
    assert version.tags["parent"] == tag
    run = client.get_run(result.train_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dataset_version"] == manifest.version  # run → dataset
    assert run.data.tags["pipeline_run"] == "run-123"
    assert run.data.tags["tokenizer_hash"] == tokenizer.hash
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == [manifest.version]
    assert run.data.params["train.loss"] == "dpo_ln"
    losses = client.get_metric_history(result.train_run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, result.stopped_at_step + 1))
    for metric in ("train/grad_norm", "train/lr_temporal", "train/lr_depformer",
                   "train/frames_per_s", "train/chosen_rewards", "train/margins",
                   "eval/heldout_accuracy", "eval/generation_score"):
        assert client.get_metric_history(result.train_run_id, metric), metric
    artifacts = {a.path for a in client.list_artifacts(result.train_run_id, "checkpoint")}
    assert "checkpoint/model.safetensors" in artifacts
    assert {a.path for a in client.list_artifacts(result.train_run_id)} >= {"train.html"}

    store = ObjectStore.from_config(cfg.storage)
    stage = load_manifest(store, result.manifest_id)
    assert stage.stage == "train" and stage.stats["challenger_version"] == "2"
    assert any(store.list(f"{PREFIX}/{manifest.version}/"))
    # exportable in Kyutai's stock format: moshi's own loader gives the same logits
    out = export_checkpoint(cfg, "challenger", tmp_path / "exported")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()

    # the same inputs again: the finished run's result, no second training or version
    again = train(cfg, dataset_version=manifest.version)
    assert again.cached and again.challenger_version == "2"
    assert len(client.search_model_versions(f"name = '{name}'")) == 2

    # another loss on the same dataset and reference: the reference log-probs are reused
    cfg.train = cfg.train.model_copy(update={"loss": "dpo", "eval_conversations": 0,
                                             "register_model": False})
    other = train(cfg, dataset_version=manifest.version)
    assert other.reference_cached and other.run_key != result.run_key
    assert other.challenger_version is None


def test_too_few_pairs_are_refused(champion, tokenizer, codec):
    cfg, tag = champion
    manifest = dataset(cfg, tokenizer, codec, tag, off_policy=20)
    cfg.train = cfg.train.model_copy(update={"min_pairs": 30})
    with pytest.raises(NotEnoughPairs, match="20 dropped: served by another model"):
        train(cfg, dataset_version=manifest.version)


def test_a_training_mix_decides_which_pairs_train(champion, tokenizer, codec):
    """The pipeline trains on a mix manifest: only the pairs it chose, from the dataset its
    stats name; another mix of the same dataset is another run."""
    from components.common.stagekit import ManifestWriter
    from components.train.data import load_train_data
    from components.train.logic import run_key, training_input

    cfg, tag = champion
    manifest = dataset(cfg, tokenizer, codec, tag)
    store = ObjectStore.from_config(cfg.storage)
    pair_ids = [p.pair_id for p in synthetic_pairs(24)]
    writer = ManifestWriter(store, "mix", None)
    for pair_id in pair_ids[:10]:
        writer.add_item({"pair_id": pair_id})
    mix_id = writer.close({"dataset_version": manifest.version}).manifest_id
    version, selected = training_input(store, mix_id)
    assert version == manifest.version and selected == set(pair_ids[:10])
    data = load_train_data(store, version, model_version=tag, on_policy=True,
                           heldout_fraction=0.25, seed=3, min_pairs=4, selected=selected)
    assert set(data.train_ids) | set(data.heldout_ids) == set(pair_ids[:10])
    assert data.not_in_mix == 14
    with pytest.raises(NotEnoughPairs, match="14 not in the training mix"):
        load_train_data(store, version, model_version=tag, on_policy=True, heldout_fraction=0.25,
                        seed=3, min_pairs=11, selected=selected)
    assert run_key(cfg, version, "ref", mix_id) != run_key(cfg, version, "ref", "mix-other")


def test_pair_types_select_the_data_type_ablation(champion, tokenizer, codec):
    """train.pair_types keeps only those types (the paper's A vs B+C ablation): counted apart,
    named in the error, and part of the run's key."""
    from components.train.data import load_train_data
    from components.train.logic import run_key

    cfg, tag = champion
    manifest = dataset(cfg, tokenizer, codec, tag)  # 24 pairs: 8 of each type
    store = ObjectStore.from_config(cfg.storage)
    data = load_train_data(store, manifest.version, model_version=tag, on_policy=True,
                           heldout_fraction=0.25, seed=3, min_pairs=4,
                           types={"interruption", "silence"})
    kept = set(data.train_ids) | set(data.heldout_ids)
    types = {p.pair_id: p.type for p in synthetic_pairs(24)}
    assert len(kept) == 16 and {types[i] for i in kept} == {"interruption", "silence"}
    assert data.other_types == 8 and set(data.by_type) <= {"interruption", "silence"}
    with pytest.raises(NotEnoughPairs, match="16 of other types than \\['content'\\]"):
        load_train_data(store, manifest.version, model_version=tag, on_policy=True,
                        heldout_fraction=0.25, seed=3, min_pairs=9, types={"content"})
    every = run_key(cfg, manifest.version, "ref")
    content = cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"pair_types": ["content"]})})
    assert run_key(content, manifest.version, "ref") != every
    timing = cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"pair_types": ["interruption", "silence"]})})
    assert run_key(timing, manifest.version, "ref") not in (every, run_key(content,
                                                                            manifest.version, "ref"))


def test_balance_timing_downsamples_the_over_represented_type():
    """train.interruption_share: the larger timing type is cut to the share (the same pairs on
    every call, other types and order untouched); the share's extremes drop one type."""
    from components.train.data import balance_timing

    ids = [f"s{k}" for k in range(20)] + [f"i{k}" for k in range(10)] + ["c0", "c1"]
    type_of = {i: {"s": "silence", "i": "interruption", "c": "content"}[i[0]] for i in ids}

    def count(out: list[str]) -> tuple[int, int, int]:
        return tuple(sum(i[0] == t for i in out) for t in "isc")  # type: ignore[return-value]

    half, dropped = balance_timing(ids, type_of, 0.5, seed=1)
    assert count(half) == (10, 10, 2) and dropped == 10
    assert half == [i for i in ids if i in set(half)]  # order kept
    assert balance_timing(ids, type_of, 0.5, seed=1)[0] == half  # stable
    assert balance_timing(ids, type_of, 0.5, seed=2)[0] != half  # the seed draws them
    assert count(balance_timing(ids, type_of, 0.8, seed=1)[0]) == (10, 2, 2)  # fewer silence
    assert count(balance_timing(ids, type_of, 1 / 3, seed=1)[0]) == (10, 20, 2)  # as it came
    assert count(balance_timing(ids, type_of, 0.0, seed=1)[0]) == (0, 20, 2)
    assert count(balance_timing(ids, type_of, 1.0, seed=1)[0]) == (10, 0, 2)
    only_content = [i for i in ids if i[0] == "c"]
    assert balance_timing(only_content, type_of, 0.5, seed=1) == (only_content, 0)


def test_interruption_share_trains_on_fewer_pairs_as_another_run(champion, tokenizer, codec):
    """Set, it trains on fewer pairs (counted in balanced_out; held-out pairs untouched) and is
    another run."""
    from components.train.data import load_train_data
    from components.train.logic import run_key

    cfg, tag = champion
    manifest = dataset(cfg, tokenizer, codec, tag)  # 24 pairs: 8 of each type
    store = ObjectStore.from_config(cfg.storage)
    args = dict(model_version=tag, on_policy=True, heldout_fraction=0.25, seed=3, min_pairs=4)
    every = load_train_data(store, manifest.version, **args)
    quiet = load_train_data(store, manifest.version, interruption_share=0.25, **args)
    assert quiet.heldout_ids == every.heldout_ids
    assert quiet.by_type["silence"] == every.by_type["silence"]
    assert quiet.by_type["interruption"] == round(every.by_type["silence"] / 3)
    assert quiet.balanced_out == len(every.train_ids) - len(quiet.train_ids) > 0
    assert quiet.summary()["balanced_out"] == quiet.balanced_out
    shared = cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"interruption_share": 0.25})})
    assert run_key(shared, manifest.version, "ref") != run_key(cfg, manifest.version, "ref")
