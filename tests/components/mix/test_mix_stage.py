"""The mix builder against the live stores: point-in-time features from Feast, consent from the
registry's CURRENT state (a withdrawal dated after a pair's time still removes it), on-policy
version, idempotent manifests the trainer consumes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from components.common.consent import ConsentRegistry
from components.common.stagekit import iter_items, iter_rejects, manifest_chain
from components.common.storage import ObjectStore
from components.mix.logic import build_mix, entity_frame, historical_features
from tests.components.features.support import feature_chain

pytestmark = pytest.mark.integration

V1 = "duplexalign-moshi/1"


def test_mix_selects_pairs_and_is_idempotent(stage_cfg):
    stage_cfg.mix.timing_fraction = None
    fc = feature_chain(stage_cfg)
    store = ObjectStore.from_config(stage_cfg.storage)
    mix = build_mix(stage_cfg, fc.features.manifest_id, model_version=V1)
    assert mix.stage == "mix" and mix.input_manifest_id == fc.features.manifest_id
    items = list(iter_items(store, mix))
    assert sorted(i["pair_id"] for i in items) == sorted(fc.chain.pairs)
    item = items[0]
    assert set(item) >= {"pair_id", "type", "user_pseudonym", "conversation_id",
                         "serving_model_version", "judge_margin", "consent_at_pair_time"}
    assert item["serving_model_version"] == V1 and item["judge_margin"] == pytest.approx(1.0)
    assert item["conversation_duration_s"] == 12.0 and item["consent_at_pair_time"] is True
    stats = mix.stats
    assert stats["dataset_version"] == fc.chain.dataset_version
    assert stats["model_version"] == V1 and stats["excluded"] == {}
    assert sum(stats["by_type"].values()) == len(fc.chain.pairs)
    assert stats["by_type"] == {t: sum(p.type == t for p in fc.chain.pairs.values())
                                for t in ("content", "interruption", "silence")}
    # the chain walks train's input back: mix -> features -> validate -> tokenize -> ...
    assert list(manifest_chain(store, mix.manifest_id))[-4:] == \
        ["tokenize", "validate", "features", "mix"]
    assert build_mix(stage_cfg, fc.features.manifest_id, model_version=V1).manifest_id == \
        mix.manifest_id

    # another model version: nothing is on-policy
    other = build_mix(stage_cfg, fc.features.manifest_id, model_version="duplexalign-moshi/2")
    assert other.manifest_id != mix.manifest_id and not list(iter_items(store, other))
    assert other.stats["excluded"] == {"off_policy": len(fc.chain.pairs)}

    # as_of before the last conversation ended: its pairs are left out
    last = max(fc.chain.conversation_end.values())
    early = build_mix(stage_cfg, fc.features.manifest_id, model_version=V1,
                      as_of=last - timedelta(minutes=1))
    assert early.stats["excluded"] == {"after_as_of": 2}


def test_consent_withdrawn_after_the_pairs_time_is_honoured_at_the_next_build(stage_cfg):
    stage_cfg.mix.timing_fraction = None
    fc = feature_chain(stage_cfg)
    store = ObjectStore.from_config(stage_cfg.storage)
    first = build_mix(stage_cfg, fc.features.manifest_id, model_version=V1)
    assert first.stats["pairs"] == len(fc.chain.pairs)

    bob = fc.chain.users["bob"]
    withdrawn_at = datetime.now(timezone.utc)  # long after every pair's time (Nov 1)
    with ConsentRegistry.from_config(stage_cfg.consent) as registry:
        registry.set_consent(bob, False, at=withdrawn_at, source="test")

    # the point-in-time consent feature still says granted at bob's pairs' times ...
    entities = entity_frame(store, fc.features)
    pit = historical_features(stage_cfg, entities)
    bob_rows = pit[pit["user_pseudonym"] == bob]
    assert len(bob_rows) == len(fc.chain.pairs_of("bob"))
    assert bob_rows["user_consent__granted"].astype(bool).all()

    # ... yet the next build (same features manifest, no refresh) excludes them
    second = build_mix(stage_cfg, fc.features.manifest_id, model_version=V1)
    assert second.manifest_id != first.manifest_id
    kept = {i["pair_id"] for i in iter_items(store, second)}
    assert kept == set(fc.chain.pairs) - set(fc.chain.pairs_of("bob"))
    rejects = {r.item: r.code for r in iter_rejects(store, second)}
    assert rejects == {p: "consent_withdrawn" for p in fc.chain.pairs_of("bob")}
    assert second.stats["excluded"] == {"consent_withdrawn": len(fc.chain.pairs_of("bob"))}
    assert second.stats["consent_granted_at_pair_time_but_withdrawn_now"] == \
        len(fc.chain.pairs_of("bob"))

    # a later point-in-time join (after the withdrawal, once exported) does see it
    from components.features.logic import build_features

    build_features(stage_cfg, fc.validate_id)  # re-exports the registry's history
    later = entities[entities["user_pseudonym"] == bob].assign(
        event_timestamp=pd.Timestamp(withdrawn_at + timedelta(seconds=1)))
    assert not historical_features(stage_cfg, later)["user_consent__granted"].astype(bool).any()


def test_mix_balances_and_caps_on_live_features(stage_cfg):
    stage_cfg.mix.timing_fraction = 0.5
    stage_cfg.mix.tolerance = 0.0
    stage_cfg.mix.max_pairs_per_user = 3
    fc = feature_chain(stage_cfg, users={"alice": 3, "bob": 1},
                       pair_types=("content", "interruption", "silence"))
    store = ObjectStore.from_config(stage_cfg.storage)
    mix = build_mix(stage_cfg, fc.features.manifest_id, model_version=V1)
    items = list(iter_items(store, mix))
    per_user: dict[str, int] = {}
    for item in items:
        per_user[item["user_pseudonym"]] = per_user.get(item["user_pseudonym"], 0) + 1
    assert max(per_user.values()) <= 3
    excluded = mix.stats["excluded"]
    assert excluded["user_cap"] == 6 - 3  # alice had 6 pairs
    timing = sum(i["type"] != "content" for i in items)
    assert mix.stats["timing_fraction"] == pytest.approx(timing / len(items))
    assert mix.stats["balance"]["action"] in ("within", "timing_downsampled",
                                              "content_downsampled")
    assert abs(mix.stats["timing_fraction"] - 0.5) <= 0.5 / len(items) + 1e-9
