"""The evaluate stage: champion vs challenger on the same items, then the promotion gate.

``evaluate_and_gate`` is what the CLI and the demo call with two model sources;
``evaluate_challenger`` is the pipeline's task: the challenger is the version the train manifest
registered (its stats' ``challenger_version``), the champion the registry's current ``champion``
alias. A train task that trained nothing (too few pairs) registered no challenger: the outcome is
the verdict ``"no challenger"``, not a failure.
"""

from __future__ import annotations

import html
import json
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config
    from components.evaluate.compare import Comparison
    from components.evaluate.gate import GateDecision

NO_CHALLENGER = "no challenger"


@dataclass
class EvaluationOutcome:
    """What the evaluate stage hands on (``to_json`` is the KFP task's output string)."""

    verdict: str  # "promote" | "reject" | "insufficient" | "no challenger"
    champion: str | None  # model version tags
    challenger: str | None
    decision_key: str | None  # S3 key of the gate's decision record (load_decision reads it)
    comparison_key: str | None  # S3 key of comparison.json
    comparison_run_id: str | None
    gate_run_id: str | None
    reasons: list[str]
    train_manifest_id: str | None = None
    # On "promote": the GitOps step that takes the challenger to users, with the run's canary
    # share (deploy.canary_percent) — a human runs it and merges the change (docs/deploy.md).
    next_step: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _same_inputs(stored: "GateDecision", fresh: "GateDecision") -> bool:
    """The stored decision was made on the same two reports (their cache keys: weights, items,
    config, code) with the same gate settings: a rerun reuses it."""
    return (stored.thresholds == fresh.thresholds
            and stored.items_fingerprint == fresh.items_fingerprint
            and all(stored_side.get("cache_key") == fresh_side.get("cache_key")
                    and stored_side.get("model_version") == fresh_side.get("model_version")
                    for stored_side, fresh_side in ((stored.champion, fresh.champion),
                                                    (stored.challenger, fresh.challenger))))


def evaluate_and_gate(cfg: "Config", champion: str = "champion", challenger: str = "challenger",
                      progress: bool = True) -> tuple["Comparison", "GateDecision", str]:
    """Compare (components/evaluate/compare.py), decide (gate.py) and record the decision in S3
    and MLflow; returns (comparison, decision, the combined HTML page).

    Idempotent: both reports are cached per model, and when the decision already recorded for
    the challenger was made on the same reports with the same gate settings it is returned as
    is — no second comparison or gate run in MLflow (a pipeline rerun after a crash)."""
    from components.common.storage import ObjectStore
    from components.evaluate.compare import (
        compare_models,
        log_to_mlflow,
        plot_png,
        render_html,
        store_comparison,
    )
    from components.evaluate.gate import decide, load_decision, record_decision

    comparison = compare_models(cfg, champion, challenger, progress=progress, publish=False)
    decision = decide(comparison.champion, comparison.challenger, cfg.gate,
                      champion_key=_report_key(comparison.champion.model_version),
                      challenger_key=_report_key(comparison.challenger.model_version))
    store = ObjectStore.from_config(cfg.storage)
    png = plot_png(comparison)
    stored = load_decision(store, comparison.challenger.model_version)
    if stored is not None and stored.key and _same_inputs(stored, decision):
        comparison.keys = dict(stored.challenger.get("comparison_keys") or {})
        comparison.mlflow_run_id = stored.challenger.get("comparison_run_id")
        page = render_html(comparison, stored, png=png)
        if progress:
            print(f"[gate] {comparison.challenger.model_version}: the recorded decision "
                  f"({stored.verdict}) was made on these reports; reused", file=sys.stderr)
        return comparison, stored, page
    comparison.mlflow_run_id = log_to_mlflow(cfg, comparison, render_html(comparison, png=png),
                                             png)
    store_comparison(store, comparison, render_html(comparison, png=png))
    for side in (decision.champion, decision.challenger):
        side["comparison_key"] = comparison.keys.get("json")
    decision.challenger["comparison_keys"] = dict(comparison.keys)
    decision.challenger["comparison_run_id"] = comparison.mlflow_run_id
    page = render_html(comparison, decision, png=png)
    record_decision(cfg, decision, store, page=page)
    if progress:
        print("\n".join(decision.summary_lines()), file=sys.stderr, flush=True)
    return comparison, decision, page


def _report_key(tag: str) -> str:
    from components.evaluate.publish import report_key

    return report_key(tag)


def challenger_of(cfg: "Config", train_manifest_id: str) -> str | None:
    """The ``models:/<name>/<version>`` the train manifest registered, or None (it skipped).
    The exact version, not the ``challenger`` alias: a later run may have moved the alias."""
    from components.common.stagekit import load_manifest
    from components.common.storage import ObjectStore

    stats = load_manifest(ObjectStore.from_config(cfg.storage), train_manifest_id).stats
    version = stats.get("challenger_version")
    if not version or version == "-":
        return None
    return f"models:/{cfg.model.registered_name}/{version}"


STAGE = "evaluate"


def evaluate_challenger(cfg: "Config", train_manifest_id: str,
                        progress: bool = True) -> tuple[EvaluationOutcome, str, str]:
    """The pipeline's evaluate task: (outcome, HTML page, evaluate manifest id).

    The evaluate manifest (input: the train manifest, so ``manifest_chain`` walks evaluate →
    train → … → raw) has one item, the outcome, and the outcome as its stats; an identical rerun
    gives the same manifest (the decision is reused, see :func:`evaluate_and_gate`)."""
    import time

    from components.common.stagekit import ManifestWriter
    from components.common.storage import ObjectStore

    t0 = time.monotonic()
    challenger = challenger_of(cfg, train_manifest_id)
    if challenger is None:
        page = ("<!doctype html><p>No challenger to evaluate: the train task "
                f"{html.escape(train_manifest_id)} registered none (it skipped training).</p>")
        outcome = EvaluationOutcome(NO_CHALLENGER, None, None, None, None, None, None,
                                    ["the train task registered no challenger"],
                                    train_manifest_id)
    else:
        comparison, decision, page = evaluate_and_gate(cfg, "champion", challenger, progress)
        outcome = EvaluationOutcome(
            verdict=decision.verdict, champion=comparison.champion.model_version,
            challenger=comparison.challenger.model_version, decision_key=decision.key,
            comparison_key=comparison.keys.get("json"),
            comparison_run_id=comparison.mlflow_run_id, gate_run_id=decision.mlflow_run_id,
            reasons=list(decision.reasons), train_manifest_id=train_manifest_id,
            next_step=(f"duplexalign deploy --canary {cfg.deploy.canary_percent} "
                       f"--source models:/{comparison.challenger.model_version}"
                       if decision.verdict == "promote" else None))
    store = ObjectStore.from_config(cfg.storage)
    writer = ManifestWriter(store, STAGE, train_manifest_id)
    writer.add_item(outcome.to_dict())
    manifest = writer.close({**outcome.to_dict(), "seconds": round(time.monotonic() - t0, 1)})
    return outcome, page, manifest.manifest_id
