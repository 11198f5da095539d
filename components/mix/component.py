"""KFP component of the training-mix builder."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def mix_op(features_manifest_id: str, profile: str, overrides: str) -> str:
    """Choose the training mix from point-in-time features (current consent, on-policy version,
    judge margin, cap per user, timing/content balance); returns the mix manifest id (its items
    are the pairs the trainer trains on)."""
    from components.common.kfp_support import config_from_params
    from components.mix.logic import build_mix

    return build_mix(config_from_params(profile, overrides), features_manifest_id).manifest_id
