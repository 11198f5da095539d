"""The alignment pipeline: the stages that exist, composed in order.

Stages pass manifest ids only (short strings): no audio, text or PII ever lands in KFP's pipeline
root or metadata store (the pairs report, an HTML artefact, carries only redacted text and the
synthetic user voice).

The run form (KFP UI): the input manifest, the profile, dotted ``overrides``, and typed run
parameters (pipelines/run_params.py: judge endpoint, loss, β, learning rates, sizes, canary
share). The first task folds them into the configuration and validates it; every later task
reads its result.

Caching (KFP's cache, keyed on a task's inputs) is on only where a task's inputs are immutable
ids and it reads nothing mutable: the run settings, preference pairs, resynthesize, pair tensors
and the pairs report (a manifest id names sealed content; erasure writes new versions under new
ids). It is off for every task that deletes or reads mutable state: retention, ingest (a raw
prefix), transcribe (deletes raw audio; its output only holds while quarantine exists), the WER
audit (quarantine), scrub, judge (the knowledge base changes), validate (compares with the
current champion), features and mix (Feast, the consent registry's current state), train and
evaluate (the ``champion`` alias moves). Those stages keep their own per-item markers and
content-hash caches, which, unlike KFP's cache, honour erasure: a rerun repays nothing.

The run ends with evaluate: the challenger the train task registered against the champion, each
served by the predictor (serving/) and evaluated on the same items, then the promotion gate,
whose decision record goes to S3 and MLflow. Deployment is not a task: a canary reaches users
through a Git change a human merges (`duplexalign deploy`, docs/deploy.md).

Nothing reaches the trainer that the data quality gate did not pass: validate fails its task on a
critical expectation (its HTML report written first), so features, mix and train never start. The
trainer sees the training mix: the pairs the mix builder chose from Feast features (point in time)
and the consent registry's current state.

On a cluster (docs/cluster.md), read at compile time from the configuration
(``build_pipeline(cfg)``; the module's pipeline uses the profile DUPLEXALIGN_COMPILE_PROFILE,
default production): the GPU tasks (``pipeline.gpu_tasks``: train and evaluate, optionally
transcribe) ask for ``gpu_pool``'s accelerator, node selector and tolerations and run in the CUDA
image; every task mounts the platform's ConfigMap and reads, through kfp-kubernetes, exactly the
Secrets its stage needs (``TASK_SECRETS``), by reference.
"""

import os

from kfp import dsl

from components.common.config import CONFIG_ENV, Config, load_config
from components.common.kfp_support import IMAGE
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

# The Secrets (cfg.secrets) each task's stage reads: least privilege per task.
TASK_SECRETS: dict[str, tuple[str, ...]] = {
    "retention": ("s3_access_key", "s3_secret_key"),
    "ingest": ("s3_access_key", "s3_secret_key", "pseudonym_key", "consent_dsn"),
    "transcribe": ("s3_access_key", "s3_secret_key"),
    "transcript-wer": ("s3_access_key", "s3_secret_key"),
    "scrub": ("s3_access_key", "s3_secret_key"),
    "judge": ("s3_access_key", "s3_secret_key", "judge_api_key"),
    "pairs": ("s3_access_key", "s3_secret_key", "judge_api_key"),  # the LLM composer
    "resynthesize": ("s3_access_key", "s3_secret_key"),
    "tokenize": ("s3_access_key", "s3_secret_key"),
    "pairs-report": ("s3_access_key", "s3_secret_key"),
    "validate": ("s3_access_key", "s3_secret_key"),
    "features": ("s3_access_key", "s3_secret_key", "consent_dsn", "redis_password"),
    "mix": ("s3_access_key", "s3_secret_key", "consent_dsn", "redis_password"),
    "train": ("s3_access_key", "s3_secret_key"),
    "evaluate": ("s3_access_key", "s3_secret_key", "judge_api_key"),
}
# Tasks whose inputs are immutable ids and that read nothing mutable (the module doc says why).
CACHED_TASKS = frozenset({"run-settings", "pairs", "resynthesize", "tokenize", "pairs-report"})
DESCRIPTION = ("Logged full-duplex conversations → retention → ingest → transcribe → scrub "
               "(privacy) → judge → preference pairs → resynthesize → pair tensors → report → "
               "data quality gate → features (Feast) → training mix → DPO-LN training "
               "(challenger) → evaluate champion vs challenger (served) → promotion gate")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def run_settings_op(profile: str, overrides: str, judge_endpoint: str, judge_model: str,
                    loss: str, beta: float, temporal_lr: float, depformer_lr: float,
                    epochs: float, batch_size: int, timing_fraction: float,
                    max_pairs_per_user: int, qa_items: int, canary_percent: int) -> str:
    """Fold the run form's typed parameters into the overrides and validate the configuration
    (fails the run before any data is touched); returns the overrides every task reads."""
    from pipelines.run_params import fold_run_parameters

    return fold_run_parameters(profile, overrides, {
        "judge_endpoint": judge_endpoint, "judge_model": judge_model, "loss": loss,
        "beta": beta, "temporal_lr": temporal_lr, "depformer_lr": depformer_lr,
        "epochs": epochs, "batch_size": batch_size, "timing_fraction": timing_fraction,
        "max_pairs_per_user": max_pairs_per_user, "qa_items": qa_items,
        "canary_percent": canary_percent})


def _on_cluster(task: dsl.PipelineTask, name: str, cfg: Config) -> None:
    """Caching rule, GPU node pool, the platform ConfigMap and the stage's Secrets (the local
    runner ignores the Kubernetes settings)."""
    from kfp import kubernetes

    task.set_caching_options(name in CACHED_TASKS)
    if name in cfg.pipeline.gpu_tasks:  # the task names below
        request_gpu(task, cfg.gpu_pool)
    if name == "run-settings":
        return  # reads nothing but its parameters
    kubernetes.use_config_map_as_volume(task, config_map_name=cfg.pipeline.config_map,
                                        mount_path=cfg.pipeline.config_mount, optional=True)
    task.set_env_variable(CONFIG_ENV, f"{cfg.pipeline.config_mount}/config.yaml")
    by_secret: dict[tuple[str, bool], dict[str, str]] = {}
    for env, ref in cfg.secret_env(*TASK_SECRETS[name]).items():
        by_secret.setdefault((ref.name, ref.optional), {})[ref.key] = env
    for (secret, optional), key_to_env in sorted(by_secret.items()):
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=key_to_env,
                                     optional=optional)
    if cfg.pipeline.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(cfg.pipeline.image_pull_secrets))


def build_pipeline(cfg: Config):
    """The pipeline, with the cluster settings of ``cfg`` (images are set when compiling:
    pipelines/runner.py)."""

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    def alignment_pipeline(
        input_manifest_id: str = "",
        profile: str = "production",
        overrides: str = "{}",
        groundtruth_bucket: str = "",
        judge_endpoint: str = "",
        judge_model: str = "",
        loss: str = "",
        beta: float = 0.0,
        temporal_lr: float = 0.0,
        depformer_lr: float = 0.0,
        epochs: float = 0.0,
        batch_size: int = 0,
        timing_fraction: float = -1.0,
        max_pairs_per_user: int = -1,
        qa_items: int = 0,
        canary_percent: int = -1,
    ) -> str:
        """input_manifest_id: a sealed raw batch (`duplexalign seal raw/<batch>/`), or empty
        (scheduled runs): what was logged under raw/ and not yet ingested, sealed now; profile: ci,
        demo, bench or production; overrides: JSON object of dotted config keys;
        groundtruth_bucket: only for the embedded world's audits (empty in production); the
        typed run parameters (judge_endpoint … canary_percent, pipelines/run_params.py) left
        at their defaults keep the profile's values. Returns the evaluate manifest id (its
        stats: the gate's verdict, the compared versions, the decision record's key, the MLflow
        runs, the proposed canary step); its input is the train manifest, whose chain leads
        back through the mix, features and validate to the tokenize manifest that names the
        pairs dataset version."""
        settings = run_settings_op(
            profile=profile, overrides=overrides, judge_endpoint=judge_endpoint,
            judge_model=judge_model, loss=loss, beta=beta, temporal_lr=temporal_lr,
            depformer_lr=depformer_lr, epochs=epochs, batch_size=batch_size,
            timing_fraction=timing_fraction, max_pairs_per_user=max_pairs_per_user,
            qa_items=qa_items, canary_percent=canary_percent)
        settings.set_display_name("run settings (typed parameters → validated config)")
        run = settings.output
        retention = retention_op(profile=profile, overrides=run)
        retention.set_display_name("retention (expired data deleted)")
        ingest = ingest_op(input_manifest_id=input_manifest_id, profile=profile, overrides=run)
        ingest.set_display_name("ingest")
        ingest.after(retention)
        transcribe = transcribe_op(ingest_manifest_id=ingest.output, profile=profile,
                                   overrides=run)
        transcribe.set_display_name("transcribe")
        audit = transcript_wer_op(transcribe_manifest_id=transcribe.output,
                                  groundtruth_bucket=groundtruth_bucket, profile=profile,
                                  overrides=run)
        audit.set_display_name("transcript-wer (quarantine audit)")
        scrub = scrub_op(transcribe_manifest_id=transcribe.output, profile=profile,
                         overrides=run, after_audit=audit.output)
        scrub.set_display_name("scrub")
        judge = judge_op(scrub_manifest_id=scrub.output, profile=profile, overrides=run)
        judge.set_display_name("judge")
        pairs = pairs_op(judge_manifest_id=judge.output, profile=profile, overrides=run)
        pairs.set_display_name("preference pairs")
        resynth = resynthesize_op(pairs_manifest_id=pairs.output, profile=profile,
                                  overrides=run)
        resynth.set_display_name("resynthesize")
        tokens = tokenize_op(resynthesize_manifest_id=resynth.output, profile=profile,
                             overrides=run)
        tokens.set_display_name("pair tensors")
        report = pairs_report_op(tokenize_manifest_id=tokens.output, profile=profile,
                                 overrides=run)
        report.set_display_name("pairs report")
        gate = validate_op(tokenize_manifest_id=tokens.output, profile=profile, overrides=run)
        gate.set_display_name("validate (data quality gate)")
        features = features_op(validate_manifest_id=gate.outputs["Output"], profile=profile,
                               overrides=run)
        features.set_display_name("features (Feast apply, materialize)")
        mix = mix_op(features_manifest_id=features.output, profile=profile, overrides=run)
        mix.set_display_name("training mix")
        trained = train_op(mix_manifest_id=mix.output, profile=profile, overrides=run,
                           pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        trained.set_display_name("train (DPO-LN → challenger)")
        trained.after(report)
        evaluated = evaluate_op(train_manifest_id=trained.outputs["Output"], profile=profile,
                                overrides=run)
        evaluated.set_display_name("evaluate (champion vs challenger, served) → promotion gate")
        for name, task in (("run-settings", settings), ("retention", retention),
                           ("ingest", ingest), ("transcribe", transcribe),
                           ("transcript-wer", audit), ("scrub", scrub), ("judge", judge),
                           ("pairs", pairs), ("resynthesize", resynth), ("tokenize", tokens),
                           ("pairs-report", report), ("validate", gate),
                           ("features", features), ("mix", mix), ("train", trained),
                           ("evaluate", evaluated)):
            _on_cluster(task, name, cfg)
        return evaluated.outputs["Output"]

    return alignment_pipeline


def compile_config() -> Config:
    """The configuration the committed pipeline is compiled with."""
    return load_config(os.environ.get("DUPLEXALIGN_COMPILE_PROFILE", "production"))


alignment_pipeline = build_pipeline(compile_config())
