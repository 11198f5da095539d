"""`duplexalign` — the command line of the platform.

Every command takes the same configuration options (profile, YAML file, dotted overrides), so
what runs from the CLI, the KFP UI and a GitOps deployment is configured the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from components.common.config import PROFILES, Config, load_config

EPILOG = """\
examples:
  duplexalign demo                          services up, bootstrap, the champion serves users,
                                            pipeline, audit, baseline behaviour, summary
  duplexalign services up                   start the local S3 (SeaweedFS) and MLflow servers
  duplexalign bootstrap                     train (or load the cached) embedded base model,
                                            registered in MLflow as the first champion
  duplexalign simulate --policy champion    the champion serves 12 simulated users (LMGen)
  duplexalign simulate --conversations 20   log 20 SCRIPTED conversations (calibration set)
  duplexalign evaluate-model champion       QA, refusal, over-refusal, interruption, silence
  duplexalign model export champion out/    Kyutai's checkpoint format (moshi's loaders read it)
  duplexalign train --latest                DPO-LN on the last pipeline run's training mix:
                                            early stopping, MLflow run, `challenger` registered
  duplexalign --set train.loss=simpo train --dataset pairs-...   one switch, four losses
  duplexalign features materialize          Feast: the newest feature rows into the online store
  duplexalign mix --latest                  the training mix from point-in-time features
  duplexalign --profile production trainjob --dataset pairs-... --nodes 2 --gpus-per-node 8
                                            a Kubeflow TrainJob (or --kind PyTorchJob) to apply
  duplexalign run --input-manifest raw-...  run the pipeline (KFP local runner) on a sealed batch
  duplexalign compile                       write the pipeline's IR YAML (pipelines/alignment.yaml)
  duplexalign submit --host URL [--run] [--schedule CRON]   upload it to Kubeflow Pipelines
  duplexalign bench transcribe              stage vs plain whisper_timestamped loop: RTF and WER
  duplexalign bench judge                   detectors and content judge vs the simulator's
                                            labels; replies/s at concurrency 1 and 8
  duplexalign bench resynthesize            TTS real-time factor, fit of resynthesised user turns
  duplexalign bench tokenize                pair-tensor tokenization frames/s
  duplexalign bench train [--quick]         trainer step vs TRL DPOTrainer tokens/s, Moshi
                                            text vs joint frames/s, reference cache, MFU
  duplexalign judge serve --port 8765       OpenAI-compatible server in front of the local judge
  duplexalign validate --latest             the data quality gate on the newest tokenize run:
                                            GX report; exit 1 naming failed critical checks
  duplexalign erase --user ID --dry-run     what forgetting a user would remove and rewrite
  duplexalign erase --user ID               forget them everywhere; ledger + re-scan as proof
  duplexalign retention                     expire objects per retention.days (ledger entry)
  duplexalign serve champion --port 8080     the predictor: OIP v2 + full-duplex WebSocket
  duplexalign evaluate                      challenger vs champion, both served; the gate
  duplexalign bench serve                   OIP p50/p99, per-frame step, real-time streams
  duplexalign bench alignment --budget-minutes 180   the paper's table over seeds, ablations,
                                            early-stopping curve; resumes; HTML report in MLflow
  duplexalign deploy --canary 10            the challenger at 10% as a commit-ready GitOps change
                                            (needs the gate's promote verdict; record attached)
  duplexalign deploy --status --status-file isvc.json   rollout health; aliases move once healthy
  duplexalign --set transcribe.model_source=s3://models/whisper-small run --latest
"""


def _config(args: argparse.Namespace) -> Config:
    """The configuration; on the embedded profiles, pointed at the running local services (the
    production profile names its cluster endpoints itself)."""
    cfg = args.base_config
    if cfg.profile != "production":
        from pipelines.services.manager import config_with_live_endpoints

        try:
            cfg = config_with_live_endpoints(cfg)
        except RuntimeError as exc:
            raise SystemExit(f"duplexalign: {exc}") from None
    return cfg


def cmd_services(args: argparse.Namespace) -> int:
    from pipelines.services.manager import services_down, services_status, services_up

    cfg = args.base_config
    if args.action == "up":
        services_up(cfg)
    elif args.action == "down":
        services_down(cfg)
    print(json.dumps(services_status(cfg), indent=2, default=str))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from components.simulate.generate import simulate_conversations

    cfg = _config(args)
    if args.policy:
        from components.simulate.live import simulate_with_policy

        result = simulate_with_policy(cfg, args.policy, n=args.conversations, batch=args.batch)
    else:
        result = simulate_conversations(cfg, n=args.conversations, batch=args.batch)
    print(json.dumps(result.summary() if hasattr(result, "summary") else vars(result), default=str))
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from components.bootstrap.logic import bootstrap

    cfg = _config(args)
    result = bootstrap(cfg, force=args.force)
    print(json.dumps(result.summary(), default=str))
    return 0


def cmd_evaluate_model(args: argparse.Namespace) -> int:
    from components.evaluate.behaviour import evaluate_model

    cfg = _config(args)
    report = evaluate_model(cfg, args.model)
    for line in report.summary_lines():
        print(line, file=sys.stderr)
    print(json.dumps(report.to_dict(), default=str))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from components.train.logic import TrainingPaused, train

    cfg = _config(args)
    input_id = args.mix or args.tokenize_manifest
    if args.latest:
        from pipelines.lineage import latest_manifest

        input_id = latest_manifest(cfg, "mix")
    if not input_id and not args.dataset:
        raise SystemExit("duplexalign train: give --mix ID, --tokenize-manifest ID, --dataset "
                         "VERSION or --latest")
    try:
        result = train(cfg, input_id, dataset_version=args.dataset,
                       stop_after_steps=args.stop_after_steps)
    except TrainingPaused as exc:
        print(f"duplexalign train: {exc}", file=sys.stderr)
        return 3
    if os.environ.get("RANK", "0") == "0":  # under torchrun: one result line, from rank 0
        print(json.dumps(result.to_dict(), default=str))
    return 0


def cmd_trainjob(args: argparse.Namespace) -> int:
    from components.train.trainjob import render_trainjob, to_yaml

    # no live endpoints here: the manifest carries the configuration as given (cluster endpoints)
    manifest = render_trainjob(args.base_config, args.dataset, args.nodes, args.gpus_per_node,
                               args.kind)
    print(to_yaml(manifest), end="")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from components.model.exchange import export_checkpoint, import_checkpoint

    cfg = _config(args)
    if args.action == "export":
        print(export_checkpoint(cfg, args.source, Path(args.target)))
    else:
        print(import_checkpoint(cfg, args.source, alias=args.alias))
    return 0


def cmd_seal(args: argparse.Namespace) -> int:
    from components.common.storage import ObjectStore
    from components.ingest.logic import seal_raw_batch

    cfg = _config(args)
    print(seal_raw_batch(ObjectStore.from_config(cfg.storage), args.prefix))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.runner import run_local

    cfg = _config(args)
    manifest_id = args.input_manifest
    if not manifest_id:
        from pipelines.lineage import latest_raw_manifest

        manifest_id = latest_raw_manifest(cfg)
    print(run_local(cfg, manifest_id, groundtruth_bucket=args.groundtruth_bucket))
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from components.common.config import load_config
    from pipelines.runner import COMPILED_PATH, compile_pipeline

    # the cluster's settings (images, GPU tasks, Secrets): the production profile unless named
    cfg = load_config(args.profile or "production", args.config, args.set)
    if args.image_registry:
        cfg.pipeline.image_registry = args.image_registry
    if args.image_tag:
        cfg.pipeline.image_tag = args.image_tag
    print(compile_pipeline(Path(args.output) if args.output else COMPILED_PATH, cfg))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import tempfile

    from components.common.config import load_config
    from pipelines.cluster.submit import submit_from_args
    from pipelines.runner import compile_pipeline

    # not _config(args): submit talks to a KFP host only, never to the local services
    cfg = load_config(args.profile or "production", args.config, args.set)
    with tempfile.TemporaryDirectory() as tmp:
        if args.compile:  # the cluster's settings as this configuration has them (the chart's
            # ConfigMap in the registration Job): images, GPU pool, Secrets
            if args.package:
                raise SystemExit("duplexalign submit: --compile and --package exclude each other")
            args.package = str(compile_pipeline(Path(tmp) / "alignment.yaml", cfg))
        print(json.dumps(submit_from_args(args, cfg)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    return run_demo(args.base_config, conversations=args.conversations)


def cmd_judge(args: argparse.Namespace) -> int:
    from components.judge.server import main as serve_main

    argv = ["--port", str(args.port)] + (["--require-key"] if args.require_key else [])
    return int(serve_main(argv, cfg=args.base_config) or 0)


def cmd_bench(args: argparse.Namespace) -> int:
    from pipelines.bench import run_bench

    # run_bench starts the local services itself when they are not up.
    return run_bench(args.base_config, args.which, args)


def _iso(value: str | None):
    """An ISO time from the command line ("2026-11-01T10:00Z"; naive = UTC), or None."""
    from datetime import datetime, timezone

    if not value:
        return None
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at


def cmd_validate(args: argparse.Namespace) -> int:
    from components.validate.logic import validate_dataset

    cfg = _config(args)
    input_id = args.tokenize_manifest
    if args.latest or not input_id:
        from pipelines.lineage import latest_manifest

        input_id = latest_manifest(cfg, "tokenize")
    outcome = validate_dataset(cfg, input_id)
    print(json.dumps(outcome.to_dict(), default=str))
    if outcome.stopped:  # report and manifest are written; the gate stops what follows
        print("duplexalign validate: the data quality gate STOPPED: critical expectations "
              f"failed: {', '.join(outcome.critical_failed)} (report: {outcome.report_key})",
              file=sys.stderr)
        return 1
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from components.common.featurestore import store as feature_store

    cfg = _config(args)
    if args.action == "apply":
        result = feature_store.apply_repo(cfg)
    elif args.action == "materialize":
        feature_store.apply_repo(cfg)
        until = feature_store.materialize(cfg, end=_iso(args.end))
        result = {"materialized_until": until.isoformat(),
                  "views": feature_store.views_with_rows(cfg),
                  "online_store": cfg.features.online_store}
    else:  # build: the pipeline's features stage
        from components.features.logic import build_features

        input_id = args.validate_manifest
        if args.latest or not input_id:
            from pipelines.lineage import latest_manifest

            input_id = latest_manifest(cfg, "validate")
        manifest = build_features(cfg, input_id)
        result = {"manifest_id": manifest.manifest_id, **manifest.stats}
    print(json.dumps(result, default=str))
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    from components.mix.logic import build_mix

    cfg = _config(args)
    input_id = args.features_manifest
    if args.latest or not input_id:
        from pipelines.lineage import latest_manifest

        input_id = latest_manifest(cfg, "features")
    manifest = build_mix(cfg, input_id, as_of=_iso(args.as_of), model_version=args.model_version)
    print(json.dumps({"manifest_id": manifest.manifest_id, **manifest.stats}, default=str))
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from components.erase.logic import erase_user

    cfg = _config(args)
    if not args.user and not args.pseudonym:
        raise SystemExit("duplexalign erase: give --user ID or --pseudonym P")
    try:
        report = erase_user(cfg, user_id=args.user, pseudonym=args.pseudonym,
                            dry_run=args.dry_run, request_id=args.request_id)
    except (ValueError, RuntimeError) as exc:
        raise SystemExit(f"duplexalign erase: {exc}") from None
    print(json.dumps(report.to_dict() if args.full else report.summary(), default=str))
    # a re-scan that still finds the user is a failure the operator must see
    return 0 if args.dry_run or report.clean else 1


def cmd_retention(args: argparse.Namespace) -> int:
    from components.retention.logic import enforce_retention

    cfg = _config(args)
    report = enforce_retention(cfg, now=_iso(args.now), dry_run=args.dry_run)
    print(json.dumps(report.to_dict() if args.full else report.summary(), default=str))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.server import serve_main

    cfg = _config(args)
    if args.port is not None:
        cfg.serving.port = args.port
    return serve_main(cfg, args.model, model_version=args.model_version)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from components.evaluate.logic import evaluate_and_gate

    comparison, decision, _ = evaluate_and_gate(_config(args), args.champion, args.challenger)
    print("\n".join(comparison.summary_lines()), file=sys.stderr)
    print(json.dumps({"verdict": decision.verdict, "reasons": decision.reasons,
                      "champion": comparison.champion.model_version,
                      "challenger": comparison.challenger.model_version,
                      "decision_key": decision.key, "gate_run_id": decision.mlflow_run_id,
                      "comparison": comparison.keys, "comparison_run_id":
                      comparison.mlflow_run_id}, default=str))
    return 0 if decision.verdict == "promote" or not args.check else 1


def cmd_deploy(args: argparse.Namespace) -> int:
    from components.deploy.cli import run_cli

    return run_cli(_config(args), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duplexalign",
        description="Align full-duplex spoken dialogue models from their users' conversations, "
                    "without keeping their voices.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None,
                        help="sizes and budgets (default: demo, or $DUPLEXALIGN_PROFILE)")
    parser.add_argument("--config", metavar="FILE", help="YAML file overriding the profile")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="dotted override, e.g. --set simulate.conversations=30 (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = add("services", cmd_services, "start, stop or show the local platform services "
                                      "(SeaweedFS S3, MLflow; the consent registry is sqlite)")
    p.add_argument("action", choices=["up", "down", "status"])

    p = add("simulate", cmd_simulate, "write simulated logged conversations into raw/ "
                                      "(resumable; ground truth to its own bucket)")
    p.add_argument("--conversations", type=int, default=None,
                   help="how many (default: the profile's simulate.conversations)")
    p.add_argument("--batch", default=None, help="raw/<batch>/ folder (default: derived from seed)")
    p.add_argument("--policy", default=None, metavar="MODEL",
                   help="let MODEL serve the simulated users through moshi's LMGen (reactive "
                        "users; the model's own tokens are logged): 'champion', models:/NAME/V, "
                        "a checkpoint folder or s3:// URI. Without it the replies are scripted.")

    p = add("bootstrap", cmd_bootstrap, "train the embedded Moshi-architecture base model on "
                                        "simulated conversations (cached by content hash) and "
                                        "register it in MLflow as the first champion")
    p.add_argument("--force", action="store_true", help="retrain even if a cached result exists")

    p = add("evaluate-model", cmd_evaluate_model,
            "measure a model's behaviour on held-out items of the world: QA accuracy from its "
            "text stream, refusal and over-refusal, interruption and silence rates")
    p.add_argument("model", nargs="?", default=None,
                   help="'champion' (default: model.source), models:/NAME/V, a folder or s3://")

    p = add("train", cmd_train,
            "preference-train the champion on a pairs dataset (train.loss: dpo_ln by default, "
            "dpo, simpo, apo_zero) with early stopping; registers the best checkpoint as "
            "`challenger`. Reruns return a finished run; an interrupted run resumes")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--mix", default=None,
                     help="a training-mix manifest id (mix-...): the pairs the mix builder chose")
    src.add_argument("--tokenize-manifest", default=None,
                     help="a tokenize manifest id: every pair of the dataset its stats name")
    src.add_argument("--dataset", default=None, help="a pairs dataset version (pairs-...)")
    src.add_argument("--latest", action="store_true",
                     help="the newest training mix in the bucket (what the pipeline trains on)")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="pause after this many steps with a resumable checkpoint (exit code 3)")

    p = add("trainjob", cmd_trainjob,
            "print a Kubeflow Trainer TrainJob (or a PyTorchJob) that trains a pairs dataset "
            "with torchrun + FSDP on several GPU nodes (docs/train.md, Scale)")
    p.add_argument("--dataset", required=True, help="the pairs dataset version (pairs-...)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--kind", choices=["TrainJob", "PyTorchJob"], default="TrainJob")

    p = add("model", cmd_model, "export a model to Kyutai's stock checkpoint format, or import "
                                "one (safetensors + config.json) into the registry")
    p.add_argument("action", choices=["export", "import"])
    p.add_argument("source", help="export: the model ('champion', models:/..., folder, s3://); "
                                  "import: a checkpoint folder or s3:// URI")
    p.add_argument("target", nargs="?", default=".", help="export: the output folder")
    p.add_argument("--alias", default=None, help="import: set this registry alias on the version")

    p = add("seal", cmd_seal, "pin a logged batch's object versions into an immutable raw manifest")
    p.add_argument("prefix", help="e.g. raw/2026-11-26/")

    p = add("run", cmd_run, "run the alignment pipeline with KFP's local runner")
    p.add_argument("--input-manifest", default=None,
                   help="raw manifest id (default: the most recent raw manifest)")
    p.add_argument("--groundtruth-bucket", default="",
                   help="embedded world only: measure transcript WER against this bucket")

    p = add("compile", cmd_compile, "compile the pipeline to KFP IR YAML (the cluster's "
                                    "settings: the production profile unless --profile names "
                                    "another; --set pipeline.gpu_tasks=[transcribe,train,"
                                    "evaluate], gpu_pool.*, secrets.*)")
    p.add_argument("--output", default=None, help="default: pipelines/alignment.yaml")
    p.add_argument("--image-registry", default="", metavar="REGISTRY",
                   help="where the images are pushed (default pipeline.image_registry: "
                        "ghcr.io/duplexalign); docs/images.md")
    p.add_argument("--image-tag", default="", metavar="TAG",
                   help="the images' tag (default pipeline.image_tag)")

    from pipelines.cluster.submit import add_submit_arguments

    p = add("submit", cmd_submit, "upload the compiled pipeline to Kubeflow Pipelines as a "
                                  "content-named version; optionally start a run (--run) or keep "
                                  "a recurring run (--schedule)")
    add_submit_arguments(p)
    p.add_argument("--compile", action="store_true",
                   help="compile the pipeline now with this configuration (the production "
                        "profile unless --profile names another; in the chart's Job: the "
                        "platform ConfigMap, so its images, GPU pool and Secrets) and upload "
                        "that instead of the committed package")

    p = add("demo", cmd_demo, "the whole platform on this machine: services up, bootstrap the "
                              "champion, it serves simulated users, the pipeline (ingest, "
                              "transcribe, scrub, judge, pairs, resynthesize, tokenize, report), "
                              "privacy audit, baseline behaviour; ends with one JSON line")
    p.add_argument("--conversations", type=int, default=None,
                   help="simulated users the champion serves (default: simulate.conversations)")

    p = add("judge", cmd_judge, "the judge's own tools: `serve` runs the project's "
                                "OpenAI-compatible chat-completions server in front of the local "
                                "judge (loopback), for tests, benches and as a drop-in endpoint")
    p.add_argument("action", choices=["serve"])
    p.add_argument("--port", type=int, default=8765, help="serve: port on 127.0.0.1 (0 = free)")
    p.add_argument("--require-key", action="store_true",
                   help="serve: answer only requests bearing the API key named by "
                        "judge.api_key_env / judge.api_key_file")

    p = add("validate", cmd_validate,
            "the data quality gate (Great Expectations) on a tokenize manifest's chain: "
            "transcripts, judgements, pairs and pair tensors; writes the report "
            "(reports/validate/<id>/validation.html) and the validate manifest, logs to MLflow; "
            "exits 1 naming the critical expectations that failed")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tokenize-manifest", default=None, metavar="ID",
                     help="the tokenize manifest whose chain and pairs dataset to validate")
    src.add_argument("--latest", action="store_true",
                     help="the newest tokenize manifest in the bucket (the default)")

    p = add("features", cmd_features,
            "the Feast feature store (feature_repo/): `apply` registers the entities and "
            "feature views, `materialize` loads the newest rows into the online store (sqlite "
            "locally, Redis in the cluster), `build` runs the pipeline's features stage")
    p.add_argument("action", choices=["apply", "materialize", "build"])
    p.add_argument("--end", default=None, metavar="ISO",
                   help="materialize: rows with event times up to this time (default: now)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--validate-manifest", default=None, metavar="ID",
                     help="build: the validate manifest (the gate passed) to take the dataset from")
    src.add_argument("--latest", action="store_true",
                     help="build: the newest validate manifest in the bucket (the default)")

    p = add("mix", cmd_mix,
            "choose the training mix from point-in-time features: current consent, on-policy "
            "model version, minimum judge margin, cap per user, timing/content balance (mix.*); "
            "writes the mix manifest the trainer consumes")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--features-manifest", default=None, metavar="ID",
                     help="a features manifest id (features-...)")
    src.add_argument("--latest", action="store_true",
                     help="the newest features manifest in the bucket (the default)")
    p.add_argument("--as-of", default=None, metavar="ISO",
                   help="leave out pairs later than this (default: when the features were built)")
    p.add_argument("--model-version", default=None,
                   help="the on-policy version (default: the one train.policy_source, the "
                        "champion, serves)")

    p = add("erase", cmd_erase,
            "forget one user: every object version naming them (transcripts, judgements, "
            "pairs and their audio, caches, reports, MLflow artefacts, state markers, Feast "
            "rows, pipeline-root and local copies) is deleted; manifests and pair datasets "
            "holding them are rewritten as new versions (old ones and their reference "
            "log-probs deleted, lineage recorded); a re-scan proves nothing is left; ledger "
            "at ledger/erasure/<request>.json. Exit 1 when the re-scan still finds the user")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", default=None, metavar="ID",
                     help="the serving side's raw user id (pseudonymised with the scrub key)")
    who.add_argument("--pseudonym", default=None, metavar="P", help="the pseudonym (p-...)")
    p.add_argument("--dry-run", action="store_true",
                   help="list what would be removed and rewritten; change nothing")
    p.add_argument("--request-id", default=None,
                   help="the erasure request's id (default: erase-<time>-<hash>)")
    p.add_argument("--full", action="store_true",
                   help="print the whole report (every key) instead of the counts")

    p = add("retention", cmd_retention,
            "delete every object version older than its prefix's retention period "
            "(retention.days), set the bucket lifecycle rules where the store takes them, and "
            "write the ledger entry ledger/retention/<run>.json")
    p.add_argument("--dry-run", action="store_true", help="list what would expire; delete nothing")
    p.add_argument("--now", default=None, metavar="ISO",
                   help="evaluate the periods at this time instead of now (e.g. 2027-01-01T00:00Z)")
    p.add_argument("--full", action="store_true", help="print every expired key")

    p = add("serve", cmd_serve,
            "serve a model with the KServe predictor on ONE port: Open Inference Protocol v2 "
            "(turn-based: user audio in, reply audio + text out), the full-duplex WebSocket "
            "stream (/v2/models/<name>/stream, 80 ms frames, batched LMGen; consented "
            "conversations logged to raw/), health, readiness and Prometheus /metrics; "
            "SIGTERM drains open streams (serving/README.md)")
    p.add_argument("model", nargs="?", default=None,
                   help="'champion' (default: serving.model_source), models:/NAME/V, a folder "
                        "or s3://")
    p.add_argument("--port", type=int, default=None,
                   help="port on serving.host (default serving.port; 0 = any free port)")
    p.add_argument("--model-version", default=None,
                   help="the version tag metrics and logs carry (default: from the source)")

    p = add("evaluate", cmd_evaluate,
            "the challenger against the champion on the same items (spoken QA, safety, "
            "interruption, silence, replay length), each served by the predictor; then the "
            "promotion gate (paired bootstrap intervals, gate.*): the decision record goes to "
            "S3 and MLflow, the comparison to MLflow side by side (docs/evaluate.md)")
    p.add_argument("--champion", default="champion",
                   help="alias, models:/NAME/V, folder or s3:// (default: champion)")
    p.add_argument("--challenger", default="challenger",
                   help="alias, models:/NAME/V, folder or s3:// (default: challenger)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 unless the verdict is promote")

    p = add("deploy", cmd_deploy,
            "roll the served model out through KServe's canary (Serverless mode): --init, "
            "--canary N, --promote, --rollback, --status; GitOps by default (commit-ready "
            "manifest changes, never applied), direct mode through the Kubernetes API")
    from components.deploy.cli import add_arguments as add_deploy_arguments

    add_deploy_arguments(p)

    p = add("bench", cmd_bench, "benchmarks that print their figures against a named baseline")
    p.add_argument("which", choices=["transcribe", "ingest", "judge", "resynthesize", "tokenize",
                                     "train", "serve", "alignment"])
    p.add_argument("--conversations", type=int, default=None,
                   help="transcribe: conversations to time (default 6); judge: on-policy "
                        "conversations to judge (default 24); resynthesize: conversations "
                        "(default 6); tokenize: pairs (default 12); alignment: on-policy "
                        "conversations of the dataset (default bench_alignment.conversations)")
    p.add_argument("--sizes", default="1000,10000",
                   help="ingest: corpus sizes to measure (comma separated)")
    p.add_argument("--repeats", type=int, default=None,
                   help="transcribe: timed runs per path, best reported (default 3); "
                        "tokenize: timed runs (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="train: tiny models and one timed step (a smoke run of seconds)")
    p.add_argument("--model-source", default=None,
                   help="serve: the model (default: a random model of model.size, no services)")
    p.add_argument("--streams", type=lambda v: [int(x) for x in v.split(",")], default=None,
                   help="serve: concurrent stream levels (comma separated, default 1,2,4,8,16)")
    p.add_argument("--frames", type=int, default=None,
                   help="serve: frames timed per stream level")
    p.add_argument("--turns", type=int, default=None, help="serve: OIP turns timed at batch 1")
    from pipelines.bench.alignment.grid import ROW_BY_NAME  # config only: cheap to import

    p.add_argument("--budget-minutes", type=float, default=None,
                   help="alignment: no cell starts that would end past this many minutes; the "
                        "next run resumes the rest (default bench_alignment.budget_minutes)")
    p.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=None,
                   help="alignment: seeds of the champion, DPO and DPO-LN rows (comma separated; "
                        "the other rows run the first)")
    p.add_argument("--world-seed", type=int, default=None,
                   help="alignment: the simulated users' seed of the dataset (one dataset each)")
    p.add_argument("--rows", type=lambda v: v.split(","), default=None,
                   help="alignment: only these rows (comma separated: "
                        f"{', '.join(ROW_BY_NAME)})")
    p.add_argument("--report-only", action="store_true",
                   help="alignment: run no new cell; the report of the cells finished so far")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:  # every command validates the configuration first, so a typo fails fast and clearly
        args.base_config = load_config(args.profile, args.config, args.set)
    except (ValidationError, ValueError, OSError) as exc:
        print(f"duplexalign: configuration error: {exc}", file=sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
