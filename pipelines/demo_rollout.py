"""The demo's last act: what the evaluate task measured (champion and challenger, each served by
the predictor on loopback, on the same items), the gate's decision, and the canary change that
would take the challenger to users through Git.

GitOps on one machine: ``<state_dir>/gitops`` is a Git checkout standing in for the operator's
GitOps repository. Its main branch holds the InferenceService serving the champion (the state
Argo CD would have synced). When the gate says promote, the canary change is written into the
checkout, commit-ready, for a human to review and merge — nothing is applied. When it does not,
no change is proposed; the canary that WOULD be proposed is rendered as a preview outside the
checkout (``<state_dir>/deploy-preview``), marked forced, so the manifest can still be read.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from components.common.config import Config


def evaluation_figures(cfg: Config, evaluation: dict[str, Any] | None) -> dict[str, Any]:
    """``eval`` (figures per model), ``baseline`` (the champion's), ``aligned`` (the
    challenger's) and ``gate`` (verdict, reasons, per-metric Δ with its interval), read from the
    reports and the decision record the evaluate task stored (every report is cached: nothing is
    served again here unless the task did not run, e.g. training skipped)."""
    from components.common.storage import ObjectStore
    from components.evaluate.behaviour import evaluate_model
    from components.evaluate.gate import load_decision

    evaluation = evaluation or {}
    champion = evaluate_model(cfg, "champion")
    out: dict[str, Any] = {"eval": {"champion": champion.figures()},
                           "baseline": champion.figures(), "aligned": None, "gate": None}
    challenger_tag = evaluation.get("challenger")
    if not challenger_tag:
        out["gate"] = {"verdict": evaluation.get("verdict", "no challenger"),
                       "reasons": evaluation.get("reasons", [])}
        return out
    name, version = challenger_tag.rsplit("/", 1)
    challenger = evaluate_model(cfg, f"models:/{name}/{version}")
    out["eval"]["challenger"] = out["aligned"] = challenger.figures()
    decision = load_decision(ObjectStore.from_config(cfg.storage), challenger_tag)
    if decision is not None:
        out["gate"] = {
            "verdict": decision.verdict, "reasons": decision.reasons,
            "champion": decision.champion.get("model_version"),
            "challenger": decision.challenger.get("model_version"),
            "decision": f"s3://{cfg.storage.bucket}/{decision.key}",
            "mlflow_run_id": decision.mlflow_run_id,
            "metrics": {m: {"delta": d.interval.get("delta"),
                            "ci": [d.interval.get("low"), d.interval.get("high")],
                            "n": d.interval.get("n"), "status": d.status, "role": d.role}
                        for m, d in decision.metrics.items()}}
    return out


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def gitops_checkout(cfg: Config) -> Path:
    """``<state_dir>/gitops``: a Git repository whose main branch serves the champion."""
    from components.deploy.logic import deploy

    repo = Path(cfg.services.state_dir).absolute() / "gitops"
    local = cfg.model_copy(deep=True)
    local.deploy = local.deploy.model_copy(update={"gitops_repo": str(repo)})
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "-b", "main")
        _git(repo, "config", "user.name", "duplexalign demo")
        _git(repo, "config", "user.email", "demo@duplexalign.invalid")
    manifest = repo / local.deploy.manifest_path
    if not manifest.is_file():  # the champion as Argo CD would have synced it
        deploy(local, "init", source="champion")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", "serve the champion")
    return repo


def render_canary(cfg: Config, gate: dict[str, Any] | None) -> dict[str, Any]:
    """The canary step for the challenger (``duplexalign deploy --canary``, GitOps mode)."""
    from components.deploy.logic import deploy

    verdict = (gate or {}).get("verdict")
    challenger = (gate or {}).get("challenger")
    if not challenger:
        return {"manifest": None, "proposed": False,
                "reason": f"no challenger to canary ({verdict or 'no evaluation'})"}
    name, version = challenger.rsplit("/", 1)
    source = f"models:/{name}/{version}"
    repo = gitops_checkout(cfg)
    local = cfg.model_copy(deep=True)
    if verdict == "promote":
        local.deploy = local.deploy.model_copy(update={"gitops_repo": str(repo)})
        result = deploy(local, "canary", source=source)
        return {"manifest": result.manifest_path, "proposed": True, "repo": str(repo),
                "percent": cfg.deploy.canary_percent,
                "message": (result.change or {}).get("message", "").splitlines()[:1],
                "files": result.written}
    # not promoted: render what the canary would be, outside the checkout, marked forced
    preview = Path(cfg.services.state_dir).absolute() / "deploy-preview"
    preview.mkdir(parents=True, exist_ok=True)
    current = repo / cfg.deploy.manifest_path
    target = preview / cfg.deploy.manifest_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(current.read_text())
    local.deploy = local.deploy.model_copy(update={"gitops_repo": str(preview)})
    result = deploy(local, "canary", source=source, force=True)
    return {"manifest": result.manifest_path, "proposed": False, "preview": True,
            "reason": f"the gate said {verdict}: no canary is proposed; this preview shows the "
                      "change a promote verdict would have proposed"}
