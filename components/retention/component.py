"""KFP component of the retention task (the first task of the pipeline)."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def retention_op(profile: str, overrides: str) -> str:
    """Delete every object version older than its prefix's retention period
    (``retention.days``), set the bucket lifecycle rules where the store takes them, and write
    the ledger entry; returns the ledger key ("" when retention.enforce_in_pipeline is off)."""
    from components.common.kfp_support import config_from_params
    from components.retention.logic import enforce_retention

    cfg = config_from_params(profile, overrides)
    if not cfg.retention.enforce_in_pipeline:
        return ""
    return enforce_retention(cfg).ledger_key or ""
