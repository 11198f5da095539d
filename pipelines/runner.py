"""Running and compiling the pipeline: KFP's local runner for the embedded default, the KFP
compiler for clusters. Both use the very same pipeline function and components."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from components.common.config import Config, load_config

COMPILED_PATH = Path(__file__).with_name("alignment.yaml")


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def pipeline_overrides(cfg: Config) -> dict[str, Any]:
    """The dotted keys where `cfg` differs from its profile: what the pipeline's `overrides`
    parameter must carry so components rebuild exactly this config (never secrets: the config
    holds none)."""
    base = _flatten(load_config(cfg.profile).model_dump(mode="json"))
    mine = _flatten(cfg.model_dump(mode="json"))
    return {k: v for k, v in sorted(mine.items()) if base.get(k) != v and k != "profile"}


def compile_pipeline(path: Path = COMPILED_PATH) -> Path:
    from kfp import compiler

    from pipelines.alignment import alignment_pipeline

    compiler.Compiler().compile(alignment_pipeline, str(path))
    return path


def run_local(cfg: Config, input_manifest_id: str, groundtruth_bucket: str = "") -> str:
    """Execute the pipeline with KFP's local SubprocessRunner against the configured services;
    returns the final manifest id."""
    from kfp import local

    from pipelines.alignment import alignment_pipeline

    root = Path(cfg.pipeline.pipeline_root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    workspace = Path(cfg.services.state_dir).absolute() / "kfp-workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               workspace_root=str(workspace), raise_on_error=True)
    # Components inherit the environment; stages resolve relative paths against this directory.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    task = alignment_pipeline(input_manifest_id=input_manifest_id, profile=cfg.profile,
                              overrides=json.dumps(pipeline_overrides(cfg)),
                              groundtruth_bucket=groundtruth_bucket)
    return task.output
