"""The training loop: steps over a deterministic pair stream, evaluation every K steps, early
stopping with patience, the best checkpoint kept, and exact resumption after a crash.

A step takes the next ``batch_size`` pairs of the stream (epochs concatenated, each in its own
shuffled order: data.TrainData.epoch) in micro-batches of ``micro_batch_size`` (gradient
accumulation), then steps the LR schedule. Every ``eval_every`` steps (and at the last) the
held-out pairs are scored and, on the Moshi path, a held-out slice of conversations is served
(heldout.py); the criterion decides whether this is the best checkpoint so far, and patience
whether to stop. Step 0 is evaluated too, as the baseline (the over-optimisation guard compares
replay length with it), but never kept as "best": the result is always a trained checkpoint.

Resumable state (``resume.pt``, written atomically every ``checkpoint_every`` steps and at each
evaluation): model, optimizer (Kahan compensation included), schedule, data position (epoch,
pairs consumed), RNG states, early-stopping state and history. A run that restarts from it ends
with the same weights as one that never stopped (tests/components/train/test_trainer.py).

Data-parallel (``ctx`` of world size > 1: torchrun, the policy's model sharded with
``distributed.wrap_model`` before the trainer is built): every rank streams the same pairs and
trains on its slice of each step's ``batch_size`` (``distributed.shard_examples``, the loss
weighted by ``local_loss_weight``); ``batch_size`` must be a multiple of the world size so every
rank runs the same number of micro-batches (each forward and backward is a collective). The
held-out pairs are scored on every rank (the same forwards) and rank 0's metrics broadcast, so
early stopping decides the same on every rank. Checkpoints gather the full (unsharded) weights
and optimizer state on rank 0 (a collective), which alone writes files, logs (``on_log``) and
mirrors (``on_checkpoint``); a resume is read by rank 0, loaded into every rank's shards, and the
rest of the state (schedule, data position, RNG, early stopping, history) broadcast from rank 0.
Generation metrics (served through LMGen) do not run under FSDP: a distributed trainer takes no
``generation`` and the criterion falls back to the held-out pairs. A single process is the same
code with every distributed call a no-op. A resume file written at one world size resumes at any
other (the optimizer state is converted between torch's per-index and per-name layouts).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from components.common.config import TrainConfig
from components.train.checkpointing import (
    INDEXED,
    atomic_torch_save,
    full_optimizer_state,
    full_weights,
    load_optimizer_state,
    reshard,
)
from components.train.data import TrainData
from components.train.distributed import (
    DistContext,
    broadcast_object,
    load_full_model_state_dict,
    local_loss_weight,
    shard_examples,
)
from components.train.heldout import pair_metrics
from components.train.optim import make_optimizer, make_scheduler
from components.train.reference import ReferenceLogps
from components.train.step import train_step
from components.train.types import PreferencePolicy

RESUME_NAME = "resume.pt"
BEST_NAME = "best.safetensors"
# criterion → (metric name, higher is better)
CRITERIA = {"generation": ("generation_score", True),
            "heldout_accuracy": ("heldout_accuracy", True),
            "heldout_margin": ("heldout_margin", True),
            "heldout_loss": ("heldout_loss", False)}


@dataclass
class EarlyStopping:
    """Where the best checkpoint is and how many evaluations since it did not improve."""

    criterion: str
    best_value: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    baseline_replay: float | None = None
    fallback_note: str = ""

    def update(self, step: int, metrics: dict[str, Any],
               cfg: TrainConfig) -> tuple[bool, str | None]:
        """Take the evaluation of ``step``: (keep these weights as the best, the stop reason or
        None to go on). Pure: the bench replays it over a finished curve
        (pipelines/bench/alignment) to show where it fires."""
        replay = metrics.get("replay_length")
        if step == 0:
            # The starting weights are the fallback: kept when the run stops before any
            # evaluation is taken as the best (over-optimisation at the first one). The first
            # later evaluation still replaces them, whatever its value (best_value stays unset).
            self.baseline_replay = replay
            self.best_step = 0
            return True, None
        if (replay is not None and self.baseline_replay
                and replay > cfg.max_replay_growth * self.baseline_replay):
            return False, (f"over-optimisation: replay length {replay:.1f} words > "
                           f"{cfg.max_replay_growth}x the starting model's "
                           f"{self.baseline_replay:.1f}")
        if self.criterion == "none":
            self.best_step = step
            return True, None
        name, higher = CRITERIA[self.criterion]
        value = metrics.get(name)
        if value is None:
            return False, None
        improved = self.best_value is None or (
            value > self.best_value + cfg.min_delta if higher
            else value < self.best_value - cfg.min_delta)
        if improved:
            self.best_value, self.best_step, self.bad_evals = float(value), step, 0
            return True, None
        self.bad_evals += 1
        if self.bad_evals >= cfg.patience:
            return False, (f"patience: {name} did not improve on {self.best_value:.4f} (step "
                           f"{self.best_step}) for {self.bad_evals} evaluations")
        return False, None


@dataclass
class TrainOutcome:
    completed: bool  # False: paused by stop_after_steps (resume to finish)
    steps: int  # optimizer steps run in total
    total_steps: int
    stopped_at_step: int
    stop_reason: str
    best_step: int | None
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    frames_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def total_steps_for(cfg: TrainConfig, n_train: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * n_train / cfg.batch_size))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class PreferenceTrainer:
    """One training run of ``policy`` on ``data`` (see the module docstring).

    ``generation`` (optional) returns generation metrics of the policy's current weights;
    ``on_log(step, metrics)`` receives every step's and every evaluation's metrics;
    ``on_checkpoint(work_dir)`` runs after each resumable checkpoint (e.g. mirrors it to S3);
    ``ctx``: this process's place in a data-parallel run (both callbacks run on rank 0 only)."""

    def __init__(self, policy: PreferencePolicy, data: TrainData, reference: ReferenceLogps | None,
                 cfg: TrainConfig, *, work_dir: str | Path,
                 autocast_dtype: torch.dtype | None = None,
                 generation: Callable[[], dict[str, Any]] | None = None,
                 on_log: Callable[[int, dict[str, Any]], None] | None = None,
                 on_checkpoint: Callable[[Path], None] | None = None,
                 progress: bool = True, ctx: DistContext | None = None):
        if reference is None and cfg.loss != "simpo":
            raise ValueError(f"loss {cfg.loss} needs reference log-probs")
        self.ctx = ctx or DistContext()
        if self.ctx.is_distributed:
            self._check_distributed(policy, cfg, generation)
        self.policy, self.data, self.reference, self.cfg = policy, data, reference, cfg
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.autocast_dtype = autocast_dtype
        self.generation = generation
        self.on_log = on_log
        self.on_checkpoint = on_checkpoint
        self.progress = progress
        if self.ctx.is_distributed:
            # the optimizer must hold the shards, also after a scoring pass (see reshard)
            reshard(policy.model)
        groups = policy.param_groups()
        self.group_names = [g["name"] for g in groups]
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = make_optimizer(groups, cfg)
        self.total_steps = total_steps_for(cfg, len(data.train_ids))
        self.scheduler = make_scheduler(self.optimizer, cfg, self.total_steps)
        self.heldout = data.heldout()
        self.step = 0
        self.epoch = 0
        self.position = 0  # pairs of the current epoch consumed
        self.history: list[dict[str, Any]] = []
        self.early = self._early_stopping()
        self.frames = 0
        self.train_seconds = 0.0
        self.stop_reason = ""  # set once the run has ended (a resumed finished run stays finished)

    def _check_distributed(self, policy: PreferencePolicy, cfg: TrainConfig,
                           generation: Callable[[], dict[str, Any]] | None) -> None:
        from torch.distributed.fsdp import FSDPModule

        world = self.ctx.world_size
        if cfg.batch_size % world:
            raise ValueError(
                f"train.batch_size={cfg.batch_size} is not a multiple of the {world} processes: "
                f"every rank must take the same number of pairs per step, hence run the same "
                f"number of micro-batches (each FSDP forward and backward is a collective); use "
                f"a multiple of {world}, ideally of {world} x micro_batch_size = "
                f"{world * cfg.micro_batch_size}")
        if not isinstance(policy.model, FSDPModule):
            raise ValueError("a distributed trainer needs the model sharded first "
                             "(distributed.wrap_model), then the trainer builds the optimizer "
                             "on the shards")
        if generation is not None:
            raise ValueError("generation metrics serve the model through LMGen, which does not "
                             "run on an FSDP-sharded model: a distributed run takes "
                             "generation=None (the criterion falls back to the held-out pairs)")

    @property
    def _talks(self) -> bool:
        """Whether this process prints progress (rank 0 only)."""
        return self.progress and self.ctx.is_main

    # ------------------------------------------------------------------ evaluation

    def _early_stopping(self) -> EarlyStopping:
        criterion: str = self.cfg.criterion
        note = ""
        if criterion == "generation" and self.generation is None:
            note = ("no generation metrics in a distributed run (LMGen does not serve an "
                    "FSDP-sharded model)" if self.ctx.is_distributed
                    else "no generation metrics on this path")
            criterion = "heldout_accuracy"
        if criterion.startswith("heldout") and not self.heldout:
            criterion, note = "none", "no held-out pairs"
        return EarlyStopping(criterion=criterion, fallback_note=note)

    def evaluate(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"step": self.step}
        # Distributed: every rank scores all the held-out pairs (the same forwards, as FSDP's
        # collectives require) and rank 0's figures are everyone's, so early stopping, the best
        # checkpoint and the history agree on every rank whatever the kernels' last bits.
        metrics.update(pair_metrics(self.policy, self.heldout, self.reference, self.cfg,
                                    self.cfg.micro_batch_size, autocast_dtype=self.autocast_dtype))
        if self.ctx.is_distributed:  # no backward follows: back to the shards (see reshard)
            reshard(self.policy.model)
        if self.generation is not None:
            metrics.update(self.generation())
        return broadcast_object(metrics, self.ctx)

    def _judge(self, metrics: dict[str, Any]) -> str | None:
        """Update early stopping with an evaluation; the stop reason, or None to go on."""
        improved, reason = self.early.update(self.step, metrics, self.cfg)
        if improved:
            self._save_best(metrics)
        return reason

    def _save_best(self, metrics: dict[str, Any]) -> None:
        # a collective: every rank, rank 0 alone gets the weights
        weights = full_weights(self.policy.model, self.ctx)
        if self.ctx.is_main:
            tmp = self.work_dir / f".{BEST_NAME}.tmp"
            save_file(weights, str(tmp))
            os.replace(tmp, self.work_dir / BEST_NAME)
        self.best_metrics = dict(metrics)

    # ------------------------------------------------------------------ checkpoints

    def save_resume(self) -> None:
        # Both gathers are collectives (every rank); rank 0 alone writes and mirrors.
        model = full_weights(self.policy.model, self.ctx)
        optimizer, layout = full_optimizer_state(self.policy.model, self.optimizer, self.ctx)
        if not self.ctx.is_main:
            return
        state = {"step": self.step, "epoch": self.epoch, "position": self.position,
                 "model": model, "optimizer": optimizer,
                 "scheduler": self.scheduler.state_dict(), "rng": _rng_state(),
                 "early": asdict(self.early), "history": self.history,
                 "best_metrics": getattr(self, "best_metrics", {}), "frames": self.frames,
                 "train_seconds": self.train_seconds, "total_steps": self.total_steps,
                 "dataset_version": self.data.version, "stop_reason": self.stop_reason}
        if self.ctx.is_distributed:
            state["optimizer_layout"] = layout
            state["world_size"] = self.ctx.world_size
        atomic_torch_save(state, self.work_dir / RESUME_NAME)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.work_dir)

    def try_resume(self) -> bool:
        path = self.work_dir / RESUME_NAME
        state: dict[str, Any] | None = None
        if self.ctx.is_main and path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=False)
        # Rank 0 reads; the weights and optimizer state go to the shards below, the rest to all.
        meta = broadcast_object(None if state is None else
                                {k: v for k, v in state.items() if k not in ("model", "optimizer")},
                                self.ctx)
        if meta is None:
            return False
        if meta.get("dataset_version") != self.data.version or \
                meta.get("total_steps") != self.total_steps:
            raise ValueError(f"{path} belongs to another run (dataset {meta.get('dataset_version')}, "
                             f"{meta.get('total_steps')} steps); remove it or use another work dir")
        load_full_model_state_dict(self.policy.model,
                                   state["model"] if state is not None else {}, self.ctx)
        load_optimizer_state(self.policy.model, self.optimizer,
                             state["optimizer"] if state is not None else {},
                             meta.get("optimizer_layout", INDEXED), self.ctx)
        state = meta
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.early = EarlyStopping(**state["early"])
        self.history = state["history"]
        self.best_metrics = state["best_metrics"]
        self.frames, self.train_seconds = state["frames"], state["train_seconds"]
        self.stop_reason = state.get("stop_reason", "")
        if self._talks:
            print(f"[train] resumed at step {self.step}/{self.total_steps} (epoch {self.epoch}, "
                  f"{self.position} pairs in)", file=sys.stderr, flush=True)
        return True

    # ------------------------------------------------------------------ the loop

    def _stream(self) -> Iterator[tuple[Any, int, int]]:
        """(pair, epoch, position after it) from the saved data position on, epochs chained."""
        epoch, skip = self.epoch, self.position
        while True:
            position = skip
            for pair in self.data.epoch(epoch, skip=skip):
                position += 1
                yield pair, epoch, position
            epoch, skip = epoch + 1, 0

    def _log(self, metrics: dict[str, Any]) -> None:
        if self.on_log is not None and self.ctx.is_main:
            self.on_log(self.step, metrics)

    def run(self, stop_after_steps: int | None = None) -> TrainOutcome:
        t0 = time.monotonic()
        self.try_resume()
        if self.stop_reason:  # this run already ended: the same result, no further step
            return self._outcome(True, self.stop_reason, t0)
        self.policy.model.train()
        checkpoint_every = self.cfg.checkpoint_every or self.cfg.eval_every
        if self.step == 0 and not self.history:
            metrics = self.evaluate()
            self._judge(metrics)
            self.history.append(metrics)
            self._log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        stream = self._stream()
        stop_reason = ""
        run_steps = 0
        while self.step < self.total_steps:
            if stop_after_steps is not None and run_steps >= stop_after_steps:
                self.save_resume()
                return self._outcome(False, "paused", t0)
            pairs = []
            for _ in range(self.cfg.batch_size):  # every rank walks the whole stream
                pair, self.epoch, self.position = next(stream)
                pairs.append(pair)
            mine = [pairs[i] for i in shard_examples(len(pairs), self.ctx)]  # all of them: 1 rank
            micro = [mine[i : i + self.cfg.micro_batch_size]
                     for i in range(0, len(mine), self.cfg.micro_batch_size)]
            batches = [self.policy.collate(m) for m in micro]
            refs = ([self.reference.batch(b.pair_ids) for b in batches]
                    if self.reference is not None else None)
            lrs = {f"lr_{n}": g["lr"] for n, g in zip(self.group_names, self.optimizer.param_groups)}
            out = train_step(self.policy, self.optimizer, batches, refs, self.cfg,
                             autocast_dtype=self.autocast_dtype, params=self.params,
                             ctx=self.ctx,
                             loss_weight=local_loss_weight(len(mine), len(pairs), self.ctx))
            self.scheduler.step()
            self.step += 1
            run_steps += 1
            self.frames += out.positions
            self.train_seconds += out.seconds
            metrics = {**out.to_dict(), **lrs, "epoch": self.epoch,
                       "frames_per_s": out.positions / out.seconds if out.seconds else None}
            self._log({f"train/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            if self._talks:
                print(f"[train] step {self.step}/{self.total_steps} loss {out.loss:.4f} "
                      f"acc {out.accuracy:.2f} margin {out.margins:.4f} grad {out.grad_norm:.3g} "
                      f"({out.seconds:.2f}s)", file=sys.stderr, flush=True)
            evaluated = self.step % self.cfg.eval_every == 0 or self.step == self.total_steps
            if evaluated:
                ev = self.evaluate()
                reason = self._judge(ev)
                self.history.append(ev)
                self._log({f"eval/{k}": v for k, v in ev.items() if isinstance(v, (int, float))})
                if reason:
                    stop_reason = reason
            if stop_reason:
                break
            if evaluated or self.step % checkpoint_every == 0:
                self.save_resume()
        if not stop_reason:
            stop_reason = f"completed {self.total_steps} steps"
        self.stop_reason = stop_reason
        self.save_resume()  # durable end state: a rerun returns this result, trains no further
        return self._outcome(True, stop_reason, t0)

    def _outcome(self, completed: bool, reason: str, t0: float) -> TrainOutcome:
        best = self.work_dir / BEST_NAME
        if completed and broadcast_object(best.is_file() if self.ctx.is_main else None, self.ctx):
            # keep the best checkpoint: the weights of the best evaluation, not the last step's
            # (read by rank 0, loaded into every rank's shards)
            load_full_model_state_dict(self.policy.model,
                                       load_file(str(best)) if self.ctx.is_main else {}, self.ctx)
        return TrainOutcome(
            completed=completed, steps=self.step, total_steps=self.total_steps,
            stopped_at_step=self.step, stop_reason=reason, best_step=self.early.best_step,
            best_metrics=getattr(self, "best_metrics", {}), history=list(self.history),
            seconds=round(time.monotonic() - t0, 2),
            frames_per_s=self.frames / self.train_seconds if self.train_seconds else None)
