"""KFP component of the ingest stage."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest_op(input_manifest_id: str, profile: str, overrides: str) -> str:
    """Validate, dedupe and consent-check a sealed raw batch; returns the ingest manifest id.
    An empty ``input_manifest_id`` (scheduled runs) first seals every conversation logged under
    ``raw/`` that ingest has not seen yet."""
    import sys

    from components.common.kfp_support import config_from_params
    from components.common.storage import ObjectStore
    from components.ingest.logic import ingest, seal_raw_batch

    cfg = config_from_params(profile, overrides)
    if not input_manifest_id:
        input_manifest_id = seal_raw_batch(ObjectStore.from_config(cfg.storage), "raw/",
                                           pending_only=True)
        print(f"[ingest] sealed the pending conversations under raw/: {input_manifest_id}",
              file=sys.stderr)
    return ingest(cfg, input_manifest_id).manifest.manifest_id
