"""Retention: expired object versions go (every version, per prefix, the longest prefix wins),
nothing else does; a ledger entry records the run; lifecycle rules are offered to the store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from components.common.storage import ObjectStore, ObjectVersion
from components.contract import Keys
from components.retention.logic import (
    enforce_retention,
    expired_versions,
    governing_prefix,
    lifecycle_config,
    periods,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def _v(key: str, age_days: float, marker: bool = False, vid: str = "1") -> ObjectVersion:
    return ObjectVersion(key=key, version_id=vid, is_delete_marker=marker, size=1,
                         last_modified=NOW - timedelta(days=age_days))


def test_longest_prefix_governs():
    assert governing_prefix("cache/judge/a.json", ["cache/", "cache/judge/"]) == "cache/judge/"
    assert governing_prefix("cache/x.json", ["cache/", "cache/judge/"]) == "cache/"
    assert governing_prefix("transcripts/a.json", ["cache/"]) is None


def test_expired_versions_pure():
    days = {"cache/": 90.0, "cache/judge/": 10.0, "state/": 30.0}
    versions = [
        _v("cache/judge/a.json", 11), _v("cache/judge/b.json", 9),
        _v("cache/c.json", 11),
        _v("state/s.json", 31, vid="old"), _v("state/s.json", 1, vid="new"),
        # an expired object under a fresh delete marker: both go (the marker hides nothing then)
        _v("state/gone.json", 40, vid="data"), _v("state/gone.json", 2, marker=True, vid="dm"),
        _v("transcripts/t.json", 1000),
    ]
    out = expired_versions(versions, days, NOW)
    assert [(v.key, v.version_id) for v in out["cache/judge/"]] == [("cache/judge/a.json", "1")]
    assert "cache/" not in out
    assert sorted((v.key, v.version_id) for v in out["state/"]) == [
        ("state/gone.json", "data"), ("state/gone.json", "dm"), ("state/s.json", "old")]


def test_periods_refuse_the_ledger_and_the_whole_bucket(stage_cfg):
    cfg = stage_cfg.model_copy(deep=True)
    cfg.retention.days = {"ledger/retention/": 1.0}
    with pytest.raises(ValueError, match="ledger"):
        periods(cfg)
    cfg.retention.days = {"": 1.0}
    with pytest.raises(ValueError):
        periods(cfg)


def test_lifecycle_rules_whole_days():
    config = lifecycle_config({"quarantine/": 0.25, "state/": 30.0})
    rules = {r.rule_filter.prefix: r for r in config.rules}
    assert rules["quarantine/"].expiration.days == 1
    assert rules["state/"].noncurrent_version_expiration.noncurrent_days == 30


@pytest.mark.integration
def test_enforce_retention_deletes_expired_only(stage_cfg):
    cfg = stage_cfg.model_copy(deep=True)
    cfg.retention.days = {"quarantine/": 1.0, "state/": 30.0, "cache/": 90.0,
                          "cache/judge/": 10.0, "reports/": 180.0}
    store = ObjectStore.from_config(cfg.storage)
    keys = {"quarantine/transcripts/c1.json": True, "state/pairs/m/c1.json": True,
            "cache/judge/d.json": True, "cache/other.json": False,
            "reports/pairs/m/pairs.html": False, "transcripts/c1.json": False,
            "ledger/privacy/c1/run.json": False}
    for key in keys:
        store.put_json(key, {"k": key})
    store.put_json("state/pairs/m/c1.json", {"second": "version"})
    store.delete("quarantine/transcripts/c1.json")  # a delete marker over the old bytes

    # now: nothing has expired
    report = enforce_retention(cfg)
    assert report.deleted == 0
    assert all(store.stat(k) is not None for k in keys if not k.startswith("quarantine/"))

    # dry run 40 days later: listed, nothing deleted
    later = datetime.now(timezone.utc) + timedelta(days=40)
    before = {(v.key, v.version_id) for v in store.list_versions("")}
    dry = enforce_retention(cfg, now=later, dry_run=True)
    assert dry.ledger_key is None and dry.deleted == 5  # 2 state, marker + data, 1 cache
    assert {(v.key, v.version_id) for v in store.list_versions("")} == before

    report = enforce_retention(cfg, now=later)
    for key, expires in keys.items():
        left = [v for v in store.list_versions(key) if v.key == key]
        assert (not left) if expires else left, key
    by_prefix = report.summary()["by_prefix"]
    assert by_prefix == {"cache/": 0, "cache/judge/": 1, "quarantine/": 2, "reports/": 0,
                         "state/": 2}
    entry = store.get_json(report.ledger_key)
    assert report.ledger_key == Keys.retention_ledger(report.run)
    assert entry["deleted_versions"] == 5
    state = next(p for p in entry["prefixes"] if p["prefix"] == "state/")
    assert state["keys"] == ["state/pairs/m/c1.json"]
    assert isinstance(report.lifecycle["accepted"], bool)
    assert report.lifecycle["requested"]["quarantine/"] == 1
    # the ledger itself is never expired
    assert store.stat(report.ledger_key) is not None
    again = enforce_retention(cfg, now=later + timedelta(days=1000))
    assert store.stat(report.ledger_key) is not None
    assert again.summary()["by_prefix"]["reports/"] == 1
