"""train: preference optimisation of the serving model on a pairs dataset version.

    tokenize manifest ──stats.pairs_dataset──▶ pairs dataset version
    train.policy_source (default: the `champion` alias) ──▶ policy = reference weights

1. The run's key hashes the dataset version, the reference weights and the training settings:
   the same inputs are the same run. A finished run left ``train/runs/<key>/result.json``: a
   rerun returns it (no second training, no second registered version); an unfinished one
   resumes from its last checkpoint (local work dir, else the bucket's mirror).
2. Pairs: on-policy filter, held-out split, minimum count (data.py).
3. Reference log-probs: cached per (dataset version, reference weights, scoring) (reference.py).
4. The loop with early stopping (trainer.py), tracked in MLflow (tracking.py).
5. The best checkpoint, in Kyutai's stock format, is registered as a new version of the model
   with alias ``train.alias`` (``challenger``), lineage tags to the run and the dataset.
6. A stage manifest ``train-<hash>`` (input: the tokenize manifest) carries the figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models (CPU workers: no compile)

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from components.common.config import Config
from components.common.stagekit import ManifestWriter, load_manifest
from components.common.storage import ObjectStore
from components.contract import Keys, canonical_json

STAGE = "train"
RUNS_PREFIX = "train/runs"
# Settings that do not change what a run computes (where and how fast it runs).
_NOT_IN_KEY = ("device", "threads", "work_dir", "mirror_checkpoints", "register_model", "alias",
               "compile")


@dataclass
class TrainResult:
    manifest_id: str
    run_key: str
    train_run_id: str
    dataset_version: str
    policy_version: str  # the model the run started from (the reference)
    challenger_version: str | None
    stopped_at_step: int
    total_steps: int
    best_step: int | None
    stop_reason: str
    heldout_pair_accuracy: float | None
    heldout_margin: float | None
    train_pairs: int
    heldout_pairs: int
    dropped_off_policy: int
    reference_cached: bool
    seconds: float
    frames_per_s: float | None
    report: str | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log(message: str) -> None:
    print(f"[{STAGE}] {message}", file=sys.stderr, flush=True)


def run_key(cfg: Config, dataset_version: str, reference_sha256: str) -> str:
    settings = {k: v for k, v in cfg.train.model_dump(mode="json").items() if k not in _NOT_IN_KEY}
    body = canonical_json({"dataset": dataset_version, "reference": reference_sha256,
                           "train": settings, "model_context": cfg.model.context})
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def report_key(key: str) -> str:
    """The training curves page of run ``key``."""
    return Keys.report(STAGE, key, "train.html")


def dataset_of(store: ObjectStore, tokenize_manifest_id: str) -> str:
    manifest = load_manifest(store, tokenize_manifest_id)
    version = manifest.stats.get("pairs_dataset")
    if not version:
        raise ValueError(f"{tokenize_manifest_id} names no pairs dataset (no pairs were tokenised)")
    return str(version)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def autocast_for(setting: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast for compute on CUDA ("auto"); weights stay fp32 masters either way."""
    if setting == "bf16" or (setting == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class _StateMirror:
    """The work dir's resumable files, mirrored to ``train/runs/<key>/state/``."""

    NAMES = ("resume.pt", "best.safetensors", "mlflow_run_id")

    def __init__(self, store: ObjectStore, key: str, enabled: bool):
        self.store, self.prefix, self.enabled = store, f"{RUNS_PREFIX}/{key}/state", enabled

    def push(self, work_dir: Path) -> None:
        if not self.enabled:
            return
        for name in self.NAMES:  # resume.pt last but one: best first, then the state naming it
            path = work_dir / name
            if path.is_file():
                self.store.put_file(f"{self.prefix}/{name}", path)

    def pull(self, work_dir: Path) -> bool:
        if not self.enabled or (work_dir / "resume.pt").is_file():
            return False
        if not self.store.exists(f"{self.prefix}/resume.pt"):
            return False
        for name in self.NAMES:
            if self.store.exists(f"{self.prefix}/{name}"):
                self.store.download_file(f"{self.prefix}/{name}", work_dir / name)
        return True


def _write_manifest(store: ObjectStore, tokenize_manifest_id: str | None,
                    result: TrainResult) -> str:
    stats = {k: v for k, v in result.to_dict().items() if k not in ("manifest_id", "cached")}
    stats["seconds"] = result.seconds
    writer = ManifestWriter(store, STAGE, tokenize_manifest_id)
    return writer.close(stats).manifest_id


def train(cfg: Config, tokenize_manifest_id: str | None = None, *,
          dataset_version: str | None = None, pipeline_run: str = "",
          stop_after_steps: int | None = None, skip_if_too_few: bool = False,
          progress: bool = True) -> TrainResult:
    """Train (or resume, or return the finished run of the same inputs); see the module doc.

    Fewer pairs than ``train.min_pairs`` (after the on-policy filter) raise NotEnoughPairs, or,
    with ``skip_if_too_few`` (the pipeline's task), end the stage without training: its manifest
    says why, and no challenger is registered."""
    from components.model.checkpoint import load_checkpoint, read_identity, save_checkpoint
    from components.model.registry import model_version_tag, resolve_model
    from components.train.data import NotEnoughPairs, load_train_data
    from components.train.moshi_policy import MoshiTextPolicy
    from components.train.reference import reference_logps
    from components.train.tracking import TrainTracker, flatten, render_curves_html
    from components.train.trainer import PreferenceTrainer

    t0 = time.monotonic()
    tc = cfg.train
    if tc.hf_model:
        raise ValueError("train.hf_model: the pipeline's train stage trains the Moshi LM on pair "
                         "tensors; drive HFCausalPolicy through PreferenceTrainer for text pairs "
                         "(components/train/hf_policy.py)")
    store = ObjectStore.from_config(cfg.storage)
    store.ensure_bucket(versioning=True)
    if dataset_version is None:
        if tokenize_manifest_id is None:
            raise ValueError("give a tokenize manifest id or a dataset version")
        dataset_version = dataset_of(store, tokenize_manifest_id)
    folder = resolve_model(cfg, tc.policy_source)
    policy_tag = model_version_tag(cfg, tc.policy_source)
    identity = read_identity(folder)
    if identity is None:
        raise ValueError(f"{folder}: no duplexalign.json (import the checkpoint first: "
                         "`duplexalign model import`)")
    key = run_key(cfg, dataset_version, identity.weights_sha256)
    result_key = f"{RUNS_PREFIX}/{key}/result.json"
    if store.exists(result_key):
        result = TrainResult(**store.get_json(result_key))
        result.cached = True
        if progress:
            _log(f"run {key} finished earlier: {result.stop_reason}; challenger "
                 f"{result.challenger_version}")
        return result

    try:
        data = load_train_data(store, dataset_version, model_version=policy_tag,
                               on_policy=tc.on_policy, heldout_fraction=tc.heldout_fraction,
                               seed=tc.seed, min_pairs=tc.min_pairs)
    except NotEnoughPairs as exc:
        if not skip_if_too_few:
            raise
        _log(f"not training: {exc}")
        skipped = TrainResult(
            manifest_id="", run_key=key, train_run_id="", dataset_version=dataset_version,
            policy_version=policy_tag, challenger_version=None, stopped_at_step=0,
            total_steps=0, best_step=None, stop_reason=f"skipped: {exc}",
            heldout_pair_accuracy=None, heldout_margin=None, train_pairs=0, heldout_pairs=0,
            dropped_off_policy=0, reference_cached=False,
            seconds=round(time.monotonic() - t0, 2), frames_per_s=None)
        skipped.manifest_id = _write_manifest(store, tokenize_manifest_id, skipped)
        return skipped
    if data.dataset.manifest.tokenizer_hash != identity.tokenizer_hash or \
            data.dataset.manifest.codec_hash != identity.codec_hash:
        raise ValueError(f"dataset {dataset_version} was tokenised with "
                         f"{data.dataset.manifest.tokenizer_hash}/{data.dataset.manifest.codec_hash}"
                         f", the policy speaks {identity.tokenizer_hash}/{identity.codec_hash}")
    if progress:
        _log(f"run {key}: {policy_tag} on {dataset_version}: {data.summary()}")

    device = pick_device(tc.device)
    autocast = autocast_for(tc.autocast, device)
    if tc.threads and device.type == "cpu":
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    model = load_checkpoint(folder, cfg)
    model.lm.to(device)
    policy = MoshiTextPolicy(model.lm, tc)
    if tc.compile == "on" or (tc.compile == "auto" and device.type == "cuda"):
        for layer in model.lm.transformer.layers:
            layer.compile()

    reference = None
    if tc.loss != "simpo":
        scoring = {"policy": type(policy).__name__, "stream": tc.stream,
                   "audio_weight": tc.audio_weight, "length_norm": tc.length_norm,
                   "autocast": str(autocast)}
        reference = reference_logps(store, policy, data.all_pairs(),
                                    dataset_version=dataset_version,
                                    reference_sha256=identity.weights_sha256, scoring=scoring,
                                    batch_size=tc.micro_batch_size, autocast_dtype=autocast,
                                    use_cache=tc.reference_cache, progress=progress)

    work_dir = Path(tc.work_dir or Path(cfg.services.state_dir) / "train") / key
    work_dir.mkdir(parents=True, exist_ok=True)
    mirror = _StateMirror(store, key, tc.mirror_checkpoints)
    if mirror.pull(work_dir) and progress:
        _log(f"run {key}: resumable state fetched from the bucket")
    run_id_file = work_dir / "mlflow_run_id"
    tracker = TrainTracker(cfg, run_name=f"train {tc.loss} {policy_tag} {dataset_version[:14]}",
                           run_id=run_id_file.read_text().strip() if run_id_file.is_file() else None)
    run_id_file.write_text(tracker.run_id)
    manifest_dump = data.dataset.manifest.model_dump(mode="json")
    tracker.set_tags({"stage": STAGE, "profile": cfg.profile, "dataset_version": dataset_version,
                      "tokenizer_hash": identity.tokenizer_hash, "codec_hash": identity.codec_hash,
                      "pipeline_run": pipeline_run or "-", "policy_version": policy_tag,
                      "train_run_key": key, "loss": tc.loss,
                      "tokenize_manifest": tokenize_manifest_id or "-"})
    tracker.log_params({**flatten(tc.model_dump(mode="json"), "train."),
                        **{f"data.{k}": v for k, v in data.summary().items()},
                        "device": str(device), "autocast": str(autocast)})
    tracker.log_dataset(dataset_version, manifest_dump,
                        store.uri(Keys.pair_dataset_manifest(dataset_version)))

    generation = None
    if tc.eval_conversations > 0:
        from components.train.heldout import GenerationEval

        evaluator = GenerationEval(cfg)
        generation = lambda: evaluator(model)  # noqa: E731  (the live, training weights)

    trainer = PreferenceTrainer(policy, data, reference, tc, work_dir=work_dir,
                                autocast_dtype=autocast, generation=generation,
                                on_log=tracker.log_metrics, on_checkpoint=mirror.push,
                                progress=progress)
    try:
        outcome = trainer.run(stop_after_steps=stop_after_steps)
    except BaseException:
        tracker.finish("FAILED")
        raise
    if not outcome.completed:
        tracker.flush()
        raise TrainingPaused(f"run {key} paused at step {outcome.steps}/{outcome.total_steps}; "
                             "run again to resume")

    best = outcome.best_metrics
    summary = {"loss": tc.loss, "dataset_version": dataset_version, "policy_version": policy_tag,
               "stopped_at_step": outcome.stopped_at_step, "total_steps": outcome.total_steps,
               "best_step": outcome.best_step, "stop_reason": outcome.stop_reason,
               "criterion": trainer.early.criterion + (f" ({trainer.early.fallback_note})"
                                                       if trainer.early.fallback_note else ""),
               **data.summary()}
    page = render_curves_html(summary, outcome.history)
    store.put_bytes(report_key(key), page.encode(), content_type="text/html")
    tracker.log_text(page, "train.html")
    tracker.log_text(json.dumps({**summary, "history": outcome.history}, indent=2, default=str),
                     "train_history.json")

    challenger = None
    checkpoint_dir = work_dir / "checkpoint"
    model.lm.to("cpu")
    save_checkpoint(model.lm, model.lm_kwargs, model.tokenizer, model.codec, checkpoint_dir,
                    identity_extra={"size": identity.size, "parent": policy_tag,
                                    "train_run_key": key, "dataset_version": dataset_version,
                                    "best_step": outcome.best_step})
    if tc.register_model:
        challenger = _register_once(cfg, checkpoint_dir, tracker.run_id, key,
                                    {"dataset_version": dataset_version, "train_run_key": key,
                                     "train_run_id": tracker.run_id, "parent": policy_tag,
                                     "origin": "train", "loss": tc.loss})
    else:
        tracker.log_artifacts(checkpoint_dir, "checkpoint")
    tracker.set_tags({"stopped_at_step": outcome.stopped_at_step,
                      "stop_reason": outcome.stop_reason, "best_step": outcome.best_step,
                      "challenger_version": challenger or "-"})
    tracker.finish("FINISHED")

    result = TrainResult(
        manifest_id="", run_key=key, train_run_id=tracker.run_id,
        dataset_version=dataset_version, policy_version=policy_tag,
        challenger_version=challenger, stopped_at_step=outcome.stopped_at_step,
        total_steps=outcome.total_steps, best_step=outcome.best_step,
        stop_reason=outcome.stop_reason,
        heldout_pair_accuracy=best.get("heldout_accuracy"),
        heldout_margin=best.get("heldout_margin"), train_pairs=len(data.train_ids),
        heldout_pairs=len(data.heldout_ids), dropped_off_policy=data.dropped_off_policy,
        reference_cached=bool(reference and reference.cached),
        seconds=round(time.monotonic() - t0, 2), frames_per_s=outcome.frames_per_s,
        report=store.uri(report_key(key)),
        best_metrics={k: v for k, v in best.items() if isinstance(v, (int, float))})
    result.manifest_id = _write_manifest(store, tokenize_manifest_id, result)
    store.put_json(result_key, result.to_dict())  # last: marks the run finished
    if progress:
        _log(f"run {key}: {outcome.stop_reason}; best step {outcome.best_step}, held-out "
             f"accuracy {result.heldout_pair_accuracy}; challenger {challenger}")
    return result


class TrainingPaused(RuntimeError):
    """The run stopped after ``stop_after_steps`` with a resumable checkpoint."""


def _register_once(cfg: Config, checkpoint_dir: Path, run_id: str, key: str,
                   tags: dict[str, str]) -> str:
    """Register the checkpoint as a new version with the challenger alias — unless a crash after
    registering left a version of this run already (found by its train_run_key tag)."""
    from mlflow import MlflowClient

    from components.model.registry import register_model

    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    name = cfg.model.registered_name
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.train_run_key = '{key}'")
    except Exception:  # noqa: BLE001  (no such model yet)
        found = []
    if found:
        version = str(max(int(v.version) for v in found))
        client.set_registered_model_alias(name, cfg.train.alias, version)
        return version
    return register_model(cfg, checkpoint_dir, metrics={}, params={}, alias=cfg.train.alias,
                          run_name="", tags={k: str(v) for k, v in tags.items()}, run_id=run_id)
