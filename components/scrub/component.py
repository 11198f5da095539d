"""KFP component of the scrub stage."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def scrub_op(transcribe_manifest_id: str, profile: str, overrides: str, after_audit: str) -> str:
    """Delete the user's voice, redact PII on both sides, pseudonymise, write the privacy ledger;
    returns the scrub manifest id. `after_audit` only orders this task after the WER audit."""
    from components.common.kfp_support import config_from_params
    from components.scrub.logic import scrub

    return scrub(config_from_params(profile, overrides), transcribe_manifest_id).manifest.manifest_id
