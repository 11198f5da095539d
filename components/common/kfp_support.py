"""What every KFP component definition shares.

Components are lightweight Python components on the project's own image with
`install_kfp_package=False`: KFP's local runner refuses containerised components, and this form
runs unchanged locally (SubprocessRunner, the installed package) and on a cluster (the image has
the package). Each component body only parses its parameters and calls the stage's logic.
"""

from __future__ import annotations

import json
import os

from components.common.config import Config, PipelineConfig, load_config

# The image every component runs in on a cluster; set at compile time (registry and tag).
IMAGE = os.environ.get("DUPLEXALIGN_IMAGE", PipelineConfig().image)


def config_from_params(profile: str, overrides_json: str) -> Config:
    """Pipeline parameters → the typed config (profile + a JSON object of dotted overrides)."""
    overrides = json.loads(overrides_json) if overrides_json else {}
    if not isinstance(overrides, dict):
        raise ValueError("overrides must be a JSON object of dotted keys")
    return load_config(profile or None, overrides=overrides)
