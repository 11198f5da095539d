"""Multi-node training on Kubernetes: render a Kubeflow Trainer ``TrainJob`` or a Kubeflow
Training Operator ``PyTorchJob`` that runs the trainer under torchrun on every node.

* ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``, Kubeflow Trainer v2): references the
  ``torch-distributed`` ClusterTrainingRuntime; ``trainer`` sets the image, command, env, node
  count, processes and resources per node; ``podTemplateOverrides`` (target job ``node``) the
  GPU node pool's node selector and tolerations and a memory-backed ``/dev/shm`` for NCCL.
  Trainer releases after v2.1 replace ``podTemplateOverrides`` with ``runtimePatches``
  (docs/train.md, "Scale").
* ``PyTorchJob`` (``kubeflow.org/v1``, Training Operator v1, for clusters without Trainer v2):
  one ``Master`` replica and ``nodes - 1`` ``Worker`` replicas of the same pod template; the
  container must be called ``pytorch``.

Both operators give every pod torchrun's rendezvous through ``PET_*`` variables (PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT), so the command is the same
``torchrun -m pipelines.cli --profile P [--set k=v ...] train --dataset VERSION`` for both, with
no launcher flags of its own. The ``--set`` overrides reproduce the caller's configuration
exactly (``config_overrides``, checked by a round trip), so the cluster trains with what was
rendered.

Secrets: only Secret *names* and keys appear (``valueFrom.secretKeyRef``); the S3 credentials'
variable names come from ``cfg.storage``. GPU resource name, node selector, tolerations and
per-node CPU/memory requests come from ``cfg.gpu_pool`` (the KFP train task uses the same);
``ClusterJobOptions`` holds what only these manifests need.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from components.common.config import Config, SecretKeyRef, load_config

JobKind = Literal["TrainJob", "PyTorchJob"]
TRAINJOB_API = "trainer.kubeflow.org/v1alpha1"
PYTORCHJOB_API = "kubeflow.org/v1"
# Kubeflow Trainer's torch runtime names its training job and container "node"; the Training
# Operator requires the PyTorchJob container to be called "pytorch".
TRAINJOB_CONTAINER = "node"
PYTORCHJOB_CONTAINER = "pytorch"
_SHM_VOLUME = "dshm"


class ClusterJobOptions(BaseModel):
    """What the rendered job needs beyond the configuration (candidates for a config section)."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = "duplexalign"
    name: str = ""  # "" = duplexalign-train-<dataset version>-<hash>, within 63 characters
    image: str = ""  # "" = cfg.pipeline.gpu_image (the CUDA image holds the trainer)
    runtime: str = "torch-distributed"  # TrainJob: the (Cluster)TrainingRuntime to run on
    runtime_kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = "ClusterTrainingRuntime"
    cpu_per_node: str = ""  # "" = cfg.gpu_pool.cpu_request
    memory_per_node: str = ""  # "" = cfg.gpu_pool.memory_request
    # Memory-backed /dev/shm: containers get 64 MiB by default, too little for NCCL's intra-node
    # transport with several GPUs per node. "" = leave /dev/shm as the runtime has it.
    shm_size: str = "16Gi"
    service_account: str = ""  # "" = the namespace's default
    # The S3 credentials come from cfg.secrets (the Secrets the pipeline's tasks read). More environment variables from Secrets (e.g. MLFLOW_TRACKING_TOKEN), by name only.
    secret_env: dict[str, SecretKeyRef] = Field(default_factory=dict)
    backoff_limit: int = Field(default=3, ge=0)  # PyTorchJob: restarts of the whole job


# Sections the training processes never read: the manifest itself places the pods. Left out of
# the overrides (a node selector's keys could not always be reproduced: --set merges mappings).
PLACEMENT_SECTIONS = ("gpu_pool",)


def _leaves(prefix: str, section: BaseModel, out: dict[str, Any]) -> None:
    """Dotted path → JSON value of every setting (mappings and lists are single values)."""
    for name in type(section).model_fields:
        value = getattr(section, name)
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(value, BaseModel):
            _leaves(path, value, out)
        else:
            out[path] = section.model_dump(mode="json", include={name})[name]


def config_overrides(cfg: Config) -> list[str]:
    """Dotted ``key=value`` overrides (values JSON, which the CLI parses as YAML) that turn
    ``cfg.profile``'s configuration into ``cfg`` (placement sections aside). Raises ValueError
    when that is impossible (a key removed from a mapping: --set merges mappings) rather than
    let the cluster train with another configuration."""
    base: dict[str, Any] = {}
    want: dict[str, Any] = {}
    _leaves("", load_config(cfg.profile), base)
    _leaves("", cfg, want)
    overrides = [f"{key}={json.dumps(value)}" for key, value in want.items()
                 if key != "profile" and key.split(".")[0] not in PLACEMENT_SECTIONS
                 and base.get(key) != value]
    got = load_config(cfg.profile, overrides=overrides)
    exclude = set(PLACEMENT_SECTIONS)
    if got.model_dump(exclude=exclude) != cfg.model_dump(exclude=exclude):
        raise ValueError("the configuration cannot be reproduced from its profile with --set "
                         "overrides (a mapping lost a key?)")
    return overrides


def train_command(cfg: Config, dataset_version: str) -> list[str]:
    """torchrun on the project's CLI; the rendezvous comes from the operator's PET_* variables."""
    if not dataset_version:
        raise ValueError("a dataset version is required")
    command = ["torchrun", "-m", "pipelines.cli", "--profile", cfg.profile]
    for item in config_overrides(cfg):
        command += ["--set", item]
    return command + ["train", "--dataset", dataset_version]


def job_name(dataset_version: str) -> str:
    """An RFC 1035 label (what the CRDs accept, at most 63 characters) naming the dataset, with
    a hash so that two versions cut to the same prefix still differ."""
    slug = re.sub(r"[^a-z0-9]+", "-", dataset_version.lower()).strip("-")[:36].strip("-")
    digest = hashlib.sha256(dataset_version.encode()).hexdigest()[:8]
    return "-".join(p for p in ("duplexalign-train", slug, digest) if p)


def _env(cfg: Config, options: ClusterJobOptions) -> list[dict[str, Any]]:
    refs = {**cfg.secret_env("s3_access_key", "s3_secret_key"), **options.secret_env}
    env: list[dict[str, Any]] = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    env += [{"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
            for name, ref in refs.items() if name]
    return env


def _resources(cfg: Config, options: ClusterJobOptions, gpus: int) -> dict[str, Any]:
    pool = cfg.gpu_pool
    requests = {"cpu": options.cpu_per_node or str(pool.cpu_request),
                "memory": options.memory_per_node or str(pool.memory_request)}
    # An extended resource's request defaults to its limit (and must equal it): limit only.
    return {"requests": requests, "limits": {pool.accelerator_type: gpus}}


def _scheduling(cfg: Config, options: ClusterJobOptions) -> dict[str, Any]:
    """Pod-spec fields placing the pods on the GPU node pool."""
    spec: dict[str, Any] = {}
    if options.service_account:
        spec["serviceAccountName"] = options.service_account
    if cfg.gpu_pool.node_selector:
        spec["nodeSelector"] = dict(cfg.gpu_pool.node_selector)
    tolerations = []
    for t in cfg.gpu_pool.tolerations:
        item = {"key": t.key, "operator": t.operator, "effect": t.effect}
        if t.operator == "Equal":
            item["value"] = t.value
        tolerations.append(item)
    if tolerations:
        spec["tolerations"] = tolerations
    if options.shm_size:
        spec["volumes"] = [{"name": _SHM_VOLUME,
                            "emptyDir": {"medium": "Memory", "sizeLimit": options.shm_size}}]
    return spec


def _shm_mounts(options: ClusterJobOptions) -> list[dict[str, Any]]:
    return [{"name": _SHM_VOLUME, "mountPath": "/dev/shm"}] if options.shm_size else []


def _metadata(name: str, options: ClusterJobOptions, dataset_version: str) -> dict[str, Any]:
    return {"name": name, "namespace": options.namespace,
            "labels": {"app.kubernetes.io/name": "duplexalign",
                       "app.kubernetes.io/component": "train"},
            # label values cannot hold every dataset version; annotations can
            "annotations": {"duplexalign/dataset-version": dataset_version}}


def render_trainjob(cfg: Config, dataset_version: str, nodes: int, gpus_per_node: int,
                    kind: JobKind = "TrainJob", *,
                    options: ClusterJobOptions | None = None) -> dict[str, Any]:
    """The manifest (a plain dict, ``to_yaml`` for kubectl) training ``dataset_version`` on
    ``nodes`` nodes with ``gpus_per_node`` GPUs (one torchrun process per GPU) each."""
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError("nodes and gpus_per_node must be >= 1")
    options = options or ClusterJobOptions()
    name = options.name or job_name(dataset_version)
    image = options.image or cfg.pipeline.gpu_image
    command = train_command(cfg, dataset_version)
    env = _env(cfg, options)
    resources = _resources(cfg, options, gpus_per_node)
    scheduling = _scheduling(cfg, options)
    metadata = _metadata(name, options, dataset_version)
    if kind == "TrainJob":
        override: dict[str, Any] = dict(scheduling)
        if options.shm_size:
            override["containers"] = [{"name": TRAINJOB_CONTAINER,
                                       "volumeMounts": _shm_mounts(options)}]
        spec: dict[str, Any] = {
            "runtimeRef": {"name": options.runtime, "apiGroup": "trainer.kubeflow.org",
                           "kind": options.runtime_kind},
            "trainer": {"image": image, "command": command, "env": env, "numNodes": nodes,
                        "numProcPerNode": gpus_per_node, "resourcesPerNode": resources},
        }
        if override:
            spec["podTemplateOverrides"] = [{"targetJobs": [{"name": TRAINJOB_CONTAINER}],
                                             "spec": override}]
        return {"apiVersion": TRAINJOB_API, "kind": "TrainJob", "metadata": metadata,
                "spec": spec}
    if kind != "PyTorchJob":
        raise ValueError(f"unknown job kind {kind!r}: TrainJob or PyTorchJob")
    container: dict[str, Any] = {"name": PYTORCHJOB_CONTAINER, "image": image,
                                 "command": command, "env": env, "resources": resources}
    if options.shm_size:
        container["volumeMounts"] = _shm_mounts(options)
    template = {"metadata": {"labels": dict(metadata["labels"])},
                "spec": {"containers": [container], **scheduling}}
    replicas: dict[str, Any] = {"Master": {"replicas": 1, "restartPolicy": "OnFailure",
                                           "template": template}}
    if nodes > 1:
        # Same pod template; the operator tells each pod its node rank and the master's address.
        replicas["Worker"] = {"replicas": nodes - 1, "restartPolicy": "OnFailure",
                              "template": json.loads(json.dumps(template))}
    return {"apiVersion": PYTORCHJOB_API, "kind": "PyTorchJob", "metadata": metadata,
            "spec": {"nprocPerNode": str(gpus_per_node),
                     "runPolicy": {"backoffLimit": options.backoff_limit},
                     "pytorchReplicaSpecs": replicas}}


def to_yaml(manifest: dict[str, Any]) -> str:
    """The manifest as YAML for ``kubectl apply -f -`` (field order kept)."""
    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)
