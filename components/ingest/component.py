"""KFP component of the ingest stage."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest_op(input_manifest_id: str, profile: str, overrides: str) -> str:
    """Validate, dedupe and consent-check a sealed raw batch; returns the ingest manifest id."""
    from components.common.kfp_support import config_from_params
    from components.ingest.logic import ingest

    return ingest(config_from_params(profile, overrides), input_manifest_id).manifest.manifest_id
