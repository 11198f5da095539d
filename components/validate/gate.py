"""The gate itself: the suites run over in-memory tables (no services), one result per expectation.

`run_gate(tables, cfg)` validates every table it is given (a crafted bad batch may hold one
table only) with Great Expectations: an ephemeral context, a pandas datasource with one dataframe
asset per table, the table's suite from suites.py. The outcome names every failed expectation
with its table, severity and observed counts — never a row value.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from components.validate.suites import (
    CHECKS,
    RESULT_FORMAT,
    TABLES,
    Limits,
    build_suites,
    derive,
)

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config

log = logging.getLogger("duplexalign.validate")
_CONTEXT: Any = None
_ASSETS: dict[str, Any] = {}
_LOCK = threading.Lock()
# Observed figures kept from a result: counts and aggregate values only (no row values).
_OBSERVED_KEYS = ("element_count", "unexpected_count", "unexpected_percent", "missing_count",
                  "observed_value")


@dataclass
class CheckResult:
    name: str
    table: str
    severity: str
    success: bool
    observed: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "table": self.table, "severity": self.severity,
                "success": self.success, "observed": self.observed}


@dataclass
class GateResult:
    checks: list[CheckResult]
    limits: Limits
    # table -> GX ExpectationSuiteValidationResult (rendered into the data docs)
    validations: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> list[str]:
        return [c.name for c in self.checks if c.success]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [{"name": c.name, "table": c.table, "severity": c.severity,
                 "observed": c.observed} for c in self.checks if not c.success]

    @property
    def critical_failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.success and c.severity == "critical"]

    @property
    def warnings_failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.success and c.severity == "warning"]

    @property
    def stopped(self) -> bool:
        """True when a critical expectation failed: nothing may train on this data."""
        return bool(self.critical_failed)


def _context() -> Any:
    """One ephemeral GX context per process (creating one costs seconds)."""
    global _CONTEXT
    with _LOCK:
        if _CONTEXT is None:
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            logging.getLogger("great_expectations").setLevel(logging.WARNING)
            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            _CONTEXT = context
        return _CONTEXT


def _batch_definition(table: str) -> Any:
    """The whole-dataframe batch definition of ``table``'s asset (created once per process)."""
    context = _context()
    with _LOCK:
        if table not in _ASSETS:
            if not _ASSETS:
                _ASSETS["__source__"] = context.data_sources.add_pandas("duplexalign")
            asset = _ASSETS["__source__"].add_dataframe_asset(table)
            _ASSETS[table] = asset.add_batch_definition_whole_dataframe(f"{table}-all")
        return _ASSETS[table]


def _clean(value: Any) -> Any:
    """JSON-friendly numbers; anything else is dropped (no row values leave the gate)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return round(float(value), 6) if isinstance(value, float) else int(value)
    if hasattr(value, "item"):  # numpy scalar
        return _clean(value.item())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value  # e.g. the observed column names of a schema expectation
    return str(type(value).__name__)


def _observed(result: Any) -> dict[str, Any]:
    body = dict(result.result or {})
    observed = {k: _clean(body[k]) for k in _OBSERVED_KEYS if k in body}
    mismatched = (body.get("details") or {}).get("mismatched")
    if isinstance(mismatched, dict):  # schema: which columns are missing / unexpected
        observed["mismatched"] = {k: [str(c) for c in v] for k, v in mismatched.items()}
    info = result.exception_info or {}
    messages = ([info.get("exception_message")] if "exception_message" in info else
                [v.get("exception_message") for v in info.values() if isinstance(v, dict)])
    messages = [m for m in messages if m]
    if messages:
        observed["error"] = str(messages[0])[:300]
    return observed


def run_gate(tables: dict[str, pd.DataFrame], cfg: "Config | None" = None, *,
             limits: Limits | None = None) -> GateResult:
    """Validate ``tables`` (name → DataFrame; names from suites.TABLES) with their suites.

    ``limits``: the bounds and vocabularies (default: from ``cfg``, whose
    validation.text_vocab_size / audio_cardinality must then be set). Severities come from the
    suites, overridden by ``cfg.validation.severity``."""
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown tables {unknown}; known: {list(TABLES)}")
    if limits is None:
        if cfg is None:
            raise ValueError("run_gate needs cfg or limits")
        v = cfg.validation
        if not (v.text_vocab_size and v.audio_cardinality):
            raise ValueError("run_gate without limits needs validation.text_vocab_size and "
                             "validation.audio_cardinality (validate_dataset resolves them)")
        limits = Limits.from_config(cfg, text_vocab=v.text_vocab_size,
                                    audio_card=v.audio_cardinality)
    overrides = dict(cfg.validation.severity) if cfg is not None else {}
    names = tuple(t for t in TABLES if t in tables)
    _context()  # suites need an active context
    suites = build_suites(limits, overrides, names)
    checks: list[CheckResult] = []
    validations: dict[str, Any] = {}
    rows: dict[str, int] = {}
    for table in names:
        frame = derive(table, tables[table], limits)
        rows[table] = len(frame)
        batch = _batch_definition(table).get_batch(batch_parameters={"dataframe": frame})
        validation = batch.validate(suites[table], result_format=RESULT_FORMAT)
        validations[table] = validation
        for result in validation.results:
            meta = result.expectation_config.meta or {}
            checks.append(CheckResult(name=meta["name"], table=table,
                                      severity=meta.get("severity", "critical"),
                                      success=bool(result.success),
                                      observed=_observed(result)))
    order = {c.name: i for i, c in enumerate(CHECKS)}
    checks.sort(key=lambda c: order.get(c.name, len(order)))
    return GateResult(checks=checks, limits=limits, validations=validations, rows=rows)
