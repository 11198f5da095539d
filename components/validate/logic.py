"""validate: the data quality gate between tokenize and the feature store / trainer.

Input: a tokenize manifest. Its chain (tokenize → resynthesize → pairs → judge → scrub) and
the pairs dataset it names are read into tables (tables.py), the suites (suites.py) run over
them with Great Expectations (gate.py), and the outcome is written BEFORE anything can stop:

1. the report — GX's data docs inlined into one page with our summary on top — at
   ``reports/validate/<manifest_id>/validation.html``;
2. the "validate" manifest (input = the tokenize manifest): one item per expectation
   ({name, table, severity, success}), stats {passed, failed, critical_failed, report,
   dataset_version, ...}; its id depends on the outcome, so an identical rerun gives the identical
   manifest (and rewrites nothing) while a changed outcome gets a new one;
3. an MLflow run "validate <dataset>" (tags dataset_version and the manifest ids, params the
   bounds, metrics passed / failed counts, the report as an artefact) when
   validation.log_to_mlflow; a rerun finds its run by the manifest id and logs nothing twice.

Then `ValidationOutcome.raise_for_critical()` raises ValidationFailed naming every failed
critical expectation — the pipeline stops before training.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from components.common.config import Config
from components.common.stagekit import ManifestWriter
from components.common.storage import ObjectStore
from components.contract import Keys
from components.validate.gate import GateResult, run_gate
from components.validate.report import render_report
from components.validate.suites import SUITES_VERSION, Limits
from components.validate.tables import ChainTables, build_tables

STAGE = "validate"
REPORT_NAME = "validation.html"


class ValidationFailed(RuntimeError):
    """Critical expectations failed: the data must not reach the trainer."""

    def __init__(self, outcome: "ValidationOutcome"):
        self.outcome = outcome
        super().__init__(
            f"data quality gate stopped dataset {outcome.dataset_version}: critical "
            f"expectations failed: {', '.join(outcome.critical_failed)} (report: "
            f"{outcome.report_key}, manifest {outcome.manifest_id})")


@dataclass
class ValidationOutcome:
    manifest_id: str
    dataset_version: str
    passed: list[str]
    failed: list[dict[str, Any]]  # {"name", "table", "severity", "observed"}
    critical_failed: list[str]
    report_key: str
    mlflow_run_id: str | None = None
    notes: list[str] = field(default_factory=list)
    html: str = field(default="", repr=False)

    @property
    def stopped(self) -> bool:
        return bool(self.critical_failed)

    def raise_for_critical(self) -> None:
        if self.critical_failed:
            raise ValidationFailed(self)

    def to_dict(self) -> dict[str, Any]:
        return {"manifest_id": self.manifest_id, "dataset_version": self.dataset_version,
                "passed": len(self.passed), "failed": self.failed,
                "critical_failed": self.critical_failed, "report": self.report_key,
                "mlflow_run_id": self.mlflow_run_id, "notes": self.notes}


# ----------------------------------------------------------------------------- inputs


def resolve_vocab(cfg: Config) -> tuple[int, int]:
    """(text vocabulary, codec cardinality) the dataset's ids must fit: the configured values,
    else the configured tokenizer's text_card and codec's cardinality."""
    text, audio = cfg.validation.text_vocab_size, cfg.validation.audio_cardinality
    if not text:
        from components.streams.tokenizer import load_tokenizer

        text = load_tokenizer(cfg).text_card
    if not audio:
        from components.streams.codec import load_codec

        audio = load_codec(cfg).card
    return int(text), int(audio)


def champion_identity(cfg: Config) -> tuple[str, str] | None:
    """(tokenizer hash, codec hash) the registry records for the model training starts from
    (train.policy_source), or None when it is not a registry model or none is registered."""
    if not cfg.validation.compare_champion:
        return None
    from components.model.registry import ModelNotRegistered, registry_ref

    try:
        ref = registry_ref(cfg, cfg.train.policy_source)
    except ModelNotRegistered:
        return None
    if ref is None or not ref.tags.get("tokenizer_hash"):
        return None
    return ref.tags["tokenizer_hash"], ref.tags.get("codec_hash", "")


# ----------------------------------------------------------------------------- the stage


def _writer(store: ObjectStore, tokenize_manifest_id: str, gate: GateResult) -> ManifestWriter:
    writer = ManifestWriter(store, STAGE, tokenize_manifest_id)
    for check in gate.checks:
        writer.add_item({"name": check.name, "table": check.table, "severity": check.severity,
                         "success": check.success})
    return writer


def validate_tables(cfg: Config, chain: ChainTables, *, limits: Limits | None = None,
                    store: ObjectStore | None = None, t0: float | None = None
                    ) -> ValidationOutcome:
    """Run the gate over ``chain``'s tables and write report, manifest and MLflow run (``t0``:
    when the stage started, for its seconds)."""
    t0 = time.monotonic() if t0 is None else t0
    store = store or ObjectStore.from_config(cfg.storage)
    if limits is None:
        text, audio = resolve_vocab(cfg)
        limits = Limits.from_config(cfg, text_vocab=text, audio_card=audio)
    gate = run_gate(chain.tables, cfg, limits=limits)
    writer = _writer(store, chain.tokenize_manifest_id, gate)
    manifest_id = writer.seal_id()
    report_key = Keys.report(STAGE, manifest_id, REPORT_NAME)
    facts = {"dataset version": chain.dataset_version,
             "tokenize manifest": chain.tokenize_manifest_id, "validate manifest": manifest_id,
             "suites": SUITES_VERSION, "text vocabulary": limits.text_vocab,
             "codec cardinality": limits.audio_card,
             "pair type bounds": limits.bounds(), **{f"note {i + 1}": n
                                                   for i, n in enumerate(chain.notes)}}
    page = render_report(gate, title=f"validate {chain.dataset_version}", facts=facts)
    store.put_bytes(report_key, page.encode(), content_type="text/html")
    stats = {"passed": gate.passed, "failed": gate.failed,
             "critical_failed": gate.critical_failed, "report": report_key,
             "dataset_version": chain.dataset_version, "suites_version": SUITES_VERSION,
             "rows": gate.rows, "notes": chain.notes,
             "limits": {"text_vocab": limits.text_vocab, "audio_card": limits.audio_card,
                        "pair_type_bounds": limits.bounds()},
             "seconds": round(time.monotonic() - t0, 2)}
    manifest = writer.close(stats)
    assert manifest.manifest_id == manifest_id, (manifest.manifest_id, manifest_id)
    outcome = ValidationOutcome(manifest_id=manifest_id, dataset_version=chain.dataset_version,
                                passed=gate.passed, failed=gate.failed,
                                critical_failed=gate.critical_failed, report_key=report_key,
                                notes=list(chain.notes), html=page)
    if cfg.validation.log_to_mlflow:
        outcome.mlflow_run_id = _log_to_mlflow(cfg, outcome, chain, limits, page)
    level = "STOPPED" if outcome.stopped else "passed"
    print(f"[{STAGE}] {chain.dataset_version}: {len(gate.passed)} passed, {len(gate.failed)} "
          f"failed ({len(gate.critical_failed)} critical) — {level}; report {report_key}",
          file=sys.stderr, flush=True)
    return outcome


def validate_dataset(cfg: Config, tokenize_manifest_id: str) -> ValidationOutcome:
    """The gate on the chain of ``tokenize_manifest_id``; report and manifest are written first.
    Call ``.raise_for_critical()`` on the outcome to stop on a critical failure."""
    t0 = time.monotonic()
    store = ObjectStore.from_config(cfg.storage)
    chain = build_tables(store, tokenize_manifest_id, champion=champion_identity(cfg))
    return validate_tables(cfg, chain, store=store, t0=t0)


def _log_to_mlflow(cfg: Config, outcome: ValidationOutcome, chain: ChainTables, limits: Limits,
                   page: str) -> str:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    experiment = mlflow.set_experiment(cfg.mlflow.experiment)
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    existing = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`manifest.validate` = '{outcome.manifest_id}'", max_results=1)
    if existing:  # an identical rerun: the run is already there
        return existing[0].info.run_id
    with mlflow.start_run(run_name=f"validate {chain.dataset_version}") as run:
        mlflow.set_tags({"profile": cfg.profile, "dataset_version": chain.dataset_version,
                         "manifest.tokenize": chain.tokenize_manifest_id,
                         "manifest.validate": outcome.manifest_id,
                         "suites_version": SUITES_VERSION,
                         "gate": "stopped" if outcome.stopped else "passed"})
        mlflow.log_params({"text_vocab": limits.text_vocab, "audio_card": limits.audio_card,
                           "min_duration_s": limits.min_duration_s,
                           "max_duration_s": limits.max_duration_s,
                           "max_word_s": limits.max_word_s,
                           "max_chosen_overlap_s": limits.max_chosen_overlap_s,
                           **{f"bounds.{t}": f"{lo}-{hi}" for t, lo, hi in
                              limits.pair_type_bounds},
                           **{f"severity.{k}": v for k, v in
                              sorted(cfg.validation.severity.items())}})
        warnings = [f for f in outcome.failed if f["severity"] == "warning"]
        mlflow.log_metrics({"passed": float(len(outcome.passed)),
                            "failed": float(len(outcome.failed)),
                            "critical_failed": float(len(outcome.critical_failed)),
                            "warnings_failed": float(len(warnings))})
        mlflow.log_dict(outcome.to_dict(), "validation.json")
        mlflow.log_text(page, "validation.html")
        return run.info.run_id
