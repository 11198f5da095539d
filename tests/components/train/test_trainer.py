"""The training loop on the live S3 store: learning on a separable set, LR per group, early
stopping, the best checkpoint, and exact resumption (paused, and killed with SIGKILL)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from components.common.config import load_config
from components.model.spec import build_lm, lm_kwargs
from components.train.data import load_train_data
from components.train.moshi_policy import MoshiTextPolicy
from components.train.reference import reference_logps
from components.train.trainer import RESUME_NAME, PreferenceTrainer
from tests.components.model.helpers import Layout
from tests.components.train.synthetic import store_dataset, synthetic_pairs

pytestmark = pytest.mark.integration

SERVING = "tiny/1"


def train_cfg(**over):
    base = {"temporal_lr": 3e-3, "depformer_lr": 1e-3, "batch_size": 4, "micro_batch_size": 2,
            "warmup_steps": 1, "epochs": 2.0, "eval_every": 2, "patience": 50,
            "heldout_fraction": 0.25, "min_pairs": 4, "eval_conversations": 0,
            "criterion": "heldout_accuracy", "seed": 3, "mirror_checkpoints": False}
    base.update(over)
    return load_config("ci", overrides={f"train.{k}": v for k, v in base.items()}).train


def make_run(store, tcfg, work_dir: Path, n_pairs: int = 24):
    manifest = store_dataset(store, synthetic_pairs(n_pairs), tokenizer_hash="spm-test",
                             codec_hash="mimi-test", serving=SERVING)
    data = load_train_data(store, manifest.version, model_version=SERVING, on_policy=True,
                           heldout_fraction=tcfg.heldout_fraction, seed=tcfg.seed,
                           min_pairs=tcfg.min_pairs)
    lm = build_lm(lm_kwargs("tiny", Layout(4), context=64), seed=0)
    policy = MoshiTextPolicy(lm, tcfg)
    ref = reference_logps(store, policy, data.reference_groups(), dataset_version=data.version,
                          reference_sha256="init-seed-0", scoring={"t": 1}, batch_size=4,
                          progress=False)
    logged: list[tuple[int, dict]] = []
    trainer = PreferenceTrainer(policy, data, ref, tcfg, work_dir=work_dir, progress=False,
                                on_log=lambda step, m: logged.append((step, m)))
    return trainer, logged


def test_separable_set_loss_falls_and_heldout_accuracy_rises(store, tmp_path):
    trainer, logged = make_run(store, train_cfg(), tmp_path / "run")
    out = trainer.run()
    assert out.completed and out.steps == trainer.total_steps == 9  # ceil(2 x 18 / 4)
    losses = [m["train/loss"] for _, m in logged if "train/loss" in m]
    assert len(losses) == out.steps
    assert losses[-1] < losses[0] - 0.05
    evals = [h for h in out.history if "heldout_accuracy" in h]
    assert evals[0]["step"] == 0 and evals[0]["heldout_accuracy"] == 0.0  # policy == reference
    assert max(h["heldout_accuracy"] for h in evals[1:]) == 1.0
    assert out.best_step is not None and out.best_step > 0
    assert out.best_metrics["heldout_accuracy"] == 1.0
    assert "completed" in out.stop_reason


def test_learning_rate_per_group_follows_the_schedule(store, tmp_path):
    tcfg = train_cfg(temporal_lr=2e-3, depformer_lr=5e-4, warmup_steps=2, schedule="constant")
    trainer, logged = make_run(store, tcfg, tmp_path / "run")
    assert trainer.group_names == ["temporal", "depformer"]
    trainer.run()
    lrs = [(m["train/lr_temporal"], m["train/lr_depformer"]) for _, m in logged
           if "train/lr_temporal" in m]
    assert lrs[0] == pytest.approx((1e-3, 2.5e-4))  # warm-up: 1/2 of the peak at step 1
    assert lrs[-1] == pytest.approx((2e-3, 5e-4))


def test_patience_stops_and_keeps_the_best_checkpoint(store, tmp_path):
    # a learning rate of 0 never improves: patience 2 stops after the 2nd evaluation with the
    # weights of the first (the best), and says why
    trainer, _ = make_run(store, train_cfg(temporal_lr=0.0, depformer_lr=0.0, patience=2,
                                           eval_every=1, criterion="heldout_loss"),
                          tmp_path / "run")
    out = trainer.run()
    assert out.stopped_at_step == 3 and out.best_step == 1
    assert out.stop_reason.startswith("patience: heldout_loss did not improve")


def test_over_optimisation_at_the_first_evaluation_keeps_the_starting_weights(store, tmp_path):
    # replay length 10 words at step 0, 50 at the first evaluation: the guard stops the run
    # before any evaluation was taken as the best — the weights it started from are kept, never
    # the over-optimised ones
    trainer, _ = make_run(store, train_cfg(eval_every=1, criterion="generation"),
                          tmp_path / "run")
    replays = iter([10.0, 50.0])
    trainer.generation = lambda: {"replay_length": next(replays), "generation_score": 0.5}
    start = _weights(trainer)
    out = trainer.run()
    assert out.stopped_at_step == 1 and out.stop_reason.startswith("over-optimisation")
    assert out.best_step == 0 and out.best_metrics["step"] == 0
    assert all(torch.equal(start[k], v) for k, v in _weights(trainer).items())


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.policy.model.state_dict().items()}


def test_paused_run_resumes_to_the_same_result(store, tmp_path):
    tcfg = train_cfg(checkpoint_every=1)
    straight, _ = make_run(store, tcfg, tmp_path / "straight")
    expected = straight.run()
    paused, _ = make_run(store, tcfg, tmp_path / "paused")
    first = paused.run(stop_after_steps=4)
    assert not first.completed and first.steps == 4
    resumed, _ = make_run(store, tcfg, tmp_path / "paused")  # a new process: fresh weights
    second = resumed.run()
    assert second.completed and second.steps == expected.steps
    assert second.best_step == expected.best_step
    got, want = _weights(resumed), _weights(straight)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert [h.get("heldout_loss") for h in second.history] == \
        [h.get("heldout_loss") for h in expected.history]
    # a finished run stays finished: running it again trains no further step
    again, _ = make_run(store, tcfg, tmp_path / "paused")
    assert again.run().steps == expected.steps


CHILD = """
import sys, os, time
os.environ.setdefault("NO_TORCH_COMPILE", "1")
from components.common.config import load_config
from components.common.storage import ObjectStore
from tests.components.train import test_trainer as T
store = ObjectStore.from_config(load_config("ci", overrides=[
    "storage.endpoint=" + sys.argv[1], "storage.bucket=" + sys.argv[2],
    "storage.credentials_file=" + sys.argv[3]]).storage, prefix=sys.argv[4])
trainer, _ = T.make_run(store, T.train_cfg(checkpoint_every=1, epochs=12.0),
                        T.Path(sys.argv[5]))
trainer.on_checkpoint = lambda d: time.sleep(0.3)  # give the parent time to kill mid-run
trainer.run()
print("finished")
"""


def test_killed_run_resumes_to_the_same_result(store, services_config, tmp_path):
    """SIGKILL after the first checkpoint, then resume: same weights as an uninterrupted run."""
    work = tmp_path / "killed"
    s = services_config.storage
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, s.endpoint, s.bucket, s.credentials_file, store.prefix,
         str(work)], cwd=Path(__file__).resolve().parents[3], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (work / RESUME_NAME).is_file():
        assert child.poll() is None, child.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL  # killed mid-run, not finished
    state = torch.load(work / RESUME_NAME, weights_only=False)
    tcfg = train_cfg(checkpoint_every=1, epochs=12.0)
    assert 0 < state["step"]
    resumed, _ = make_run(store, tcfg, work)
    out = resumed.run()
    assert out.completed and out.steps == resumed.total_steps > state["step"]
    straight, _ = make_run(store, tcfg, tmp_path / "straight")
    straight.run()
    got, want = _weights(resumed), _weights(straight)
    assert all(torch.equal(got[k], want[k]) for k in want)
