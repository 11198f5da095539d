"""What every KFP component definition shares.

Components are lightweight Python components on the project's own image with
`install_kfp_package=False`: KFP's local runner refuses containerised components, and this form
runs unchanged locally (SubprocessRunner, the installed package) and on a cluster (the image has
the package). Each component body only parses its parameters and calls the stage's logic.
"""

from __future__ import annotations

import json

from components.common.config import Config, PipelineConfig, load_config

# The component image by default; pipelines/runner.py compile_pipeline sets every executor's
# image from the configuration (pipeline.image_registry / image_tag; the GPU tasks get the CUDA
# image), so this is only the definition-time default.
IMAGE = PipelineConfig().image


def config_from_params(profile: str, overrides_json: str) -> Config:
    """Pipeline parameters → the typed config (profile + a JSON object of dotted overrides)."""
    overrides = json.loads(overrides_json) if overrides_json else {}
    if not isinstance(overrides, dict):
        raise ValueError("overrides must be a JSON object of dotted keys")
    return load_config(profile or None, overrides=overrides)
