"""The compiled pipeline in the repo is never stale, and it is a lightweight-component pipeline
on the project's image (runs locally and on a cluster)."""

from __future__ import annotations

import pytest
import yaml

from pipelines.runner import COMPILED_PATH, compile_pipeline


def test_compiled_pipeline_is_up_to_date(tmp_path):
    fresh = compile_pipeline(tmp_path / "alignment.yaml").read_text()
    assert COMPILED_PATH.exists(), "run `duplexalign compile` and commit pipelines/alignment.yaml"
    assert fresh == COMPILED_PATH.read_text(), (
        "pipelines/alignment.yaml is stale: run `duplexalign compile` and commit it")


def test_components_are_lightweight_on_the_project_image():
    spec = next(yaml.safe_load_all(COMPILED_PATH.read_text()))  # then the platform spec
    executors = spec["deploymentSpec"]["executors"]
    assert {"exec-ingest-op", "exec-transcribe-op", "exec-scrub-op"} <= set(executors)
    for executor in executors.values():
        container = executor["container"]
        assert container["image"].startswith("ghcr.io/duplexalign/duplexalign:")
        script = " ".join(container["command"])
        assert "pip install" not in script  # install_kfp_package=False: the image has everything
    tasks = spec["root"]["dag"]["tasks"]
    assert all(t.get("cachingOptions", {}).get("enableCache") in (None, False) for t in tasks.values())
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"input_manifest_id", "profile", "overrides", "groundtruth_bucket"} <= set(params)


GPU_TASKS = ("exec-train-op", "exec-evaluate-op")  # training; serving both models to evaluate


@pytest.mark.parametrize("executor", GPU_TASKS)
def test_gpu_tasks_ask_for_the_gpu_node_pool(executor: str):
    """Accelerator type and limit from the production profile's gpu_pool, and its node selector
    and toleration (kfp-kubernetes platform spec); only train and evaluate ask for a GPU."""
    from components.common.config import load_config

    pool = load_config("production").gpu_pool
    docs = list(yaml.safe_load_all(COMPILED_PATH.read_text()))
    spec, platform = docs[0], docs[1]
    executors = spec["deploymentSpec"]["executors"]
    resources = executors[executor]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == pool.accelerator_type
    assert int(resources["accelerator"]["resourceCount"]) == pool.accelerator_limit
    others = [name for name, e in executors.items()
              if name not in GPU_TASKS and "accelerator" in e["container"].get("resources", {})]
    assert others == []
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][executor]
    assert k8s["nodeSelector"]["labels"] == pool.node_selector
    assert k8s["tolerations"] == [{"key": t.key, "operator": t.operator, "effect": t.effect}
                                  for t in pool.tolerations]
