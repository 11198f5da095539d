"""``duplexalign deploy`` arguments and runner (the top-level CLI wires them in)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config

DESCRIPTION = """\
Roll the served model out through KServe's canary, one step per call:
  --init          serve the champion (first manifest)
  --canary [N]    the challenger's s3:// URI at N% (default deploy.canary_percent); needs the
                  gate's "promote" verdict, whose record is attached next to the manifest
  --promote       remove canaryTrafficPercent: the canary revision takes 100%
  --rollback      1st call: canary to 0% (instant); 2nd call: restore the champion's URI
  --status        rollout health; moves the MLflow aliases only once healthy; with
                  --metrics-url during a canary: promote/rollback/wait recommendation
GitOps mode (default) writes commit-ready files into deploy.gitops_repo (--commit: a commit on a
new branch; a human merges = approves) and never applies. Direct mode (--set deploy.mode=direct)
applies through the Kubernetes API with --apply and a kubeconfig."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the deploy options to ``parser`` (a subcommand parser)."""
    steps = parser.add_mutually_exclusive_group(required=True)
    steps.add_argument("--init", action="store_true", help="first manifest: the champion")
    steps.add_argument("--canary", type=int, nargs="?", const=-1, metavar="N",
                       help="canary the challenger at N%% of traffic")
    steps.add_argument("--promote", action="store_true", help="promote the canary to 100%%")
    steps.add_argument("--rollback", action="store_true", help="roll the canary back")
    steps.add_argument("--status", action="store_true",
                       help="rollout health; alias moves once healthy; canary recommendation")
    parser.add_argument("--source", metavar="MODEL",
                        help="model for --init/--canary: alias, models:/ URI or s3:// folder "
                             "(default: serving.model_source / train.alias)")
    parser.add_argument("--commit", action="store_true",
                        help="GitOps: also commit the change on a new branch")
    parser.add_argument("--apply", action="store_true",
                        help="direct mode: apply through the Kubernetes API")
    parser.add_argument("--status-file", metavar="FILE",
                        help="GitOps --status: saved `kubectl get isvc NAME -o json`")
    parser.add_argument("--metrics-url", action="append", default=[], metavar="URL",
                        help="--status: a revision's /metrics (repeatable)")
    parser.add_argument("--force", action="store_true",
                        help="canary/promote without a 'promote' gate verdict (recorded)")
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def step_of(args: argparse.Namespace) -> tuple[str, int | None]:
    if args.canary is not None:
        return "canary", None if args.canary < 0 else args.canary
    for step in ("init", "promote", "rollback", "status"):
        if getattr(args, step):
            return step, None
    raise ValueError("no step given")


def run_cli(cfg: "Config", args: argparse.Namespace) -> int:
    """Run one step; the diff and commit message go to stderr, the result JSON to stdout.
    Exit codes: 0 done (status: healthy), 1 refused or failed, 3 status not healthy."""
    from components.deploy.inferenceservice import StepRefused
    from components.deploy.logic import DeployRefused, deploy

    step, percent = step_of(args)
    try:
        result = deploy(cfg, step, percent, commit=args.commit, apply=args.apply,
                        status_file=args.status_file, source=args.source, force=args.force,
                        metrics_urls=args.metrics_url)
    except (StepRefused, DeployRefused, ValueError, FileNotFoundError) as exc:
        print(f"deploy {step}: {exc}", file=sys.stderr)
        return 1
    if result.change:
        print(result.change["diff"] or "(no change to the manifest)", file=sys.stderr)
        print(result.change["message"], file=sys.stderr)
    out = result.to_dict()
    if out.get("change"):
        out["change"] = {k: v for k, v in out["change"].items() if k != "diff"}
    print(json.dumps(out, default=str))
    if step == "status" and result.finalize and not result.finalize["health"]["healthy"]:
        return 3
    return 0
