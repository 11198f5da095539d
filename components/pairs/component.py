"""KFP component of the pairs stage."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pairs_op(judge_manifest_id: str, profile: str, overrides: str) -> str:
    """One preference pair per selected reply (A content, B interruption, C silence); returns the
    pairs manifest id (its items are PreferencePair records)."""
    from components.common.kfp_support import config_from_params
    from components.pairs.logic import build_pairs

    run = build_pairs(config_from_params(profile, overrides), judge_manifest_id)
    return run.manifest.manifest_id
