"""The alignment pipeline: the stages that exist, composed in order.

Stages pass manifest ids only (short strings): no audio, text or PII ever lands in KFP's pipeline
root or metadata store (the pairs report, an HTML artefact, carries only redacted text and the
synthetic user voice). Caching is off for every task here: retention, ingest and scrub read and delete
mutable state, transcribe's output is only valid while its quarantine objects exist, the feature
store and the consent registry change between runs, and the later stages keep their own per-item
markers and content-hash caches (a rerun repays nothing), which, unlike KFP's cache, honour
erasure. The train task resumes its own run from its last checkpoint and returns a finished run's
result on a rerun; the evaluate task reuses a gate decision already recorded on the same reports.

The run ends with evaluate: the challenger the train task registered against the champion, each
served by the predictor (serving/) and evaluated on the same items, then the promotion gate,
whose decision record goes to S3 and MLflow. Deployment is not a task: a canary reaches users
through a Git change a human merges (`duplexalign deploy`, docs/deploy.md).

Nothing reaches the trainer that the data quality gate did not pass: validate fails its task on a
critical expectation (its HTML report written first), so features, mix and train never start. The
trainer sees the training mix: the pairs the mix builder chose from Feast features (point in time)
and the consent registry's current state.

The train and evaluate tasks carry the GPU node pool's settings (accelerator, node selector, tolerations)
of the profile named by DUPLEXALIGN_COMPILE_PROFILE (default production) at compile time.
"""

import os

from kfp import dsl

from components.common.config import load_config
from components.evaluate.component import evaluate_op
from components.features.component import features_op
from components.ingest.component import ingest_op
from components.judge.component import judge_op
from components.mix.component import mix_op
from components.pairs.component import pairs_op
from components.report.component import pairs_report_op
from components.resynthesize.component import resynthesize_op
from components.retention.component import retention_op
from components.scrub.component import scrub_op
from components.tokenize.component import tokenize_op
from components.train.component import request_gpu, train_op
from components.transcribe.component import transcribe_op, transcript_wer_op
from components.validate.component import validate_op

PIPELINE_NAME = "duplexalign-alignment"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Logged full-duplex conversations → retention → ingest → transcribe → scrub "
                "(privacy) → judge → preference pairs → resynthesize → pair tensors → report → "
                "data quality gate → features (Feast) → training mix → DPO-LN training "
                "(challenger) → evaluate champion vs challenger (served) → promotion gate",
)
def alignment_pipeline(
    input_manifest_id: str,
    profile: str = "production",
    overrides: str = "{}",
    groundtruth_bucket: str = "",
) -> str:
    """input_manifest_id: a sealed raw batch (`duplexalign seal raw/<batch>/`); profile: ci, demo,
    bench or production; overrides: JSON object of dotted config keys; groundtruth_bucket: only
    for the embedded world's audits (empty in production). Returns the evaluate manifest id (its
    stats: the gate's verdict, the compared versions, the decision record's key, the MLflow
    runs); its input is the train manifest (the MLflow run, the registered challenger, where and
    why training stopped), whose chain leads back through the mix, features and validate to
    the tokenize manifest that names the pairs dataset version)."""
    retention = retention_op(profile=profile, overrides=overrides)
    retention.set_display_name("retention (expired data deleted)")
    ingest = ingest_op(input_manifest_id=input_manifest_id, profile=profile, overrides=overrides)
    ingest.set_display_name("ingest")
    ingest.after(retention)
    transcribe = transcribe_op(ingest_manifest_id=ingest.output, profile=profile, overrides=overrides)
    transcribe.set_display_name("transcribe")
    audit = transcript_wer_op(transcribe_manifest_id=transcribe.output,
                              groundtruth_bucket=groundtruth_bucket, profile=profile,
                              overrides=overrides)
    audit.set_display_name("transcript-wer (quarantine audit)")
    scrub = scrub_op(transcribe_manifest_id=transcribe.output, profile=profile,
                     overrides=overrides, after_audit=audit.output)
    scrub.set_display_name("scrub")
    judge = judge_op(scrub_manifest_id=scrub.output, profile=profile, overrides=overrides)
    judge.set_display_name("judge")
    pairs = pairs_op(judge_manifest_id=judge.output, profile=profile, overrides=overrides)
    pairs.set_display_name("preference pairs")
    resynth = resynthesize_op(pairs_manifest_id=pairs.output, profile=profile, overrides=overrides)
    resynth.set_display_name("resynthesize")
    tokens = tokenize_op(resynthesize_manifest_id=resynth.output, profile=profile,
                         overrides=overrides)
    tokens.set_display_name("pair tensors")
    report = pairs_report_op(tokenize_manifest_id=tokens.output, profile=profile,
                             overrides=overrides)
    report.set_display_name("pairs report")
    gate = validate_op(tokenize_manifest_id=tokens.output, profile=profile, overrides=overrides)
    gate.set_display_name("validate (data quality gate)")
    features = features_op(validate_manifest_id=gate.outputs["Output"], profile=profile,
                           overrides=overrides)
    features.set_display_name("features (Feast apply, materialize)")
    mix = mix_op(features_manifest_id=features.output, profile=profile, overrides=overrides)
    mix.set_display_name("training mix")
    trained = train_op(mix_manifest_id=mix.output, profile=profile, overrides=overrides,
                       pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    trained.set_display_name("train (DPO-LN → challenger)")
    trained.after(report)
    evaluated = evaluate_op(train_manifest_id=trained.outputs["Output"], profile=profile,
                            overrides=overrides)
    evaluated.set_display_name("evaluate (champion vs challenger, served) → promotion gate")
    gpu_pool = load_config(os.environ.get("DUPLEXALIGN_COMPILE_PROFILE", "production")).gpu_pool
    request_gpu(trained, gpu_pool)
    request_gpu(evaluated, gpu_pool)
    for task in (retention, ingest, transcribe, audit, scrub, judge, pairs, resynth, tokens, report,
                 gate, features, mix, trained, evaluated):
        task.set_caching_options(False)
    return evaluated.outputs["Output"]
