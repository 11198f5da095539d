"""KFP component of the judge stage."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def judge_op(scrub_manifest_id: str, profile: str, overrides: str) -> str:
    """Timing events, grounded content scores and the selection of the replies that become
    preference pairs; returns the judge manifest id."""
    from components.common.kfp_support import config_from_params
    from components.judge.logic import judge

    return judge(config_from_params(profile, overrides), scrub_manifest_id).manifest.manifest_id
