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
from typing import TYPE_CHECKING, Any

import torch

from components.common.config import Config, flatten
from components.common.stagekit import ManifestWriter, iter_items, load_manifest, stage_of
from components.common.storage import ObjectStore
from components.contract import Keys, canonical_json

if TYPE_CHECKING:  # pragma: no cover
    from components.train.distributed import DistContext

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


def run_key(cfg: Config, dataset_version: str, reference_sha256: str,
            selection: str | None = None) -> str:
    """The run's identity: dataset, reference weights, settings and — when a training mix chose
    the pairs — the mix manifest (another mix of the same dataset is another run)."""
    settings = {k: v for k, v in cfg.train.model_dump(mode="json").items() if k not in _NOT_IN_KEY}
    if not settings.get("pair_types"):  # every type: the key runs had before the option existed
        settings.pop("pair_types", None)
    if settings.get("interruption_share") is None:  # likewise: the data's own ratio
        settings.pop("interruption_share", None)
    body = {"dataset": dataset_version, "reference": reference_sha256, "train": settings,
            "model_context": cfg.model.context}
    if selection:
        body["selection"] = selection
    body = canonical_json(body)
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


def training_input(store: ObjectStore, input_manifest_id: str) -> tuple[str, set[str] | None]:
    """(dataset version, pair ids to train on) of the stage's input manifest: a training mix
    (components/mix: the pairs the feature-based selection kept, its stats name the dataset), or a
    tokenize manifest (every pair of its dataset)."""
    if stage_of(input_manifest_id) == "mix":
        mix = load_manifest(store, input_manifest_id)
        version = mix.stats.get("dataset_version")
        if not version:
            raise ValueError(f"{input_manifest_id} names no pairs dataset")
        return str(version), {str(item["pair_id"]) for item in iter_items(store, mix)}
    return dataset_of(store, input_manifest_id), None


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


def _write_manifest(store: ObjectStore, input_manifest_id: str | None,
                    result: TrainResult) -> str:
    stats = {k: v for k, v in result.to_dict().items() if k not in ("manifest_id", "cached")}
    stats["seconds"] = result.seconds
    writer = ManifestWriter(store, STAGE, input_manifest_id)
    return writer.close(stats).manifest_id


def train(cfg: Config, input_manifest_id: str | None = None, *,
          dataset_version: str | None = None, pipeline_run: str = "",
          stop_after_steps: int | None = None, skip_if_too_few: bool = False,
          progress: bool = True) -> TrainResult:
    """Train (or resume, or return the finished run of the same inputs); see the module doc.

    ``input_manifest_id`` is the training mix (the pipeline: the pairs components/mix selected) or
    a tokenize manifest (every pair of its dataset); or give ``dataset_version`` directly.

    Fewer pairs than ``train.min_pairs`` (after the on-policy filter) raise NotEnoughPairs, or,
    with ``skip_if_too_few`` (the pipeline's task), end the stage without training: its manifest
    says why, and no challenger is registered.

    Under torchrun (``DistContext.from_env()``: world size > 1) every process runs this same
    function: the process group is joined here (and left at the end), the model is sharded with
    FSDP (distributed.py) and each rank trains on its share of every step's pairs; rank 0 alone
    talks to MLflow, writes the report, the checkpoint, the registered version, result.json and
    the stage manifest, and every rank returns rank 0's TrainResult. Generation metrics are not
    served in a distributed run (LMGen does not run on a sharded model): early stopping falls
    back to the held-out pairs (docs/train.md, "Scale")."""
    from components.train.distributed import DistContext, destroy_distributed, init_distributed

    ctx = DistContext.from_env()
    device = ctx.device(cfg.train.device)
    created = init_distributed(ctx, device)
    try:
        return _train(cfg, ctx, device, input_manifest_id, dataset_version=dataset_version,
                      pipeline_run=pipeline_run, stop_after_steps=stop_after_steps,
                      skip_if_too_few=skip_if_too_few, progress=progress)
    finally:
        if created:
            destroy_distributed()


def _train(cfg: Config, ctx: "DistContext", device: torch.device, input_manifest_id: str | None, *,
           dataset_version: str | None, pipeline_run: str, stop_after_steps: int | None,
           skip_if_too_few: bool, progress: bool) -> TrainResult:
    from components.model.checkpoint import load_checkpoint, read_identity
    from components.model.registry import model_version_tag, resolve_model
    from components.train.data import NotEnoughPairs, load_train_data
    from components.train.distributed import barrier, broadcast_object, wrap_model
    from components.train.moshi_policy import MoshiTextPolicy
    from components.train.tracking import TrainTracker
    from components.train.trainer import PreferenceTrainer

    t0 = time.monotonic()
    tc = cfg.train
    main = ctx.is_main
    talk = progress and main
    if tc.hf_model:
        raise ValueError("train.hf_model: the pipeline's train stage trains the Moshi LM on pair "
                         "tensors; drive HFCausalPolicy through PreferenceTrainer for text pairs "
                         "(components/train/hf_policy.py)")
    store = ObjectStore.from_config(cfg.storage)
    if main:
        store.ensure_bucket(versioning=True)
    barrier(ctx)
    selected: set[str] | None = None
    if dataset_version is None:
        if input_manifest_id is None:
            raise ValueError("give a mix or tokenize manifest id, or a dataset version")
        dataset_version, selected = training_input(store, input_manifest_id)
    # One download per node (the first process of each node), then the others find it cached.
    if ctx.local_rank == 0:
        folder = resolve_model(cfg, tc.policy_source)
    barrier(ctx)
    if ctx.local_rank != 0:
        folder = resolve_model(cfg, tc.policy_source)
    policy_tag = model_version_tag(cfg, tc.policy_source)
    identity = read_identity(folder)
    if identity is None:
        raise ValueError(f"{folder}: no duplexalign.json (import the checkpoint first: "
                         "`duplexalign model import`)")
    key = run_key(cfg, dataset_version, identity.weights_sha256,
                  input_manifest_id if selected is not None else None)
    result_key = f"{RUNS_PREFIX}/{key}/result.json"
    finished = broadcast_object(store.get_json(result_key) if main and store.exists(result_key)
                                else None, ctx)
    if finished is not None:
        result = TrainResult(**finished)
        result.cached = True
        if talk:
            _log(f"run {key} finished earlier: {result.stop_reason}; challenger "
                 f"{result.challenger_version}")
        return result

    try:
        data = load_train_data(store, dataset_version, model_version=policy_tag,
                               on_policy=tc.on_policy, heldout_fraction=tc.heldout_fraction,
                               seed=tc.seed, min_pairs=tc.min_pairs, selected=selected,
                               types=set(tc.pair_types) or None,
                               interruption_share=tc.interruption_share)
    except NotEnoughPairs as exc:  # the same data on every rank: every rank gets here
        if not skip_if_too_few:
            raise
        skipped: TrainResult | None = None
        if main:
            _log(f"not training: {exc}")
            skipped = TrainResult(
                manifest_id="", run_key=key, train_run_id="", dataset_version=dataset_version,
                policy_version=policy_tag, challenger_version=None, stopped_at_step=0,
                total_steps=0, best_step=None, stop_reason=f"skipped: {exc}",
                heldout_pair_accuracy=None, heldout_margin=None, train_pairs=0,
                heldout_pairs=0, dropped_off_policy=0, reference_cached=False,
                seconds=round(time.monotonic() - t0, 2), frames_per_s=None)
            skipped.manifest_id = _write_manifest(store, input_manifest_id, skipped)
        return broadcast_object(skipped, ctx)
    if data.dataset.manifest.tokenizer_hash != identity.tokenizer_hash or \
            data.dataset.manifest.codec_hash != identity.codec_hash:
        raise ValueError(f"dataset {dataset_version} was tokenised with "
                         f"{data.dataset.manifest.tokenizer_hash}/{data.dataset.manifest.codec_hash}"
                         f", the policy speaks {identity.tokenizer_hash}/{identity.codec_hash}")
    if talk:
        _log(f"run {key}: {policy_tag} on {dataset_version}: {data.summary()}"
             + (f"; {ctx.world_size} processes (FSDP)" if ctx.is_distributed else ""))

    autocast = autocast_for(tc.autocast, device)
    if tc.threads and device.type == "cpu":
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    model = load_checkpoint(folder, cfg)
    model.lm.to(device)
    # LoRA, checkpointing and the attention kernel go on the plain model, before FSDP wraps it.
    policy = MoshiTextPolicy(model.lm, tc)
    if not ctx.is_distributed and (tc.compile == "on" or
                                   (tc.compile == "auto" and device.type == "cuda")):
        # per-layer torch.compile: single process only (not verified under FSDP2)
        for layer in model.lm.transformer.layers:
            layer.compile()

    # FSDP after LoRA / checkpointing / the attention kernel (the trainer builds the optimizer on
    # the shards); a single process: the model as it is.
    wrap_model(model.lm, ctx, tc, device=device)

    reference = None
    if tc.loss != "simpo":
        scoring = {"policy": type(policy).__name__, "stream": tc.stream,
                   "audio_weight": tc.audio_weight, "length_norm": tc.length_norm,
                   "autocast": str(autocast)}
        if ctx.is_distributed:
            from components.train.distributed import mixed_precision

            param_dtype = mixed_precision(tc, device).param_dtype
            if param_dtype is not None:  # CUDA: bf16-gathered weights score differently
                scoring["fsdp_param_dtype"] = str(param_dtype)
        reference = _reference(store, policy, data, ctx, dataset_version=dataset_version,
                               reference_sha256=identity.weights_sha256, scoring=scoring,
                               autocast=autocast, progress=talk)

    work_dir = Path(tc.work_dir or Path(cfg.services.state_dir) / "train") / key
    work_dir.mkdir(parents=True, exist_ok=True)
    mirror = _StateMirror(store, key, tc.mirror_checkpoints)
    tracker = None
    if main:
        if mirror.pull(work_dir) and talk:
            _log(f"run {key}: resumable state fetched from the bucket")
        run_id_file = work_dir / "mlflow_run_id"
        tracker = TrainTracker(cfg,
                               run_name=f"train {tc.loss} {policy_tag} {dataset_version[:14]}",
                               run_id=(run_id_file.read_text().strip() if run_id_file.is_file()
                                       else None))
        run_id_file.write_text(tracker.run_id)
        manifest_dump = data.dataset.manifest.model_dump(mode="json")
        tracker.set_tags({"stage": STAGE, "profile": cfg.profile,
                          "dataset_version": dataset_version,
                          "tokenizer_hash": identity.tokenizer_hash,
                          "codec_hash": identity.codec_hash,
                          "pipeline_run": pipeline_run or "-", "policy_version": policy_tag,
                          "train_run_key": key, "loss": tc.loss,
                          "input_manifest": input_manifest_id or "-"})
        tracker.log_params({**flatten(tc.model_dump(mode="json"), "train."),
                            **{f"data.{k}": v for k, v in data.summary().items()},
                            "device": str(device), "autocast": str(autocast),
                            "world_size": ctx.world_size})
        tracker.log_dataset(dataset_version, manifest_dump,
                            store.uri(Keys.pair_dataset_manifest(dataset_version)))

    generation = None
    if tc.eval_conversations > 0 and not ctx.is_distributed:
        from components.train.heldout import GenerationEval

        evaluator = GenerationEval(cfg)
        generation = lambda: evaluator(model)  # noqa: E731  (the live, training weights)
    elif tc.eval_conversations > 0 and talk:
        _log("no generation metrics in a distributed run (LMGen does not serve an FSDP-sharded "
             "model): early stopping on the held-out pairs")

    trainer = PreferenceTrainer(policy, data, reference, tc, work_dir=work_dir,
                                autocast_dtype=autocast, generation=generation,
                                on_log=tracker.log_metrics if tracker else None,
                                on_checkpoint=mirror.push if main else None,
                                progress=progress, ctx=ctx)
    try:
        outcome = trainer.run(stop_after_steps=stop_after_steps)
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    if not outcome.completed:
        if tracker is not None:
            tracker.flush()
        raise TrainingPaused(f"run {key} paused at step {outcome.steps}/{outcome.total_steps}; "
                             "run again to resume")

    # The best weights, unsharded on rank 0 (a collective); a single process saves its own LM.
    lm = _unsharded_lm(model, folder, cfg, ctx)
    final: TrainResult | None = None
    if main:
        assert tracker is not None and lm is not None
        final = _finish(cfg, tc, tracker, store, data, outcome, trainer, lm, model, identity,
                         key=key, dataset_version=dataset_version, policy_tag=policy_tag,
                         work_dir=work_dir, reference=reference, result_key=result_key,
                         input_manifest_id=input_manifest_id, t0=t0, talk=talk)
    return broadcast_object(final, ctx)


def _reference(store: ObjectStore, policy: Any, data: Any, ctx: "DistContext", *,
               dataset_version: str, reference_sha256: str, scoring: dict[str, Any],
               autocast: torch.dtype | None, progress: bool) -> Any:
    """The reference log-probs (reference.py), the same on every rank.

    Distributed: rank 0 reads the cache; on a miss every rank scores its slice of the pairs
    with the sharded model (the numerics training sees: the policy equals the reference before
    its first update), running the same number of forwards as every other rank (FSDP's
    collectives; a rank short of pairs scores a filler batch and drops it), the slices are
    exchanged, and rank 0 alone writes the cache object."""
    import math

    from components.train.distributed import broadcast_object, shard_examples
    from components.train.reference import ReferenceLogps, reference_key, reference_logps
    from components.train.step import score
    from components.train.checkpointing import reshard

    tc = policy.cfg
    if not ctx.is_distributed:
        return reference_logps(store, policy, data.reference_groups(),
                               dataset_version=dataset_version,
                               reference_sha256=reference_sha256, scoring=scoring,
                               batch_size=tc.micro_batch_size, autocast_dtype=autocast,
                               use_cache=tc.reference_cache, progress=progress)
    key = reference_key(dataset_version, reference_sha256, scoring)
    cached = None
    if ctx.is_main and tc.reference_cache and store.exists(key):
        cached = ReferenceLogps.from_bytes(store.get_bytes(key), key)
    cached = broadcast_object(cached, ctx)
    if cached is not None:
        if progress:
            _log(f"reference log-probs: cached {key} ({len(cached.values)} pairs)")
        return cached
    t0 = time.monotonic()
    n = len(data.train_ids) + len(data.heldout_ids)
    size = tc.micro_batch_size
    forwards = math.ceil(math.ceil(n / ctx.world_size) / size)  # the same on every rank
    mine = shard_examples(n, ctx)
    values: dict[str, tuple[float, float, float, float]] = {}
    filler: list[Any] = []
    done = 0

    def run(batch: list[Any], keep: bool) -> None:
        nonlocal done
        collated = policy.collate(batch)
        out = score(policy, collated, autocast_dtype=autocast)
        if keep:
            for k, pid in enumerate(collated.pair_ids):
                values[pid] = (float(out.chosen[k]), float(out.rejected[k]),
                               float(out.chosen_len[k]), float(out.rejected_len[k]))
        done += 1

    batch: list[Any] = []
    for i, pair in enumerate(data.all_pairs()):
        if i == 0:
            filler = [pair]
        if i in mine:
            batch.append(pair)
            if len(batch) == size:
                run(batch, True)
                batch = []
    if batch:
        run(batch, True)
    while done < forwards:
        run(filler, False)
    reshard(policy.model)  # FSDP keeps the root gathered after a forward without backward
    merged: dict[str, tuple[float, float, float, float]] = {}
    for src in range(ctx.world_size):  # contiguous slices: rank order is dataset order
        merged.update(broadcast_object(values if ctx.rank == src else None, ctx, src=src))
    ref = ReferenceLogps(values=merged, key=key, cached=False, seconds=time.monotonic() - t0)
    if ctx.is_main and tc.reference_cache:
        store.put_bytes(key, ref.to_bytes(), content_type="application/x-npz")
    if progress:
        _log(f"reference log-probs: {len(merged)} pairs on {ctx.world_size} processes "
             f"({ref.seconds:.1f}s)")
    return ref


def _unsharded_lm(model: Any, folder: Path, cfg: Config, ctx: "DistContext") -> Any:
    """The trained LM as a plain module on CPU: the model itself in a single process; under
    FSDP, rank 0 gathers the full weights (every rank takes part) into a fresh copy of the
    checkpoint's LM (LoRA layers added as the policy did), None on the other ranks."""
    from components.model.checkpoint import load_checkpoint
    from components.train.distributed import full_model_state_dict

    if not ctx.is_distributed:
        model.lm.to("cpu")
        return model.lm
    state = full_model_state_dict(model.lm, ctx)
    if not ctx.is_main:
        return None
    lm = load_checkpoint(folder, cfg, verify_weights=False).lm
    if cfg.train.lora:
        from components.train.moshi_policy import add_lora

        add_lora(lm, cfg.train.lora_rank, cfg.train.lora_scaling)
    lm.load_state_dict(state, strict=True, assign=True)
    return lm


def _finish(cfg: Config, tc: Any, tracker: Any, store: ObjectStore, data: Any, outcome: Any,
            trainer: Any, lm: Any, model: Any, identity: Any, *, key: str, dataset_version: str,
            policy_tag: str, work_dir: Path, reference: Any, result_key: str,
            input_manifest_id: str | None, t0: float, talk: bool) -> TrainResult:
    """Rank 0's end of a finished run: report, checkpoint, registration, result, manifest."""
    from components.model.checkpoint import save_checkpoint
    from components.train.tracking import render_curves_html

    best = outcome.best_metrics
    summary = {"loss": tc.loss, "dataset_version": dataset_version, "policy_version": policy_tag,
               "stopped_at_step": outcome.stopped_at_step, "total_steps": outcome.total_steps,
               "best_step": outcome.best_step, "stop_reason": outcome.stop_reason,
               "criterion": trainer.early.criterion + (f" ({trainer.early.fallback_note})"
                                                       if trainer.early.fallback_note else ""),
               "world_size": trainer.ctx.world_size, **data.summary()}
    page = render_curves_html(summary, outcome.history)
    store.put_bytes(report_key(key), page.encode(), content_type="text/html")
    tracker.log_text(page, "train.html")
    tracker.log_text(json.dumps({**summary, "history": outcome.history}, indent=2, default=str),
                     "train_history.json")

    challenger = None
    checkpoint_dir = work_dir / "checkpoint"
    save_checkpoint(lm, model.lm_kwargs, model.tokenizer, model.codec, checkpoint_dir,
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
    result.manifest_id = _write_manifest(store, input_manifest_id, result)
    store.put_json(result_key, result.to_dict())  # last: marks the run finished
    if talk:
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
    found: list[Any]
    try:
        found = list(client.search_model_versions(
            f"name = '{name}' and tags.train_run_key = '{key}'"))
    except Exception:  # noqa: BLE001  (no such model yet)
        found = []
    if found:
        version = str(max(int(v.version) for v in found))
        client.set_registered_model_alias(name, cfg.train.alias, version)
        return version
    return register_model(cfg, checkpoint_dir, metrics={}, params={}, alias=cfg.train.alias,
                          run_name="", tags={k: str(v) for k, v in tags.items()}, run_id=run_id)
