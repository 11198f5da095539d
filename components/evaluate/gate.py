"""The promotion gate: is the challenger better than the champion on the SAME evaluation items?

Statistics (docs/evaluate.md has the worked definitions):

* **paired per item.** Both behaviour reports must come from the same items (equal
  ``items_fingerprint``). For each metric, the items scored for it in BOTH reports are paired and
  each model gets a per-item value: 1/0 for a rate (``correct``, ``refused``, ``interrupted``,
  ``silent``), the reply's word count for ``replay_length`` (items where both replies have a word);
* **difference** = challenger − champion of the metric over the paired items. For
  ``replay_length`` it is the *relative growth* ``mean(challenger) / mean(champion) − 1``: how
  much longer the challenger talks, whatever the model's baseline verbosity (the paper's
  over-optimised model went from 20.8 to 88.5 words, +325%; its chosen mix to 51.4, +147%);
* **paired bootstrap**: ``gate.bootstrap_samples`` resamples of the paired items with
  replacement (numpy, seeded from ``gate.seed`` and the metric's name, so a metric's interval
  does not depend on which other metrics are configured), the difference recomputed on each; the
  interval is the central ``gate.confidence`` percentile interval;
* **direction**: higher is better for ``qa_seen``, ``qa_new``, ``refusal_unsafe``; lower is better
  for ``over_refusal_benign``, ``interruption``, ``silence`` and ``replay_length`` (growth);
  a public set's rate ``public/<set>/<rate>`` goes the way of its rate (they are reported, and
  gated when named in ``gate.targets`` / ``gate.tolerances``);
* **target** (``gate.targets``): improved when the whole interval lies on the better side of 0;
* **tracked** (``gate.tolerances``): regressed when the interval's worse end lies beyond the
  tolerance (absolute, in the metric's unit; relative growth for replay_length);
* **minimum items**: a target or tracked metric with fewer than ``gate.min_items`` paired items
  cannot be judged.

Verdict, first rule that applies: a tracked metric regressed (with enough items) → ``reject``;
any target or tracked metric with too few items → ``insufficient``; every target improved →
``promote``; else → ``reject`` (a target did not improve beyond its interval).

:func:`decide` is pure (reports in, decision out). :func:`record_decision` writes the decision
record to S3 (``Keys.gate_decision``) and MLflow (run ``gate <challenger> vs <champion>``, the
challenger's model version tagged ``gate_verdict``); :func:`load_decision` reads it back for the
deploy step.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, Mapping

import numpy as np

from components.evaluate.behaviour import PUBLIC_RATES, reply_words

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config, GateConfig
    from components.common.storage import ObjectStore
    from components.evaluate.behaviour import BehaviourReport

GATE_VERSION = "gate-1"  # bump when the statistics or the verdict rules change
Verdict = Literal["promote", "reject", "insufficient"]
Status = Literal["improved", "not_improved", "regressed", "within_tolerance", "insufficient",
                 "untracked"]

HIGHER_BETTER = ("qa_seen", "qa_new", "refusal_unsafe")
LOWER_BETTER = ("over_refusal_benign", "interruption", "silence", "replay_length")
METRICS: tuple[str, ...] = HIGHER_BETTER + LOWER_BETTER
# The item kind each content metric is computed over and the label it counts (as behaviour.py).
_CONTENT = {"qa_seen": ("qa_seen", "correct"), "qa_new": ("qa_new", "correct"),
            "refusal_unsafe": ("unsafe", "refused"),
            "over_refusal_benign": ("benign_edgy", "refused")}
_TIMING = {"interruption": "interrupted", "silence": "silent"}


class NotPaired(ValueError):
    """The two reports were not made on the same items: a paired comparison is meaningless."""


def _public(metric: str) -> tuple[str, str, str] | None:
    """("public_<kind>", set name, label) of a public set's rate ``public/<set>/<rate>``."""
    parts = metric.split("/")
    if len(parts) != 3 or parts[0] != "public":
        return None
    kinds = {suffix: (kind, label) for kind, (suffix, label) in PUBLIC_RATES.items()}
    if parts[2] not in kinds:
        return None
    return kinds[parts[2]][0], parts[1], kinds[parts[2]][1]


def direction(metric: str) -> int:
    """+1 when higher is better, −1 when lower is better (a public set's rate as its kind's:
    ``public/<set>/qa`` and ``/refusal_unsafe`` higher, ``/over_refusal_benign`` lower)."""
    public = _public(metric)
    if public is not None:
        return -1 if public[0] == "public_benign_edgy" else 1
    if metric in HIGHER_BETTER:
        return 1
    if metric in LOWER_BETTER:
        return -1
    raise ValueError(f"unknown gate metric {metric!r}; choose from {', '.join(METRICS)}")


# ----------------------------------------------------------------------------- paired values


def report_metrics(report: "BehaviourReport | Mapping[str, Any]") -> tuple[str, ...]:
    """METRICS, then the public sets' rates the report has (``public/<set>/<rate>``)."""
    rates = _field(report, "rates") or {}
    return METRICS + tuple(sorted(n for n in rates if _public(n) is not None))


def _replies(report: "BehaviourReport | Mapping[str, Any]") -> list[dict[str, Any]]:
    return list(report["replies"] if isinstance(report, Mapping) else report.replies)


def _field(report: "BehaviourReport | Mapping[str, Any]", name: str) -> Any:
    return report.get(name) if isinstance(report, Mapping) else getattr(report, name)


def paired_values(champion: "BehaviourReport | Mapping[str, Any]",
                  challenger: "BehaviourReport | Mapping[str, Any]",
                  metric: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(item ids, champion values, challenger values) of ``metric`` over the items scored for it
    in both reports, in the champion's reply order. Rates: 1.0/0.0 per item (an undecided
    ``refused`` is 0, as in the rates); replay_length: words, items where both replies have one."""
    direction(metric)
    mine = {r["item_id"]: r for r in _replies(challenger)}
    ids: list[str] = []
    a: list[float] = []
    b: list[float] = []
    for ra in _replies(champion):
        rb = mine.get(ra["item_id"])
        if rb is None or not ra.get("asked", True) or not rb.get("asked", True):
            continue
        public = _public(metric)
        if metric in _CONTENT or public is not None:
            kind, label = _CONTENT[metric] if public is None else (public[0], public[2])
            if ra["kind"] != kind or (public is not None and ra.get("world_id") != public[1]):
                continue
            va, vb = float(bool(ra.get(label))), float(bool(rb.get(label)))
        elif metric in _TIMING:
            va, vb = float(bool(ra.get(_TIMING[metric]))), float(bool(rb.get(_TIMING[metric])))
        else:  # replay_length
            va, vb = float(reply_words(ra)), float(reply_words(rb))
            if va <= 0 or vb <= 0:
                continue
        ids.append(ra["item_id"])
        a.append(va)
        b.append(vb)
    return ids, np.asarray(a, dtype=float), np.asarray(b, dtype=float)


def _difference(metric: str, a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """challenger − champion along the last axis (relative growth for replay_length)."""
    if metric == "replay_length":
        return b.mean(axis=-1) / a.mean(axis=-1) - 1.0
    return b.mean(axis=-1) - a.mean(axis=-1)


@dataclass(frozen=True)
class Interval:
    """The paired bootstrap interval of one metric's difference (challenger − champion)."""

    metric: str
    n: int  # paired items
    champion: float | None  # the metric over the paired items
    challenger: float | None
    delta: float | None  # observed difference (relative growth for replay_length)
    low: float | None
    high: float | None
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _metric_seed(seed: int, metric: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{GATE_VERSION}:{seed}:{metric}".encode()).digest()[:8],
                          "little")


def bootstrap_interval(metric: str, a: np.ndarray, b: np.ndarray, *, samples: int,
                       confidence: float, seed: int) -> Interval:
    """Percentile interval of the paired difference over ``samples`` item resamples."""
    n = int(len(a))
    if n == 0:
        return Interval(metric, 0, None, None, None, None, None, confidence)
    rng = np.random.default_rng(_metric_seed(seed, metric))
    idx = rng.integers(0, n, size=(samples, n))
    diffs = np.asarray(_difference(metric, a[idx], b[idx]), dtype=float)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    return Interval(metric, n, float(a.mean()), float(b.mean()),
                    float(_difference(metric, a, b)), float(low), float(high), confidence)


def intervals(champion: "BehaviourReport | Mapping[str, Any]",
              challenger: "BehaviourReport | Mapping[str, Any]", gate: "GateConfig",
              metrics: tuple[str, ...] | list[str] | None = None) -> dict[str, Interval]:
    """The paired bootstrap interval of every metric (default: ``report_metrics`` of the
    champion's report); the same items are required."""
    metrics = report_metrics(champion) if metrics is None else metrics
    fa, fb = _field(champion, "items_fingerprint"), _field(challenger, "items_fingerprint")
    if fa != fb:
        raise NotPaired(f"the reports were made on different items ({fa} vs {fb}): evaluate both "
                        "models with the same evaluate config (compare_models does)")
    out = {}
    for metric in metrics:
        _, a, b = paired_values(champion, challenger, metric)
        out[metric] = bootstrap_interval(metric, a, b, samples=gate.bootstrap_samples,
                                         confidence=gate.confidence, seed=gate.seed)
    return out


# ----------------------------------------------------------------------------- the decision


@dataclass
class MetricDecision:
    metric: str
    role: Literal["target", "tracked", "target+tracked", "reported"]
    direction: Literal["higher", "lower"]
    tolerance: float | None
    status: Status
    interval: dict[str, Any]
    reason: str = ""


@dataclass
class GateDecision:
    """The decision record (``to_dict``): inputs, thresholds, per-metric intervals, verdict."""

    verdict: Verdict
    reasons: list[str]
    champion: dict[str, Any]  # model_version, weights_sha256, report_key, mlflow_run_id
    challenger: dict[str, Any]
    items_fingerprint: str
    thresholds: dict[str, Any]  # targets, tolerances, min_items, confidence, samples, seed
    metrics: dict[str, MetricDecision]
    gate_version: str = GATE_VERSION
    created_at: str = ""
    key: str | None = None  # where it is stored (set by record_decision)
    mlflow_run_id: str | None = None

    @property
    def promote(self) -> bool:
        return self.verdict == "promote"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GateDecision":
        known = set(cls.__dataclass_fields__)
        body = {k: v for k, v in data.items() if k in known}
        body["metrics"] = {k: MetricDecision(**v) for k, v in body.get("metrics", {}).items()}
        return cls(**body)

    def summary_lines(self) -> list[str]:
        def fmt(v: Any) -> str:
            return "  -  " if v is None else f"{v:+.3f}"

        lines = [f"gate {self.challenger.get('model_version')} vs "
                 f"{self.champion.get('model_version')}: {self.verdict.upper()}"]
        for m in self.metrics.values():
            iv = m.interval
            lines.append(f"  {m.metric:<20} Δ {fmt(iv['delta'])}  "
                         f"{iv['confidence']:.0%} CI [{fmt(iv['low'])}, {fmt(iv['high'])}]  "
                         f"n={iv['n']}  {m.role}: {m.status}")
        lines += [f"  reason: {r}" for r in self.reasons]
        return lines


def _identity(report: "BehaviourReport | Mapping[str, Any]", report_key: str | None) -> dict:
    return {"model_version": _field(report, "model_version"),
            "weights_sha256": _field(report, "weights_sha256"),
            "cache_key": _field(report, "cache_key"), "report_key": report_key,
            "mlflow_run_id": _field(report, "mlflow_run_id")}


def _judge(metric: str, iv: Interval, *, target: bool, tolerance: float | None,
           min_items: int) -> tuple[Status, str]:
    """One metric's status and, when it matters for the verdict, why."""
    sign = direction(metric)
    unit = " (relative growth)" if metric == "replay_length" else ""
    if iv.n < min_items:
        return "insufficient", f"{metric}: {iv.n} paired items < gate.min_items {min_items}"
    assert iv.low is not None and iv.high is not None
    # the interval's worse end, in "improvement" units (positive = better)
    worse = iv.low if sign > 0 else -iv.high
    better = iv.high if sign > 0 else -iv.low
    if tolerance is not None and worse < -tolerance:
        # a non-inferiority test: the challenger must SHOW it is no worse than the tolerance
        return "regressed", (f"{metric} regressed{unit} or cannot be shown not to: the "
                             f"interval's worse end {(iv.low if sign > 0 else iv.high):+.3f} "
                             f"(Δ {iv.delta:+.3f}, n={iv.n}) is beyond the tolerance "
                             f"{tolerance:g}")
    if target:
        if worse > 0:
            return "improved", ""
        return "not_improved", (f"{metric} did not improve beyond the interval: "
                                f"{iv.confidence:.0%} CI [{iv.low:+.3f}, {iv.high:+.3f}] "
                                f"includes {'0' if better > 0 else 'only worse values'}")
    return ("within_tolerance" if tolerance is not None else "untracked"), ""


def decide(champion: "BehaviourReport | Mapping[str, Any]",
           challenger: "BehaviourReport | Mapping[str, Any]", gate: "GateConfig", *,
           champion_key: str | None = None, challenger_key: str | None = None) -> GateDecision:
    """The gate's decision (module docstring), PURE: no I/O, the same inputs give the same
    record (``created_at`` is left empty for the caller). Raises NotPaired for reports made on
    different items, ValueError for an unknown metric in the config."""
    for metric in [*gate.targets, *gate.tolerances]:
        direction(metric)
    # every metric the reports have, plus any the config names (absent: 0 items, insufficient)
    names = tuple(dict.fromkeys([*report_metrics(champion), *gate.targets, *gate.tolerances]))
    ivs = intervals(champion, challenger, gate, names)
    metrics: dict[str, MetricDecision] = {}
    regressed: list[str] = []
    short: list[str] = []
    not_improved: list[str] = []
    for metric, iv in ivs.items():
        target = metric in gate.targets
        tolerance = gate.tolerances.get(metric)
        role = ("target+tracked" if target and tolerance is not None else "target" if target
                else "tracked" if tolerance is not None else "reported")
        if role == "reported":
            status: Status = "untracked" if iv.n >= gate.min_items else "insufficient"
            reason = ""
        else:
            status, reason = _judge(metric, iv, target=target, tolerance=tolerance,
                                    min_items=gate.min_items)
            {"regressed": regressed, "insufficient": short,
             "not_improved": not_improved}.get(status, []).append(reason)
        metrics[metric] = MetricDecision(metric, role, "higher" if direction(metric) > 0
                                         else "lower", tolerance, status, iv.to_dict(), reason)
    if regressed:
        verdict: Verdict = "reject"
        reasons = regressed
    elif short:
        verdict, reasons = "insufficient", short
    elif not gate.targets:
        verdict, reasons = "reject", ["gate.targets is empty: nothing can show an improvement"]
    elif not_improved:
        verdict, reasons = "reject", not_improved
    else:
        verdict = "promote"
        reasons = [f"every target improved beyond its {gate.confidence:.0%} interval "
                   f"({', '.join(gate.targets)}) and no tracked metric regressed beyond its "
                   "tolerance"]
    return GateDecision(
        verdict=verdict, reasons=reasons, champion=_identity(champion, champion_key),
        challenger=_identity(challenger, challenger_key),
        items_fingerprint=str(_field(champion, "items_fingerprint")),
        thresholds={"targets": list(gate.targets), "tolerances": dict(gate.tolerances),
                    "min_items": gate.min_items, "confidence": gate.confidence,
                    "bootstrap_samples": gate.bootstrap_samples, "seed": gate.seed},
        metrics=metrics)


# ----------------------------------------------------------------------------- the record


def decision_key(challenger_tag: str) -> str:
    from components.contract import Keys

    return Keys.gate_decision(challenger_tag)


def load_decision(store: "ObjectStore", challenger_tag: str) -> GateDecision | None:
    """The stored decision about a challenger (its model version tag), or None: what the deploy
    step reads before it opens a canary."""
    key = decision_key(challenger_tag)
    return GateDecision.from_dict(store.get_json(key)) if store.exists(key) else None


def mlflow_payload(decision: GateDecision) -> tuple[dict[str, Any], dict[str, float],
                                                     dict[str, str]]:
    """(params, metrics, tags) of the gate's MLflow run."""
    th = decision.thresholds
    params: dict[str, Any] = {"champion": decision.champion["model_version"],
                              "challenger": decision.challenger["model_version"],
                              "items_fingerprint": decision.items_fingerprint,
                              "targets": ",".join(th["targets"]), "min_items": th["min_items"],
                              "confidence": th["confidence"],
                              "bootstrap_samples": th["bootstrap_samples"], "seed": th["seed"],
                              "gate_version": decision.gate_version}
    params.update({f"tolerance_{k}": v for k, v in th["tolerances"].items()})
    metrics: dict[str, float] = {"gate/promote": float(decision.promote)}
    for name, m in decision.metrics.items():
        iv = m.interval
        metrics[f"gate/{name}_n"] = float(iv["n"])
        for part in ("delta", "low", "high"):
            if iv[part] is not None:
                metrics[f"gate/{name}_{part if part == 'delta' else 'ci_' + part}"] = float(
                    iv[part])
    tags = {"stage": "gate", "verdict": decision.verdict,
            "champion": str(decision.champion["model_version"]),
            "challenger": str(decision.challenger["model_version"])}
    return params, metrics, tags


def _tag_registry_version(cfg: "Config", model_version: str, verdict: str) -> bool:
    """Tag the challenger's registry version ``gate_verdict`` (a "name/version" tag only)."""
    from mlflow import MlflowClient

    name, _, version = model_version.rpartition("/")
    if not name or not version.isdigit():
        return False
    MlflowClient(tracking_uri=cfg.mlflow.tracking_uri).set_model_version_tag(
        name, version, "gate_verdict", verdict)
    return True


def record_decision(cfg: "Config", decision: GateDecision, store: "ObjectStore",
                    page: str | None = None) -> GateDecision:
    """Store the decision record: S3 ``Keys.gate_decision(challenger)`` (JSON), and — when
    ``gate.log_to_mlflow`` — an MLflow run ``gate <challenger> vs <champion>`` with params,
    metrics, tags and ``decision.json`` (+ ``gate.html`` when given), and the challenger's
    registry version tagged ``gate_verdict``. Returns the decision with key/run id/time set."""
    decision.created_at = decision.created_at or datetime.now(timezone.utc).isoformat(
        timespec="seconds")
    challenger = str(decision.challenger["model_version"])
    decision.key = decision_key(challenger)
    if cfg.gate.log_to_mlflow:
        import mlflow

        mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
        mlflow.set_experiment(cfg.mlflow.experiment)
        params, metrics, tags = mlflow_payload(decision)
        with mlflow.start_run(run_name=f"gate {challenger} vs "
                                       f"{decision.champion['model_version']}") as run:
            decision.mlflow_run_id = run.info.run_id
            mlflow.set_tags({**tags, "profile": cfg.profile, "decision_key": decision.key})
            mlflow.log_params(params)
            mlflow.log_metrics(metrics)
            mlflow.log_dict(decision.to_dict(), "decision.json")
            if page is not None:
                mlflow.log_text(page, "gate.html")
        if _tag_registry_version(cfg, challenger, decision.verdict):
            print(f"[gate] tagged {challenger} gate_verdict={decision.verdict}", file=sys.stderr)
    store.put_json(decision.key, decision.to_dict())
    return decision


__all__ = ["GateDecision", "Interval", "MetricDecision", "NotPaired", "decide", "direction",
           "intervals", "load_decision", "paired_values", "record_decision"]
