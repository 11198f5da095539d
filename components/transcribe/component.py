"""KFP components of the transcribe stage."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def transcribe_op(ingest_manifest_id: str, profile: str, overrides: str) -> str:
    """Whisper (word timestamps) on the user channel → quarantined transcripts; returns the
    transcribe manifest id."""
    from components.common.kfp_support import config_from_params
    from components.transcribe.logic import transcribe

    return transcribe(config_from_params(profile, overrides), ingest_manifest_id).manifest.manifest_id


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def transcript_wer_op(transcribe_manifest_id: str, groundtruth_bucket: str, profile: str,
                      overrides: str) -> str:
    """Embedded/demo audit only: WER of the quarantined transcripts against the simulator's
    ground truth, measured BEFORE redaction. With no ground-truth bucket (production) it does
    nothing. Returns the WER as text ("" when not measured)."""
    from components.common.kfp_support import config_from_params
    from components.transcribe.quality import measure_transcript_wer

    if not groundtruth_bucket:
        return ""
    cfg = config_from_params(profile, overrides)
    return str(measure_transcript_wer(cfg, transcribe_manifest_id, groundtruth_bucket)["wer"])
