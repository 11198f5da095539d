"""Running and compiling the pipeline: KFP's local runner for the embedded default, the KFP
compiler for clusters. Both use the very same pipeline function and components."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from components.common.config import Config, flatten, load_config

COMPILED_PATH = Path(__file__).with_name("alignment.yaml")


def pipeline_overrides(cfg: Config) -> dict[str, Any]:
    """The dotted keys where `cfg` differs from its profile: what the pipeline's `overrides`
    parameter must carry so components rebuild exactly this config (never secrets: the config
    holds none)."""
    base = flatten(load_config(cfg.profile).model_dump(mode="json"))
    mine = flatten(cfg.model_dump(mode="json"))
    return {k: v for k, v in sorted(mine.items()) if base.get(k) != v and k != "profile"}


def compile_pipeline(path: Path = COMPILED_PATH, cfg: Config | None = None) -> Path:
    """KFP IR YAML of the pipeline with the cluster settings of ``cfg`` (default: the committed
    pipeline's, pipelines.alignment.compile_config): every executor runs in the component image,
    the GPU tasks in the CUDA image (``pipeline.image_registry``/``image_tag``)."""
    import yaml
    from kfp import compiler

    from pipelines.alignment import build_pipeline, compile_config

    cfg = cfg or compile_config()
    compiler.Compiler().compile(build_pipeline(cfg), str(path))
    docs = list(yaml.safe_load_all(path.read_text()))
    gpu_executors = {f"exec-{task}-op" for task in cfg.pipeline.gpu_tasks}
    for name, executor in docs[0]["deploymentSpec"]["executors"].items():
        executor["container"]["image"] = (cfg.pipeline.gpu_image if name in gpu_executors
                                          else cfg.pipeline.image)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=True))
    return path


class _PipelineLog(io.TextIOBase):
    """Where KFP's local runner prints (it prints every executor input and output to stdout):
    everything goes to a log file; stage progress and task results are echoed to stderr, so
    stdout stays clean for the caller's own output."""

    ECHO = re.compile(r"^\s*(\[[a-z_]+\] |.*Task .* finished with status|.*Pipeline .* finished)")
    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")
        self.partial = ""

    def write(self, text: str) -> int:
        self.file.write(text)
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            clean = self.ANSI.sub("", line)
            if self.ECHO.match(clean):
                print("  " + clean.strip(), file=sys.stderr, flush=True)
        return len(text)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def run_local(cfg: Config, input_manifest_id: str, groundtruth_bucket: str = "") -> str:
    """Execute the pipeline with KFP's local SubprocessRunner against the configured services;
    returns the final manifest id. KFP's full output goes to <state_dir>/logs/pipeline-*.log."""
    from kfp import local

    from pipelines.alignment import alignment_pipeline

    root = Path(cfg.pipeline.pipeline_root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    state = Path(cfg.services.state_dir).absolute()
    workspace = state / "kfp-workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"pipeline-{time.strftime('%Y%m%dT%H%M%S')}.log"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               workspace_root=str(workspace), raise_on_error=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sink = _PipelineLog(log_path)
    print(f"  (KFP local runner log: {log_path})", file=sys.stderr, flush=True)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            # Expected locally: resource/display settings are cluster-only, and the components
            # name the project's image (they run in this environment instead).
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            task = alignment_pipeline(input_manifest_id=input_manifest_id, profile=cfg.profile,
                                      overrides=json.dumps(pipeline_overrides(cfg)),
                                      groundtruth_bucket=groundtruth_bucket)
    finally:
        sink.close()
    return task.output
