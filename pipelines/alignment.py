"""The alignment pipeline: the stages that exist, composed in order.

Stages pass manifest ids only (short strings): no audio, text or PII ever lands in KFP's pipeline
root or metadata store. Caching is off for every task here: ingest and scrub read and delete
mutable state, and transcribe's output is only valid while its quarantine objects exist.
Later stages (judge, resynthesize, validate, train, evaluate, deploy) extend this pipeline.
"""


from kfp import dsl

from components.ingest.component import ingest_op
from components.scrub.component import scrub_op
from components.transcribe.component import transcribe_op, transcript_wer_op

PIPELINE_NAME = "duplexalign-alignment"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Logged full-duplex conversations → ingest → transcribe → scrub (privacy) → ...",
)
def alignment_pipeline(
    input_manifest_id: str,
    profile: str = "production",
    overrides: str = "{}",
    groundtruth_bucket: str = "",
) -> str:
    """input_manifest_id: a sealed raw batch (`duplexalign seal raw/<batch>/`); profile: ci, demo,
    bench or production; overrides: JSON object of dotted config keys; groundtruth_bucket: only
    for the embedded world's audits (empty in production). Returns the last stage's manifest id."""
    ingest = ingest_op(input_manifest_id=input_manifest_id, profile=profile, overrides=overrides)
    ingest.set_display_name("ingest")
    transcribe = transcribe_op(ingest_manifest_id=ingest.output, profile=profile, overrides=overrides)
    transcribe.set_display_name("transcribe")
    audit = transcript_wer_op(transcribe_manifest_id=transcribe.output,
                              groundtruth_bucket=groundtruth_bucket, profile=profile,
                              overrides=overrides)
    audit.set_display_name("transcript-wer (quarantine audit)")
    scrub = scrub_op(transcribe_manifest_id=transcribe.output, profile=profile,
                     overrides=overrides, after_audit=audit.output)
    scrub.set_display_name("scrub")
    for task in (ingest, transcribe, audit, scrub):
        task.set_caching_options(False)
    return scrub.output
