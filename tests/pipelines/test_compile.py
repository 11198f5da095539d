"""The compiled pipeline in the repo is never stale, and it is a lightweight-component pipeline
on the project's image (runs locally and on a cluster)."""

from __future__ import annotations

import yaml

from pipelines.runner import COMPILED_PATH, compile_pipeline


def test_compiled_pipeline_is_up_to_date(tmp_path):
    fresh = compile_pipeline(tmp_path / "alignment.yaml").read_text()
    assert COMPILED_PATH.exists(), "run `duplexalign compile` and commit pipelines/alignment.yaml"
    assert fresh == COMPILED_PATH.read_text(), (
        "pipelines/alignment.yaml is stale: run `duplexalign compile` and commit it")


def test_components_are_lightweight_on_the_project_image():
    spec = yaml.safe_load(COMPILED_PATH.read_text())
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
