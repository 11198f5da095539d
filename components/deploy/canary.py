"""Live canary figures vs the stable revision → promote / rollback / wait.

Sources, per serving model version (the ``model_version`` label H1's server puts on every series,
the same tag the logged conversations carry):

* Prometheus text from each revision's ``/metrics`` (or anything serving the same exposition):
  ``duplexalign_requests_total{model_version,endpoint,outcome}`` → requests and error rate;
  ``duplexalign_request_seconds`` (histogram) → p99 latency per endpoint, by Prometheus's own
  ``histogram_quantile`` interpolation over the cumulative buckets;
* the judge's verdicts in the bucket (``judgements/<conversation>/<judge>.json``, the contract's
  ConversationJudgement) grouped by the conversation's serving ``model_version``: only consented
  conversations get there (serving logs only consenting users, ingest re-checks consent, erasure
  deletes the judgements of a withdrawn user), so these are the consented canary conversations.

``recommend`` rolls back when the canary is worse than stable beyond ``deploy.*`` thresholds on
figures with enough data, waits while the canary has fewer than ``deploy.min_canary_conversations``
judged conversations or requests, and recommends promotion otherwise.
"""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config
    from components.common.storage import ObjectStore

REQUESTS = "duplexalign_requests_total"
LATENCY = "duplexalign_request_seconds"


@dataclass
class VersionFigures:
    """What one model version did in the canary window."""

    model_version: str
    requests: float = 0.0
    errors: float = 0.0
    latency_p99: dict[str, float] = field(default_factory=dict)  # endpoint → seconds
    conversations: int = 0  # judged conversations
    judge_score: float | None = None  # mean reply score (1..5) over its judged replies

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": self.error_rate}


def scrape(urls: Iterable[str], timeout_s: float = 10.0) -> str:
    """The concatenated Prometheus text of each URL (one per revision: counters add up)."""
    parts = []
    for url in urls:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (operator URL)
            parts.append(resp.read().decode("utf-8"))
    return "\n".join(parts)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative ``{le: count}`` buckets."""
    if not buckets:
        return None
    edges = sorted(buckets)
    total = buckets[edges[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_edge, prev_count = 0.0, 0.0
    for edge in edges:
        count = buckets[edge]
        if count >= rank:
            if math.isinf(edge):  # in the overflow bucket: the highest finite bound
                return prev_edge
            width = count - prev_count
            return prev_edge + (edge - prev_edge) * ((rank - prev_count) / width if width else 1)
        prev_edge, prev_count = edge, count
    return prev_edge


def figures_from_prometheus(text: str) -> dict[str, VersionFigures]:
    """Requests, errors and p99 latency per model version (and endpoint) from exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, VersionFigures] = {}
    buckets: dict[tuple[str, str], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            version = sample.labels.get("model_version")
            if not version:
                continue
            fig = out.setdefault(version, VersionFigures(version))
            if sample.name == REQUESTS:
                fig.requests += sample.value
                if sample.labels.get("outcome") == "error":
                    fig.errors += sample.value
            elif sample.name == f"{LATENCY}_bucket":
                key = (version, sample.labels.get("endpoint", ""))
                buckets[key][float(sample.labels["le"])] += sample.value
    for (version, endpoint), b in buckets.items():
        p99 = histogram_quantile(0.99, b)
        if p99 is not None:
            out[version].latency_p99[endpoint] = p99
    return out


def judge_scores(store: "ObjectStore", versions: Iterable[str]) -> dict[str, tuple[int, float]]:
    """(judged conversations, mean reply score) per model version among ``versions``."""
    from components.contract import ConversationJudgement, Keys

    wanted = set(versions)
    scores: dict[str, list[float]] = defaultdict(list)
    conversations: dict[str, int] = defaultdict(int)
    prefix = Keys.judgement("c", "j").split("/", 1)[0] + "/"  # judgements/ (the contract's)
    for info in store.list(prefix):
        if not info.key.endswith(".json"):
            continue
        judgement = ConversationJudgement.model_validate(store.get_json(info.key))
        if judgement.model_version not in wanted:
            continue
        values = [s.score for r in judgement.replies if r.judged
                  for s in r.scores.values() if s is not None]
        if values:
            conversations[judgement.model_version] += 1
            scores[judgement.model_version] += values
    return {v: (conversations[v], sum(scores[v]) / len(scores[v])) for v in scores}


@dataclass
class Recommendation:
    action: Literal["promote", "rollback", "wait"]
    reasons: list[str]
    canary: VersionFigures
    stable: VersionFigures

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reasons": self.reasons,
                "canary": self.canary.to_dict(), "stable": self.stable.to_dict()}


def recommend(cfg: "Config", canary: VersionFigures, stable: VersionFigures) -> Recommendation:
    """promote | rollback | wait from the figures of both versions (thresholds: cfg.deploy)."""
    d = cfg.deploy
    bad: list[str] = []
    short: list[str] = []
    enough = d.min_canary_conversations
    if canary.requests < enough or stable.requests < enough:
        short.append(f"requests: canary {canary.requests:.0f}, stable {stable.requests:.0f} "
                     f"(< {enough})")
    else:
        rise = (canary.error_rate or 0.0) - (stable.error_rate or 0.0)
        if rise > d.max_error_rate_increase:
            bad.append(f"error rate {canary.error_rate:.3f} vs stable {stable.error_rate:.3f} "
                       f"(+{rise:.3f} > {d.max_error_rate_increase})")
        for endpoint in sorted(set(canary.latency_p99) & set(stable.latency_p99)):
            c, s = canary.latency_p99[endpoint], stable.latency_p99[endpoint]
            if s > 0 and c / s > d.max_latency_p99_ratio:
                bad.append(f"{endpoint} p99 {c * 1000:.0f} ms vs stable {s * 1000:.0f} ms "
                           f"(× {c / s:.2f} > {d.max_latency_p99_ratio})")
    if canary.conversations < enough or stable.conversations < enough:
        short.append(f"judged conversations: canary {canary.conversations}, stable "
                     f"{stable.conversations} (< {enough})")
    elif canary.judge_score is not None and stable.judge_score is not None:
        drop = stable.judge_score - canary.judge_score
        if drop > d.max_judge_score_drop:
            bad.append(f"judge score {canary.judge_score:.2f} vs stable {stable.judge_score:.2f} "
                       f"(−{drop:.2f} > {d.max_judge_score_drop})")
    if bad:  # worse on figures that have enough data: do not wait for more users to suffer
        return Recommendation("rollback", bad, canary, stable)
    if short:
        return Recommendation("wait", ["not enough data yet: " + s for s in short], canary, stable)
    return Recommendation("promote", ["the canary is within every threshold of stable"],
                          canary, stable)


def canary_figures(cfg: "Config", *, canary_version: str, stable_version: str,
                   metrics_text: str, store: "ObjectStore | None" = None
                   ) -> tuple[VersionFigures, VersionFigures]:
    """Both versions' figures from Prometheus text (+ judge scores when a store is given)."""
    figs = figures_from_prometheus(metrics_text)
    out = (figs.get(canary_version, VersionFigures(canary_version)),
           figs.get(stable_version, VersionFigures(stable_version)))
    if store is not None:
        scored = judge_scores(store, [canary_version, stable_version])
        for fig in out:
            if fig.model_version in scored:
                fig.conversations, fig.judge_score = scored[fig.model_version]
    return out
