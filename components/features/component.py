"""KFP component of the features stage."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def features_op(validate_manifest_id: str, profile: str, overrides: str) -> str:
    """Write the dataset's Feast rows (conversation stats, consent export, pair features) to the
    bucket's offline store, `feast apply`, materialise the online store; returns the features
    manifest id (its items are the dataset's pairs with their event times)."""
    from components.common.kfp_support import config_from_params
    from components.features.logic import build_features

    return build_features(config_from_params(profile, overrides), validate_manifest_id).manifest_id
