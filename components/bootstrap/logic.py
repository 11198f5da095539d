"""`duplexalign bootstrap`: the embedded base model, trained once and reused everywhere.

`bootstrap(cfg)` builds (or loads) the SFT corpus (data.py), trains a fresh Moshi-architecture LM
on it (train.py), probes it, saves it in Kyutai's checkpoint format and registers it in MLflow as
the first ``champion``.

Caching, by content: the key hashes cfg.streams (minus its cache folder), the model size and
context, cfg.bootstrap minus ``threads`` (a thread count changes speed, not what is learnt), the
tokenizer and codec hashes, the corpus key (world version, simulate knobs, voices) and
CODE_VERSION. The result lives in ``cfg.model.cache_dir/bootstrap-<key>/`` (the checkpoint plus
``bootstrap.json``, written LAST: a folder without it is an interrupted run and is redone) and
in the object store under ``models/bootstrap-<key>/`` (uploaded with duplexalign.json last), so
a fresh machine on the same bucket downloads instead of training. Every step checks what is
already there, so a rerun after a crash finishes the missing steps only.

The champion alias is moved only when it is safe: when no champion exists, or when the champion
is an earlier bootstrap model (another key). A champion that is not a bootstrap model (a later,
aligned and promoted one) is never demoted: the bootstrap version is registered without the
alias and this is logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models: no compile on CPU workers

from components.bootstrap.data import CORPUS_VERSION, build_corpus, corpus_key
from components.common.config import Config
from components.common.files import write_atomic
from components.contract import canonical_json

CODE_VERSION = "bootstrap-1"  # bump when training or probing changes what a key produces
RESULT_NAME = "bootstrap.json"
CHAMPION = "champion"
ORIGIN_TAG = "origin"
HASH_TAG = "bootstrap_hash"


@dataclass
class BootstrapResult:
    checkpoint_dir: Path
    key: str  # the content hash (folder bootstrap-<key>/)
    model_hash: str  # sha256 of the weights (identity.weights_sha256)
    version: str | None  # registered MLflow version, None when not published
    cached: bool  # True: nothing was trained in this call
    steps: int
    seconds: float  # training seconds (of the run that trained it)
    budget_cut: bool
    metrics: dict[str, Any] = field(default_factory=dict)  # final validation metrics and probes
    corpus: dict[str, Any] = field(default_factory=dict)  # corpus stats (realised habits, timings)
    history: list[dict[str, Any]] = field(default_factory=list)
    champion: bool = False  # the champion alias points at this model after the call

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["checkpoint_dir"] = str(self.checkpoint_dir)
        out.pop("history")
        return out


def _log(message: str, progress: bool) -> None:
    if progress:
        print(f"[bootstrap] {message}", file=sys.stderr, flush=True)


def bootstrap_key(cfg: Config, tokenizer_hash: str, codec_hash: str) -> str:
    body = {
        "code": CODE_VERSION, "corpus_version": CORPUS_VERSION,
        "streams": cfg.streams.model_dump(exclude={"cache_dir"}),
        "model": {"size": cfg.model.size, "context": cfg.model.context},
        "bootstrap": cfg.bootstrap.model_dump(exclude={"threads"}),
        "tokenizer": tokenizer_hash, "codec": codec_hash,
        "corpus": corpus_key(cfg, tokenizer_hash, codec_hash),
    }
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def store_prefix(key: str) -> str:
    return f"models/bootstrap-{key}/"


# ----------------------------------------------------------------------------- training run


def _train(cfg: Config, tokenizer: Any, codec: Any, key: str, folder: Path,
           progress: bool) -> dict[str, Any]:
    """Build the corpus, train, probe, save the checkpoint into ``folder``; returns the record
    that becomes bootstrap.json."""
    import torch

    from components.bootstrap.train import qa_probe, train_lm
    from components.model.checkpoint import save_checkpoint
    from components.model.spec import build_lm, count_params, lm_kwargs

    torch.set_num_threads(cfg.bootstrap.threads)
    t0 = time.monotonic()
    corpus = build_corpus(cfg, tokenizer, codec, progress=progress)
    corpus_s = time.monotonic() - t0
    _log(f"corpus {corpus.stats['conversations']} conversations ({corpus.stats['train']} train, "
         f"{corpus.stats['val']} held out), {corpus.stats['frames']} frames in {corpus_s:.1f}s; "
         f"realised habits {corpus.stats['realised']}", progress)
    kwargs = lm_kwargs(cfg.model.size, corpus.layout, cfg.model.context)
    if cfg.bootstrap.window_frames > cfg.model.context:
        raise ValueError(f"bootstrap.window_frames ({cfg.bootstrap.window_frames}) exceeds the "
                         f"model context ({cfg.model.context})")
    lm = build_lm(kwargs, cfg.bootstrap.seed)
    params = count_params(lm)
    _log(f"training a {cfg.model.size} LM ({params / 1e6:.2f}M parameters) for up to "
         f"{cfg.bootstrap.max_steps} steps / {cfg.bootstrap.time_budget_s:.0f}s", progress)
    run = train_lm(lm, corpus, cfg.bootstrap, progress=progress)
    t1 = time.monotonic()
    probe_val = qa_probe(lm, corpus, corpus.val_ids, tokenizer, cfg.bootstrap.window_frames)
    conversations = [i for i in corpus.train_ids if not corpus.info[i].get("drill")]
    probe_train = qa_probe(lm, corpus, conversations, tokenizer, cfg.bootstrap.window_frames)
    metrics: dict[str, Any] = dict(run.final)
    metrics.update(probe_val)
    metrics.update({f"train_{k}": v for k, v in probe_train.items()})
    metrics.update(steps_per_s=run.steps / run.seconds if run.seconds else None,
                   params=params, probe_seconds=round(time.monotonic() - t1, 2))
    _log(f"trained {run.steps} steps in {run.seconds:.0f}s"
         f"{' (time budget reached)' if run.budget_cut else ''}; {json.dumps(metrics)}", progress)
    identity = save_checkpoint(lm, kwargs, tokenizer, codec, folder,
                               identity_extra={"size": cfg.model.size, HASH_TAG: key,
                                               ORIGIN_TAG: "bootstrap"})
    return {"key": key, "model_hash": identity.weights_sha256, "steps": run.steps,
            "seconds": run.seconds, "budget_cut": run.budget_cut, "horizon": run.horizon,
            "best_step": run.best_step,
            "corpus_seconds": round(corpus_s, 2), "metrics": metrics, "corpus": corpus.stats,
            "history": run.history, "lm_kwargs": kwargs}


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, default=str).encode())


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / RESULT_NAME).read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- object store


def _download(store: Any, key: str, folder: Path, progress: bool) -> dict[str, Any] | None:
    """Fetch models/bootstrap-<key>/ into ``folder`` when the store holds a complete copy."""
    from components.model.checkpoint import IDENTITY_NAME

    prefix = store_prefix(key)
    if store.stat(prefix + IDENTITY_NAME) is None or store.stat(prefix + RESULT_NAME) is None:
        return None
    _log(f"downloading {store.uri(prefix)}", progress)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for info in store.list(prefix):
            rel = info.key[len(prefix):]  # list() gives keys relative to the store's prefix
            if rel == RESULT_NAME:
                continue  # written last, below
            store.download_file(prefix + rel, tmp / rel)
        store.download_file(prefix + RESULT_NAME, tmp / RESULT_NAME)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _read_record(folder)


def _upload(store: Any, key: str, folder: Path, progress: bool) -> str:
    """Upload the folder unless the store already holds it complete; returns its s3:// URI."""
    from components.model.checkpoint import IDENTITY_NAME, upload_checkpoint

    prefix = store_prefix(key)
    if store.stat(prefix + IDENTITY_NAME) is not None and store.stat(prefix + RESULT_NAME) is not None:
        return store.uri(prefix)
    _log(f"uploading the checkpoint to {store.uri(prefix)}", progress)
    return upload_checkpoint(store, folder, prefix)


# ----------------------------------------------------------------------------- registry


def _publish(cfg: Config, folder: Path, record: dict[str, Any], progress: bool) -> tuple[str, bool]:
    """Register the checkpoint once (a version tagged with this key is reused) and point the
    champion alias at it when that is safe (module doc). Returns (version, is champion)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    from components.model.registry import register_model

    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    name = cfg.model.registered_name
    key = record["key"]
    try:
        existing = client.search_model_versions(f"name = '{name}' and tags.{HASH_TAG} = '{key}'")
    except MlflowException:
        existing = []
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    champ_key = (champion.tags or {}).get(HASH_TAG) if champion is not None else None
    if champion is not None and champ_key == key:
        return str(champion.version), True
    take_alias = champion is None or champ_key is not None
    if existing:
        version = str(min(int(v.version) for v in existing))
        _log(f"already registered as {name}/{version}", progress)
    else:
        targets = record["corpus"].get("targets", {})
        realised = record["corpus"].get("realised", {})
        tags = {HASH_TAG: key, ORIGIN_TAG: "bootstrap", "profile": cfg.profile,
                **{f"rate_{k}": str(v) for k, v in targets.items()},
                **{f"realised_{k}": str(v) for k, v in realised.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}}
        metrics = {k: float(v) for k, v in record["metrics"].items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
        metrics.update(steps=float(record["steps"]), train_seconds=float(record["seconds"]),
                       corpus_seconds=float(record.get("corpus_seconds", 0.0)))
        params = {"model.size": cfg.model.size, "model.context": cfg.model.context,
                  "streams.num_codebooks": cfg.streams.num_codebooks,
                  **{f"bootstrap.{k}": v for k, v in cfg.bootstrap.model_dump().items()},
                  **{f"simulate.{k}": v for k, v in record["corpus"].get("per_reply_rates", {}).items()},
                  "corpus_key": record["corpus"].get("key"), "budget_cut": record["budget_cut"]}
        version = register_model(cfg, folder, metrics=metrics, params=params, alias=None,
                                 run_name=f"bootstrap {key}", tags=tags)
        # the training curves, step-wise, in the run that registered the version
        run_id = client.get_model_version(name, version).run_id
        curve = [Metric(k, float(v), 0, int(rec["step"])) for rec in record["history"]
                 for k, v in rec.items() if k != "step" and isinstance(v, (int, float)) and v == v]
        for i in range(0, len(curve), 900):
            client.log_batch(run_id, metrics=curve[i : i + 900])
        _log(f"registered {name}/{version}", progress)
    if take_alias:
        client.set_registered_model_alias(name, CHAMPION, version)
        what = "no champion yet" if champion is None else f"replaces bootstrap model {name}/{champion.version}"
        _log(f"{name}/{version} is now the {CHAMPION} ({what})", progress)
        return version, True
    _log(f"the {CHAMPION} is {name}/{champion.version}, which is not a bootstrap model: left in "
         f"place; the bootstrap model is {name}/{version} without the alias", True)
    return version, False


# ----------------------------------------------------------------------------- entry point


def bootstrap(cfg: Config, progress: bool = True, force: bool = False, publish: bool = True) -> BootstrapResult:
    """Train (or reuse) the embedded base model for this configuration (module doc).

    ``force`` retrains even when a finished result exists (the corpus cache is still used).
    ``publish`` False skips the object store and MLflow (local cache only: unit tests, offline
    experiments)."""
    from components.streams.codec import load_codec
    from components.streams.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg)
    codec = load_codec(cfg)
    key = bootstrap_key(cfg, tokenizer.hash, codec.hash)
    folder = Path(cfg.model.cache_dir) / f"bootstrap-{key}"
    _log(f"key {key} ({cfg.model.size} model, {codec.num_codebooks}+{codec.num_codebooks} codebooks, "
         f"{tokenizer.hash}, {codec.hash})", progress)
    store = None
    if publish:
        from components.common.storage import ObjectStore

        store = ObjectStore.from_config(cfg.storage)
        store.ensure_bucket(versioning=True)
    record = None if force else _read_record(folder)
    cached = record is not None
    if record is None and store is not None and not force:
        record = _download(store, key, folder, progress)
        cached = record is not None
    if record is None:
        if folder.exists():  # an interrupted run: start over
            shutil.rmtree(folder)
        record = _train(cfg, tokenizer, codec, key, folder, progress)
        _write_json_atomic(folder / RESULT_NAME, record)  # the completion marker, last
    else:
        _log(f"cached: {folder} ({record['steps']} steps)", progress)
    version, is_champion = None, False
    if store is not None:
        _upload(store, key, folder, progress)
        version, is_champion = _publish(cfg, folder, record, progress)
    return BootstrapResult(
        checkpoint_dir=folder, key=key, model_hash=record["model_hash"], version=version,
        cached=cached, steps=record["steps"], seconds=record["seconds"],
        budget_cut=record["budget_cut"], metrics=record["metrics"], corpus=record["corpus"],
        history=record["history"], champion=is_champion)
