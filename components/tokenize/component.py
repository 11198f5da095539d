"""KFP component of the tokenize stage."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tokenize_op(resynthesize_manifest_id: str, profile: str, overrides: str) -> str:
    """Encode every resynthesised pair into chosen/rejected token streams with their reply
    windows and pack them into a sharded pair dataset; returns the tokenize manifest id (its
    stats carry `pairs_dataset`, the dataset version id)."""
    from components.common.kfp_support import config_from_params
    from components.tokenize.logic import tokenize

    return tokenize(config_from_params(profile, overrides),
                    resynthesize_manifest_id).manifest.manifest_id
