"""KFP component of the simulate stage (the embedded data source of the demo pipeline)."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def simulate_op(profile: str, overrides: str, conversations: int = 0, batch: str = "") -> str:
    """Simulate logged conversations (0 = the profile's count); returns the raw manifest id."""
    from components.common.kfp_support import config_from_params
    from components.simulate.generate import simulate_conversations

    cfg = config_from_params(profile, overrides)
    result = simulate_conversations(cfg, n=conversations or None, batch=batch or None)
    return result.manifest_id
