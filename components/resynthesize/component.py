"""KFP component of the resynthesize stage."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resynthesize_op(pairs_manifest_id: str, profile: str, overrides: str) -> str:
    """TTS user side at the original timestamps, the chosen reply placed in the model's voice, the
    model channels of both sides; returns the resynthesize manifest id."""
    from components.common.kfp_support import config_from_params
    from components.resynthesize.logic import resynthesize

    return resynthesize(config_from_params(profile, overrides), pairs_manifest_id).manifest.manifest_id
