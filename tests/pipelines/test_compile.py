"""The compiled pipeline in the repo is never stale, and it is what a cluster needs: lightweight
components on the project's images (CUDA for the GPU tasks), a typed run form, the GPU node pool
on the GPU tasks only, each task's Secrets by reference, and KFP's cache only where a task's
inputs are immutable ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.common.config import load_config
from pipelines.alignment import CACHED_TASKS, TASK_SECRETS
from pipelines.runner import COMPILED_PATH, compile_pipeline

GPU_TASKS = ("exec-train-op", "exec-evaluate-op")  # training; serving both models to evaluate
# Tasks that delete or read mutable state: KFP's cache must never answer for them.
NEVER_CACHED = ("retention", "ingest", "transcribe", "transcript-wer", "scrub", "judge",
                "validate", "features", "mix", "train", "evaluate")


def _docs(path: Path = COMPILED_PATH) -> tuple[dict, dict]:
    spec, platform = list(yaml.safe_load_all(path.read_text()))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _task_executor(spec: dict) -> dict[str, str]:
    """display-independent task name (`pairs-report`) → executor name (`exec-pairs-report-op`)."""
    tasks = spec["root"]["dag"]["tasks"]
    return {name.removesuffix("-op"): spec["components"][t["componentRef"]["name"]]
            ["executorLabel"] for name, t in tasks.items()}


def test_compiled_pipeline_is_up_to_date(tmp_path):
    fresh = compile_pipeline(tmp_path / "alignment.yaml").read_text()
    assert COMPILED_PATH.exists(), "run `duplexalign compile` and commit pipelines/alignment.yaml"
    assert fresh == COMPILED_PATH.read_text(), (
        "pipelines/alignment.yaml is stale: run `duplexalign compile` and commit it")


def test_components_are_lightweight_on_the_project_images():
    spec, _ = _docs()
    pipeline = load_config("production").pipeline
    executors = spec["deploymentSpec"]["executors"]
    assert {"exec-ingest-op", "exec-transcribe-op", "exec-scrub-op"} <= set(executors)
    for name, executor in executors.items():
        container = executor["container"]
        expected = pipeline.gpu_image if name in GPU_TASKS else pipeline.image
        assert container["image"] == expected, name
        script = " ".join(container["command"])
        assert "pip install" not in script  # install_kfp_package=False: the image has everything
    assert pipeline.image == "ghcr.io/duplexalign/duplexalign:0.1.0"
    assert pipeline.gpu_image == "ghcr.io/duplexalign/duplexalign-cuda:0.1.0"


def test_registry_and_tag_are_configurable(tmp_path):
    cfg = load_config("production", overrides=["pipeline.image_registry=registry.example/ml",
                                               "pipeline.image_tag=2.0.1"])
    spec, _ = _docs(compile_pipeline(tmp_path / "p.yaml", cfg))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/ml/duplexalign:2.0.1",
                      "registry.example/ml/duplexalign-cuda:2.0.1"}


def test_the_run_form_is_typed():
    """The KFP UI renders a form from these: numbers are numbers, every knob optional."""
    params = _docs()[0]["root"]["inputDefinitions"]["parameters"]
    types = {name: p["parameterType"] for name, p in params.items()}
    # empty: a scheduled run seals what was logged under raw/ and not yet ingested
    assert types["input_manifest_id"] == "STRING"
    assert params["input_manifest_id"]["defaultValue"] == ""
    assert {k: types[k] for k in ("beta", "temporal_lr", "depformer_lr", "epochs",
                                  "timing_fraction")} == dict.fromkeys(
        ("beta", "temporal_lr", "depformer_lr", "epochs", "timing_fraction"), "NUMBER_DOUBLE")
    assert {k: types[k] for k in ("batch_size", "max_pairs_per_user", "qa_items",
                                  "canary_percent")} == dict.fromkeys(
        ("batch_size", "max_pairs_per_user", "qa_items", "canary_percent"), "NUMBER_INTEGER")
    assert types["judge_endpoint"] == types["loss"] == types["profile"] == "STRING"
    assert all(p.get("isOptional") for p in params.values())


def test_caching_only_for_tasks_on_immutable_ids():
    spec, _ = _docs()
    tasks = spec["root"]["dag"]["tasks"]
    cached = {name.removesuffix("-op") for name, t in tasks.items()
              if t.get("cachingOptions", {}).get("enableCache")}
    assert cached == set(CACHED_TASKS)
    assert not cached & set(NEVER_CACHED)
    assert set(NEVER_CACHED) | cached == {n.removesuffix("-op") for n in tasks}


@pytest.mark.parametrize("executor", GPU_TASKS)
def test_gpu_tasks_ask_for_the_gpu_node_pool(executor: str):
    """Accelerator type and limit from the production profile's gpu_pool, and its node selector
    and toleration (kfp-kubernetes platform spec); only train and evaluate ask for a GPU."""
    pool = load_config("production").gpu_pool
    spec, k8s_executors = _docs()
    executors = spec["deploymentSpec"]["executors"]
    resources = executors[executor]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == pool.accelerator_type
    assert int(resources["accelerator"]["resourceCount"]) == pool.accelerator_limit
    others = [name for name, e in executors.items()
              if name not in GPU_TASKS and "accelerator" in e["container"].get("resources", {})]
    assert others == []
    k8s = k8s_executors[executor]
    assert k8s["nodeSelector"]["labels"] == pool.node_selector
    assert k8s["tolerations"] == [{"key": t.key, "operator": t.operator, "effect": t.effect}
                                  for t in pool.tolerations]


def test_transcribe_can_run_on_the_gpu_pool(tmp_path):
    """pipeline.gpu_tasks adds transcribe (Whisper large-v3): accelerator, node pool, CUDA image;
    and a cloud's node labels (GKE here) reach every GPU task."""
    cfg = load_config("production", overrides=[
        'pipeline.gpu_tasks=["transcribe", "train", "evaluate"]',
        'gpu_pool.node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}'])
    spec, k8s_executors = _docs(compile_pipeline(tmp_path / "p.yaml", cfg))
    for executor in ("exec-transcribe-op", *GPU_TASKS):
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert container["image"] == cfg.pipeline.gpu_image
        assert k8s_executors[executor]["nodeSelector"]["labels"] == {
            "cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}


def test_each_task_reads_only_its_secrets_by_reference():
    cfg = load_config("production")
    spec, k8s_executors = _docs()
    for task, executor in _task_executor(spec).items():
        k8s = k8s_executors.get(executor, {})
        got = {(e["envVar"], s["secretName"], e["secretKey"], s["optional"])
               for s in k8s.get("secretAsEnv", []) for e in s["keyToEnv"]}
        if task == "run-settings":
            assert got == set() and "configMapAsVolume" not in k8s
            continue
        want = {(env, ref.name, ref.key, ref.optional)
                for env, ref in cfg.secret_env(*TASK_SECRETS[task]).items()}
        assert got == want, task
        assert k8s["configMapAsVolume"] == [{
            "configMapName": "duplexalign-config", "mountPath": "/etc/duplexalign",
            "optional": True, "configMapNameParameter": {
                "runtimeValue": {"constant": "duplexalign-config"}}}]
        env = spec["deploymentSpec"]["executors"][executor]["container"]["env"]
        assert env == [{"name": "DUPLEXALIGN_CONFIG", "value": "/etc/duplexalign/config.yaml"}]
    holders = {task for task, executor in _task_executor(spec).items()
               if any(s["secretName"] == "duplexalign-pseudonym"
                      for s in k8s_executors.get(executor, {}).get("secretAsEnv", []))}
    assert holders == {"ingest"}  # least privilege: only ingest pseudonymises


def test_no_secret_value_reaches_the_compiled_pipeline(tmp_path, monkeypatch):
    """Credentials in the compiling environment never reach the package: only names."""
    sentinel = "AKIA-SENTINEL-COMPILE-0001"
    for env in load_config("production").secret_env():
        monkeypatch.setenv(env, sentinel)
    text = compile_pipeline(tmp_path / "p.yaml").read_text()
    assert sentinel not in text
