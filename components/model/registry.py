"""The MLflow model registry: which checkpoint is the champion, and where a model source lives.

A registered version is a checkpoint folder (components/model/checkpoint.py, Kyutai's format)
logged as the artefacts of an MLflow run, so every version carries the run's metrics and params
next to the weights. The version's tags repeat the checkpoint's identity (tokenizer and codec
hashes, codebooks, size, weights sha256) so that a consumer can refuse a model that does not
speak its stream format without downloading it. Artefacts travel over the tracking server's
HTTP proxy (our services run MLflow with ``--artifacts-destination s3://...``), so clients need
no S3 credentials of their own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

    from components.common.config import Config

ARTIFACT_PATH = "checkpoint"  # where the folder sits inside the run's artefacts
IDENTITY_TAGS = ("tokenizer_hash", "codec_hash", "num_codebooks", "size", "weights_sha256")
_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_MODELS_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")


class ModelNotRegistered(LookupError):
    """The registry has no such model, version or alias."""


@dataclass(frozen=True)
class RegistryRef:
    """A model version in the registry (an alias already resolved to its version)."""

    name: str
    version: str
    tags: dict[str, str]

    @property
    def tag(self) -> str:
        return f"{self.name}/{self.version}"


def _client(cfg: "Config") -> "MlflowClient":
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)


def _experiment_id(client: "MlflowClient", name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name)
    except MlflowException:  # created concurrently
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _ensure_registered_model(client: "MlflowClient", name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(
                name, description="Moshi-architecture full-duplex models (Kyutai checkpoint format)")
        except MlflowException as again:
            if again.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def register_model(
    cfg: "Config",
    checkpoint_dir: str | Path,
    *,
    metrics: dict[str, float],
    params: dict[str, Any],
    alias: str | None,
    run_name: str,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
) -> str:
    """Log the checkpoint folder as a run's artefacts, register it as a new version of
    ``cfg.model.registered_name`` (identity tags on the version), point ``alias`` at it when
    given; returns the version ("1", "2", ...).

    ``run_id``: log into that existing run (e.g. the training run, so the version's lineage is
    version → training run → dataset) and leave ending it to its owner; else a new run is made."""
    from mlflow.entities import Metric, Param, RunTag

    from components.model.checkpoint import read_identity

    folder = Path(checkpoint_dir)
    identity = read_identity(folder)
    if identity is None:
        raise ValueError(f"{folder} has no duplexalign.json: save it with save_checkpoint first")
    identity_tags = {k: str(v) for k, v in identity.to_dict().items() if k in IDENTITY_TAGS}
    if identity.parent:
        identity_tags["parent"] = str(identity.parent)
    client = _client(cfg)
    name = cfg.model.registered_name
    owned = run_id is None
    run = (client.create_run(_experiment_id(client, cfg.mlflow.experiment), run_name=run_name)
           if owned else client.get_run(run_id))
    run_id = run.info.run_id
    try:
        run_tags = {"profile": cfg.profile, **identity_tags, **(tags or {})}
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in run_tags.items()],
        )
        print(f"[model] logging {folder} to MLflow run {run_id}", file=sys.stderr)
        client.log_artifacts(run_id, str(folder), artifact_path=ARTIFACT_PATH)
        _ensure_registered_model(client, name)
        mv = client.create_model_version(
            name, source=f"{run.info.artifact_uri}/{ARTIFACT_PATH}", run_id=run_id,
            tags={**identity_tags, **(tags or {})},
            description=f"{identity.size} model, {identity.num_codebooks}+{identity.num_codebooks} "
                        f"codebooks, {identity.tokenizer_hash}, {identity.codec_hash}")
        if alias:
            client.set_registered_model_alias(name, alias, mv.version)
        if owned:
            client.set_terminated(run_id, "FINISHED")
    except BaseException:
        if owned:
            client.set_terminated(run_id, "FAILED")
        raise
    return str(mv.version)


# --------------------------------------------------------------------------------------------
# Resolving a model source


def _no_alias_message(cfg: "Config", name: str, alias: str) -> str:
    hint = " run `duplexalign bootstrap`" if alias == "champion" else (
        f" set it with MlflowClient().set_registered_model_alias({name!r}, {alias!r}, <version>)")
    return (f"no {alias} registered yet for model {name!r} at {cfg.mlflow.tracking_uri}:{hint}")


def registry_ref(cfg: "Config", source: str) -> RegistryRef | None:
    """The registry version a source names ("champion", "models:/name@alias", "models:/name/3"),
    or None when the source is not a registry source (a folder or an s3:// URI)."""
    from mlflow.exceptions import MlflowException

    match = _MODELS_RE.match(source)
    if match:
        name, version, alias = match["name"], match["version"], match["alias"]
    elif _ALIAS_RE.match(source) and not Path(source).exists():
        name, version, alias = cfg.model.registered_name, None, source
    else:
        if source.startswith("models:/"):
            raise ValueError(f"cannot parse model URI {source!r}: use models:/<name>/<version> "
                             "or models:/<name>@<alias>")
        return None
    client = _client(cfg)
    try:
        mv = (client.get_model_version_by_alias(name, alias) if alias
              else client.get_model_version(name, str(version)))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            if alias:
                raise ModelNotRegistered(_no_alias_message(cfg, name, alias)) from None
            raise ModelNotRegistered(f"model {name!r} has no version {version} at "
                                     f"{cfg.mlflow.tracking_uri}") from None
        raise
    return RegistryRef(name=mv.name, version=str(mv.version), tags=dict(mv.tags or {}))


def _cached_weights_sha(folder: Path) -> str | None:
    try:
        return json.loads((folder / "duplexalign.json").read_text()).get("weights_sha256")
    except (OSError, ValueError):
        return None


def _download_version(cfg: "Config", ref: RegistryRef) -> Path:
    """The version's checkpoint folder under ``cfg.model.cache_dir/<name>-v<version>/``,
    downloaded once: a cached folder is reused when its weights match the version's tag."""
    import mlflow.artifacts

    dest = Path(cfg.model.cache_dir) / f"{ref.name}-v{ref.version}"
    expected = ref.tags.get("weights_sha256")

    def cached() -> bool:
        # folders only appear complete (renamed into place); a registered version's artefacts
        # never change, but a cache dir shared across registries could hold another server's
        # "name-vN": the weights tag tells them apart when the version has one
        return (dest / "config.json").is_file() and (
            expected is None or _cached_weights_sha(dest) == expected)

    if cached():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        print(f"[model] downloading {ref.tag} to {dest}", file=sys.stderr)
        # The version's source URI, not "models:/...": download_artifacts resolves models:/
        # through the default *registry* URI (a local sqlite file), not our tracking server.
        source = _client(cfg).get_model_version_download_uri(ref.name, ref.version)
        got = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(tmp), tracking_uri=cfg.mlflow.tracking_uri))
        folder = got if (got / "config.json").is_file() else got / ARTIFACT_PATH
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{ref.tag}: the registered artefacts hold no config.json")
        if expected and _cached_weights_sha(folder) != expected:
            raise ValueError(f"{ref.tag}: duplexalign.json does not match the version's "
                             "weights_sha256 tag")
        if not cached():  # else another process finished the same download first
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(folder, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model(cfg: "Config", source: str | None = None) -> Path:
    """A local checkpoint folder for a model source (default ``cfg.model.source``):

    * a bare alias ("champion") → ``models:/<cfg.model.registered_name>@<alias>``;
    * ``models:/name/3`` / ``models:/name@alias`` → downloaded once to
      ``cfg.model.cache_dir/<name>-v<version>/``;
    * ``s3://bucket/prefix/`` → downloaded once (keyed by the objects' etags);
    * a local folder → itself.
    """
    from components.model.checkpoint import local_checkpoint_dir

    src = str(source if source is not None else cfg.model.source)
    ref = registry_ref(cfg, src)
    if ref is not None:
        return _download_version(cfg, ref)
    if src.startswith("s3://"):
        return local_checkpoint_dir(src, cfg)
    folder = Path(src).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model source {src!r} is not a registry alias, a models:/ URI, "
                                "an s3:// URI or a checkpoint folder")
    return local_checkpoint_dir(folder)


def model_version_tag(cfg: "Config", source: str | None = None) -> str:
    """How serving names the model it runs: "<name>/<version>" for a registry source, else
    "path:<first 12 hex of the weights sha256>" (the same weights always get the same tag)."""
    from components.model.checkpoint import MOSHI_NAME, read_identity, sha256_file

    src = str(source if source is not None else cfg.model.source)
    ref = registry_ref(cfg, src)
    if ref is not None:
        return ref.tag
    folder = resolve_model(cfg, src)
    identity = read_identity(folder)
    if identity is not None:
        sha = identity.weights_sha256
    else:
        config = json.loads((folder / "config.json").read_text()) if (
            folder / "config.json").is_file() else {}
        sha = sha256_file(folder / config.get("moshi_name", MOSHI_NAME))
    return f"path:{sha[:12]}"
