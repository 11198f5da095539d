"""Rendering the multi-node training job (components/train/trainjob.py).

Rendered TrainJobs and PyTorchJobs are validated against the published Kubeflow CRD schemas
(vendored, trimmed, under tests/data/crds/ with their source) with unknown fields rejected, the
way kubectl's strict field validation would; the command is checked to be a torchrun invocation
that the project's CLI parses back into the exact configuration.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from components.common.config import load_config
from components.train.trainjob import (
    ClusterJobOptions,
    JobKind,
    SecretKeyRef,
    config_overrides,
    job_name,
    render_trainjob,
    to_yaml,
    train_command,
)

CRDS = Path(__file__).resolve().parents[2] / "data" / "crds"
VERSION = "pairs-2026-11-26T10:00:00Z-7f3a9c"
RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _strict(schema: Any) -> Any:
    """The CRD's structural schema as JSON Schema, rejecting fields it does not declare."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _validator(filename: str, version: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((CRDS / filename).read_text())
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(_strict(entry["schema"]["openAPIV3Schema"]))


def _validate(manifest: dict[str, Any]) -> None:
    if manifest["kind"] == "TrainJob":
        validator = _validator("trainer.kubeflow.org_trainjobs.yaml", "v1alpha1")
    else:
        validator = _validator("kubeflow.org_pytorchjobs.yaml", "v1")
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # the CRDs' CEL rule on the name (TrainJob), a Kubernetes object name anyway
    name = manifest["metadata"]["name"]
    assert RFC1035.match(name) and len(name) <= 63, name


def _cfg(*overrides: str):
    return load_config("production", overrides=list(overrides))


@pytest.mark.parametrize("kind", ["TrainJob", "PyTorchJob"])
@pytest.mark.parametrize("nodes", [1, 4])
def test_manifest_matches_the_published_crd(kind: str, nodes: int) -> None:
    cfg = _cfg("train.loss=simpo", "train.batch_size=64")
    manifest = render_trainjob(cfg, VERSION, nodes, 8, kind)  # type: ignore[arg-type]
    _validate(manifest)
    assert yaml.safe_load(to_yaml(manifest)) == manifest  # valid YAML, nothing lost


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The validator is not vacuous: a misspelt field fails, as kubectl --validate=strict would."""
    manifest = render_trainjob(_cfg(), VERSION, 2, 8)
    bad = copy.deepcopy(manifest)
    bad["spec"]["trainer"]["numProcsPerNode"] = bad["spec"]["trainer"].pop("numProcPerNode")
    with pytest.raises(AssertionError):
        _validate(bad)
    bad = copy.deepcopy(render_trainjob(_cfg(), VERSION, 2, 8, "PyTorchJob"))
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["nodeSelectors"] = {}
    with pytest.raises(AssertionError):
        _validate(bad)


def test_trainjob_structure_and_gpu_pool() -> None:
    cfg = _cfg('gpu_pool.node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}',
               "gpu_pool.accelerator_type=nvidia.com/gpu", 'gpu_pool.cpu_request="90"',
               "gpu_pool.memory_request=1000Gi")
    job = render_trainjob(cfg, VERSION, 4, 8)
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["spec"]["runtimeRef"] == {"name": "torch-distributed",
                                         "apiGroup": "trainer.kubeflow.org",
                                         "kind": "ClusterTrainingRuntime"}
    trainer = job["spec"]["trainer"]
    assert trainer["image"] == cfg.pipeline.gpu_image
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "90", "memory": "1000Gi"},
                                           "limits": {"nvidia.com/gpu": 8}}
    (override,) = job["spec"]["podTemplateOverrides"]
    assert override["targetJobs"] == [{"name": "node"}]
    spec = override["spec"]
    assert spec["nodeSelector"] == cfg.gpu_pool.node_selector
    assert spec["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-h100-80gb"
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                    "effect": "NoSchedule"}]
    assert spec["volumes"][0]["emptyDir"]["medium"] == "Memory"
    assert spec["containers"] == [{"name": "node", "volumeMounts": [
        {"name": "dshm", "mountPath": "/dev/shm"}]}]
    assert job["metadata"]["annotations"]["duplexalign/dataset-version"] == VERSION


def test_pytorchjob_master_and_workers() -> None:
    cfg = _cfg()
    job = render_trainjob(cfg, VERSION, 3, 4, "PyTorchJob",
                          options=ClusterJobOptions(namespace="ml", service_account="trainer",
                                                    shm_size=""))
    assert job["apiVersion"] == "kubeflow.org/v1" and job["metadata"]["namespace"] == "ml"
    assert job["spec"]["nprocPerNode"] == "4"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 2)
    assert replicas["Master"]["template"] == replicas["Worker"]["template"]
    pod = replicas["Master"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "pytorch"  # the operator finds its container by this name
    assert container["resources"]["limits"] == {cfg.gpu_pool.accelerator_type: 4}
    assert pod["serviceAccountName"] == "trainer"
    assert "volumes" not in pod and "volumeMounts" not in container  # shm_size "" = none
    single = render_trainjob(cfg, VERSION, 1, 8, "PyTorchJob")
    assert list(single["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    _validate(job)
    _validate(single)


def test_no_secret_values_only_secret_names(tmp_path, monkeypatch) -> None:
    """Credentials present in the renderer's environment and credentials file never reach the
    manifest: the pods read them from Secrets, by name."""
    access, secret = "AKIA-SENTINEL-ACCESS-0001", "sentinel/secret+value=0002"
    creds = tmp_path / "s3.json"
    creds.write_text(json.dumps({"access_key": access, "secret_key": secret}))
    monkeypatch.setenv("DUPLEXALIGN_S3_ACCESS_KEY", access)
    monkeypatch.setenv("DUPLEXALIGN_S3_SECRET_KEY", secret)
    cfg = _cfg(f"storage.credentials_file={creds}")
    options = ClusterJobOptions(secret_env={"MLFLOW_TRACKING_TOKEN": SecretKeyRef(
        name="mlflow-auth", key="token")})
    kinds: tuple[JobKind, ...] = ("TrainJob", "PyTorchJob")
    for kind in kinds:
        manifest = render_trainjob(cfg, VERSION, 2, 8, kind, options=options)
        text = to_yaml(manifest)
        assert access not in text and secret not in text
        env = (manifest["spec"]["trainer"]["env"] if kind == "TrainJob" else
               manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
               ["containers"][0]["env"])
        by_name = {e["name"]: e for e in env}
        assert by_name["DUPLEXALIGN_S3_ACCESS_KEY"] == {"name": "DUPLEXALIGN_S3_ACCESS_KEY",
                                                        "valueFrom": {"secretKeyRef": {
                                                            "name": "duplexalign-s3",
                                                            "key": "access-key"}}}
        assert by_name["DUPLEXALIGN_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "duplexalign-s3", "key": "secret-key"}
        assert by_name["MLFLOW_TRACKING_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "mlflow-auth", "key": "token"}
        # only non-secret plain values
        assert [e["name"] for e in env if "value" in e] == ["PYTHONUNBUFFERED"]
        _validate(manifest)


def test_command_is_torchrun_of_the_cli_with_the_exact_config() -> None:
    from torch.distributed.run import get_args_parser

    from pipelines.cli import build_parser

    cfg = _cfg("train.loss=apo_zero", "train.adam_eps=1e-7", "train.temporal_lr=5e-9",
               "train.adam_betas=[0.9, 0.99]", "judge.thresholds.safety=1.5",
               "pipeline.image_registry=registry.example/da")
    command = train_command(cfg, VERSION)
    assert command[0] == "torchrun"
    launcher = get_args_parser().parse_args(command[1:])
    assert launcher.module and launcher.training_script == "pipelines.cli"
    # no launcher flags: the operators' PET_* variables give nnodes, nproc, rank, master
    assert command[1:3] == ["-m", "pipelines.cli"]
    args = build_parser().parse_args(launcher.training_script_args)
    assert args.command == "train" and args.dataset == VERSION
    assert load_config(args.profile, args.config, args.set) == cfg


def test_config_overrides_cover_only_differences() -> None:
    assert config_overrides(_cfg()) == []
    overrides = config_overrides(_cfg("train.loss=dpo", "train.dpo.beta=0.2"))
    assert sorted(overrides) == ['train.dpo.beta=0.2', 'train.loss="dpo"']
    # where the pods run is the manifest's business: placement settings are not passed on
    assert config_overrides(_cfg('gpu_pool.node_selector={"pool": "a100"}')) == []


def test_config_that_overrides_cannot_express_is_refused() -> None:
    # The demo profile sets judge.thresholds itself; --set merges into that mapping, so a key
    # dropped from it cannot be expressed: rendering must refuse rather than train differently.
    cfg = load_config("demo")
    key = next(iter(cfg.judge.thresholds))
    thresholds = {k: v for k, v in cfg.judge.thresholds.items() if k != key}
    cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(
        update={"thresholds": thresholds})})
    with pytest.raises(ValueError, match="cannot be reproduced"):
        config_overrides(cfg)


def test_job_names_are_valid_and_distinct() -> None:
    long_a = "pairs-" + "x" * 80 + "-a"
    long_b = "pairs-" + "x" * 80 + "-b"
    for version in (VERSION, long_a, "PAIRS/v2:final", "9"):
        name = job_name(version)
        assert RFC1035.match(name) and len(name) <= 63, name
    assert job_name(long_a) != job_name(long_b)
    with pytest.raises(ValueError):
        render_trainjob(_cfg(), VERSION, 0, 8)
    with pytest.raises(ValueError):
        render_trainjob(_cfg(), "", 1, 8)
    with pytest.raises(ValueError):
        render_trainjob(_cfg(), VERSION, 1, 8, "MPIJob")  # type: ignore[arg-type]
