"""Model sources → the real ``s3://`` URI KServe's storage initializer downloads to /mnt/models.

The initializer speaks s3://, gs://, https:// and friends, but not MLflow: it cannot read the
``mlflow-artifacts:/`` URIs a registered version's artefacts carry (the tracking server proxies
them), nor MLflow 3's ``models:/m-<id>`` logged-model URIs. So a registry alias or ``models:/``
URI is followed to the version's artefact location and rewritten under the tracking server's
``--artifacts-destination`` (cfg.deploy.artifacts_destination, by default
``s3://<storage.bucket>/mlflow-artifacts``, what ``duplexalign services up`` runs). The objects
are listed before the URI is used: a manifest pointing at nothing would only fail in the pod.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

    from components.common.config import Config

CHECKPOINT_MARKER = "config.json"  # every checkpoint folder has one (components/model/checkpoint)


class SourceNotDeployable(ValueError):
    """The source cannot become an s3:// URI the storage initializer can read."""


@dataclass(frozen=True)
class DeploySource:
    """A model source resolved for a manifest."""

    source: str  # what was asked for ("champion", "models:/name/3", "s3://...")
    uri: str  # s3://bucket/prefix/ (a folder: ends with "/")
    model_version: str  # how serving names it: "<name>/<version>" or "s3:<uri>"
    registry_name: str = ""  # empty for a plain s3:// source
    registry_version: str = ""
    weights_sha256: str = ""
    objects: int = 0  # objects found under the URI


def artifacts_destination(cfg: "Config") -> str:
    """The tracking server's --artifacts-destination (no trailing slash)."""
    dest = cfg.deploy.artifacts_destination or f"s3://{cfg.storage.bucket}/mlflow-artifacts"
    return dest.rstrip("/")


def _artifact_to_s3(cfg: "Config", client: "MlflowClient", uri: str, depth: int = 0) -> str:
    """An artefact URI (as MLflow stores it on a version or run) → s3://."""
    if depth > 4:
        raise SourceNotDeployable(f"artefact URI {uri!r} does not resolve (redirect loop)")
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        return uri
    if parts.scheme == "mlflow-artifacts":
        # "mlflow-artifacts:/1/<run>/artifacts/x" or "mlflow-artifacts://host:port/1/<run>/...":
        # the path is relative to the server's artifacts destination either way
        return f"{artifacts_destination(cfg)}/{parts.path.lstrip('/')}"
    if parts.scheme == "runs":  # runs:/<run_id>/<path>
        run_id, _, rel = parts.path.lstrip("/").partition("/")
        base = client.get_run(run_id).info.artifact_uri.rstrip("/")
        return _artifact_to_s3(cfg, client, f"{base}/{rel}" if rel else base, depth + 1)
    if parts.scheme == "models" and parts.path.lstrip("/").startswith("m-"):
        logged = client.get_logged_model(parts.path.lstrip("/").split("/")[0])
        return _artifact_to_s3(cfg, client, logged.artifact_location, depth + 1)
    raise SourceNotDeployable(
        f"artefact URI {uri!r} is not on an object store the storage initializer reads "
        "(s3://); register the model against a tracking server with an s3:// "
        "--artifacts-destination")


def _folder(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"


def _count_checkpoint_objects(cfg: "Config", uri: str) -> int:
    """Objects under the folder URI; raise unless it holds a checkpoint (config.json)."""
    from components.common.storage import ObjectStore, parse_s3_uri

    bucket, prefix = parse_s3_uri(uri)
    store = ObjectStore.from_config(cfg.storage, bucket, prefix=prefix)
    names = [info.key for info in store.list("")]
    if CHECKPOINT_MARKER not in names:
        found = f"{len(names)} objects, no {CHECKPOINT_MARKER}" if names else "nothing"
        raise SourceNotDeployable(f"{uri} holds {found}: not a checkpoint folder")
    return len(names)


def resolve_source(cfg: "Config", source: str, *, verify: bool = True) -> DeploySource:
    """Resolve a registry alias, ``models:/name/N`` / ``models:/name@alias``, an MLflow 3 logged
    model ``models:/m-<id>`` or an ``s3://`` folder to a DeploySource.

    ``verify``: list the objects under the URI and require a checkpoint (default)."""
    from components.model.registry import _client, registry_ref

    if source.startswith("s3://"):
        uri = _folder(source)
        return DeploySource(source=source, uri=uri, model_version=f"s3:{uri}",
                            objects=_count_checkpoint_objects(cfg, uri) if verify else 0)
    if source.startswith("models:/m-"):  # an MLflow 3 logged model, not a registry version
        client = _client(cfg)
        uri = _folder(_artifact_to_s3(cfg, client, source))
        return DeploySource(source=source, uri=uri, model_version=f"s3:{uri}",
                            objects=_count_checkpoint_objects(cfg, uri) if verify else 0)
    ref = registry_ref(cfg, source)
    if ref is None:
        raise SourceNotDeployable(
            f"model source {source!r} is a local folder: a cluster cannot read it. Register it "
            "(`duplexalign model import`) or upload it and deploy its s3:// URI")
    client = _client(cfg)
    mv = client.get_model_version(ref.name, ref.version)
    uri = _folder(_artifact_to_s3(cfg, client, mv.source))
    return DeploySource(
        source=source, uri=uri, model_version=ref.tag, registry_name=ref.name,
        registry_version=ref.version, weights_sha256=ref.tags.get("weights_sha256", ""),
        objects=_count_checkpoint_objects(cfg, uri) if verify else 0)


def storage_uri(cfg: "Config", source: str) -> str:
    """The verified ``s3://`` folder URI of a model source (see resolve_source)."""
    return resolve_source(cfg, source).uri
