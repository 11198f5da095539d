"""retention: every object kept no longer than its prefix's period, with a ledger entry.

``cfg.retention.days`` maps a key prefix of the data bucket to a period in days (a key under
several configured prefixes follows the longest one; a key under none is kept). The first task
of every pipeline run, and ``duplexalign retention``, calls `enforce_retention`:

* every VERSION (delete markers included) of every key under a configured prefix whose
  ``last_modified`` is older than ``now - days`` is deleted — on a versioned bucket a plain
  delete keeps the bytes, so expired data is removed version by version, and a delete marker
  left with no version under it goes too;
* the run is recorded at ``ledger/retention/<run>.json``: when, the cutoff per prefix, how many
  versions were deleted and their keys;
* bucket lifecycle rules (``Expiration`` of current versions and ``NoncurrentVersionExpiration``
  per prefix, whole days, at least one) are set when ``cfg.retention.lifecycle_rules`` so the
  store enforces the periods between runs too. Whether the store accepted them (SeaweedFS's S3
  gateway implements only part of the lifecycle API) is recorded, never a reason to fail: the
  pipeline's pass is the guarantee, the rules are a second line.

``dry_run`` lists what would go and writes nothing (no deletes, no rules, no ledger).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from components.common.config import Config
from components.common.storage import ObjectStore, ObjectVersion, StorageError
from components.contract import Keys

LEDGER_PREFIX = "ledger/"  # ledgers are the record of deletions: never expired by this pass
MAX_KEYS_LISTED = 10_000  # per prefix in the ledger entry (the count is always exact)


@dataclass
class PrefixResult:
    prefix: str
    days: float
    cutoff: datetime
    versions: int = 0  # versions and markers deleted (or that would be)
    keys: list[str] = field(default_factory=list)  # distinct keys touched

    def to_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "days": self.days, "cutoff": self.cutoff.isoformat(),
                "versions": self.versions, "keys": self.keys[:MAX_KEYS_LISTED],
                "keys_total": len(self.keys)}


@dataclass
class RetentionReport:
    run: str
    now: datetime
    dry_run: bool
    prefixes: list[PrefixResult] = field(default_factory=list)
    lifecycle: dict[str, Any] = field(default_factory=dict)
    ledger_key: str | None = None

    @property
    def deleted(self) -> int:
        return sum(p.versions for p in self.prefixes)

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "now": self.now.isoformat(), "dry_run": self.dry_run,
                "deleted_versions": self.deleted,
                "prefixes": [p.to_dict() for p in self.prefixes],
                "lifecycle": self.lifecycle, "ledger_key": self.ledger_key}

    def summary(self) -> dict[str, Any]:
        return {"run": self.run, "now": self.now.isoformat(), "dry_run": self.dry_run,
                "deleted_versions": self.deleted,
                "by_prefix": {p.prefix: p.versions for p in self.prefixes},
                "lifecycle": self.lifecycle, "ledger": self.ledger_key}


def _utc(at: datetime | None) -> datetime:
    at = at or datetime.now(timezone.utc)
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def periods(cfg: Config) -> dict[str, float]:
    """The configured prefixes (ledgers excluded: they record deletions and stay)."""
    out = {}
    for prefix, days in cfg.retention.days.items():
        if days < 0:
            raise ValueError(f"retention.days[{prefix!r}] is negative")
        if not prefix or prefix.startswith(LEDGER_PREFIX) or LEDGER_PREFIX.startswith(prefix):
            raise ValueError(f"retention.days[{prefix!r}]: the whole bucket and ledger/ are "
                             "not expired by retention")
        out[prefix] = float(days)
    return out


def governing_prefix(key: str, prefixes: list[str]) -> str | None:
    """The longest configured prefix of ``key`` (the most specific period wins)."""
    matches = [p for p in prefixes if key.startswith(p)]
    return max(matches, key=len) if matches else None


def expired_versions(versions: list[ObjectVersion], prefix_days: dict[str, float],
                     now: datetime) -> dict[str, list[ObjectVersion]]:
    """prefix -> the versions to delete: older than the cutoff, plus a delete marker whose
    key keeps no version after the pass (nothing left for it to hide)."""
    prefixes = sorted(prefix_days)
    by_key: dict[str, list[ObjectVersion]] = defaultdict(list)
    for v in versions:
        by_key[v.key].append(v)
    out: dict[str, list[ObjectVersion]] = defaultdict(list)
    for key, vs in by_key.items():
        prefix = governing_prefix(key, prefixes)
        if prefix is None:
            continue
        cutoff = now - timedelta(days=prefix_days[prefix])
        gone = [v for v in vs if v.last_modified is not None and v.last_modified < cutoff]
        left = [v for v in vs if v not in gone]
        if gone and left and all(v.is_delete_marker for v in left):
            gone += left
        if gone:
            out[prefix].extend(gone)
    return out


def lifecycle_config(prefix_days: dict[str, float]) -> Any:
    from minio.commonconfig import ENABLED, Filter
    from minio.lifecycleconfig import (
        Expiration,
        LifecycleConfig,
        NoncurrentVersionExpiration,
        Rule,
    )

    rules = []
    for i, (prefix, days) in enumerate(sorted(prefix_days.items())):
        whole = max(1, math.ceil(days))
        rules.append(Rule(ENABLED, rule_filter=Filter(prefix=prefix),
                          rule_id=f"duplexalign-retention-{i}",
                          expiration=Expiration(days=whole),
                          noncurrent_version_expiration=NoncurrentVersionExpiration(
                              noncurrent_days=whole)))
    return LifecycleConfig(rules)


def set_lifecycle_rules(store: ObjectStore, prefix_days: dict[str, float]) -> dict[str, Any]:
    """Put the rules on the bucket and read them back; what the store said is the result."""
    from minio.error import S3Error

    client = store.client
    wanted = {p: max(1, math.ceil(d)) for p, d in prefix_days.items()}
    try:
        client.set_bucket_lifecycle(store.bucket, lifecycle_config(prefix_days))
    except S3Error as exc:
        return {"requested": wanted, "accepted": False, "error": exc.code}
    except Exception as exc:  # noqa: BLE001 - a store without the API: recorded, not fatal
        return {"requested": wanted, "accepted": False, "error": type(exc).__name__}
    try:
        config = client.get_bucket_lifecycle(store.bucket)
        stored = len(config.rules) if config is not None else 0
    except Exception as exc:  # noqa: BLE001
        return {"requested": wanted, "accepted": True, "read_back": False,
                "error": type(exc).__name__}
    return {"requested": wanted, "accepted": True, "read_back": stored == len(wanted),
            "rules_stored": stored}


def enforce_retention(cfg: Config, *, now: datetime | None = None, dry_run: bool = False,
                      store: ObjectStore | None = None) -> RetentionReport:
    """Delete every expired object version (see the module docstring); returns the report,
    also written to ``ledger/retention/<run>.json`` unless ``dry_run``."""
    now = _utc(now)
    prefix_days = periods(cfg)
    store = store or ObjectStore.from_config(cfg.storage)
    run = f"retention-{now.strftime('%Y%m%dT%H%M%S%fZ')}"
    report = RetentionReport(run=run, now=now, dry_run=dry_run)
    for prefix in sorted(prefix_days):
        # Listed per prefix; a key under a longer configured prefix is left to that one.
        versions = list(store.list_versions(prefix))
        expired = expired_versions(versions, prefix_days, now).get(prefix, [])
        result = PrefixResult(prefix, prefix_days[prefix],
                              now - timedelta(days=prefix_days[prefix]))
        result.keys = sorted({v.key for v in expired})
        if expired and not dry_run:
            result.versions = store.delete_versions(expired, prefix)
        else:
            result.versions = len(expired)
        report.prefixes.append(result)
    if dry_run:
        return report
    if cfg.retention.lifecycle_rules and prefix_days:
        report.lifecycle = set_lifecycle_rules(store, prefix_days)
    else:
        report.lifecycle = {"requested": {}, "accepted": None,
                            "note": "retention.lifecycle_rules is off"}
    report.ledger_key = Keys.retention_ledger(run)
    try:
        store.put_json(report.ledger_key, report.to_dict())
    except StorageError:
        report.ledger_key = None
        raise
    return report
