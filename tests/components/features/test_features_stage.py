"""The features stage and the Feast store against the live local services: rows of the chain in
the bucket's parquet parts, read back point-in-time correct from the offline store and from the
online store on sqlite and on a real Redis; erasure of one user's rows everywhere."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from components.common.featurestore import store as fstore
from components.common.featurestore.definitions import (
    CONVERSATION_STATS,
    EVENT_TIMESTAMP,
    PAIR_FEATURES,
    USER_CONSENT,
)
from components.common.stagekit import iter_items, iter_rejects
from components.common.storage import ObjectStore
from components.contract import Keys
from components.features.logic import build_features
from components.mix.logic import historical_features
from tests.components.features.support import feature_chain

pytestmark = pytest.mark.integration


def _versions(store: ObjectStore) -> set[tuple[str, str | None]]:
    return {(v.key, v.version_id) for v in store.list_versions("features/")}


def test_features_stage_writes_rows_and_materializes(stage_cfg):
    fc = feature_chain(stage_cfg)
    chain, manifest = fc.chain, fc.features
    store = ObjectStore.from_config(stage_cfg.storage)

    assert manifest.stage == "features" and manifest.input_manifest_id == fc.validate_id
    stats = manifest.stats
    assert stats["dataset_version"] == chain.dataset_version
    assert stats["rows"] == {CONVERSATION_STATS: 5, PAIR_FEATURES: 10, USER_CONSENT: 3}
    for view, key in stats["parts"].items():
        assert key.startswith(Keys.feature_prefix(view)) and store.exists(key)
    assert stats["materialized_until"]
    items = list(iter_items(store, manifest))
    assert sorted(i["pair_id"] for i in items) == sorted(chain.pairs)
    assert not list(iter_rejects(store, manifest))
    for item in items:  # a pair's time is its conversation's end
        assert pd.Timestamp(item[EVENT_TIMESTAMP]) == \
            pd.Timestamp(chain.conversation_end[item["conversation_id"]])

    offline = fstore.read_offline(stage_cfg, PAIR_FEATURES).set_index("pair_id")
    pair = next(iter(chain.pairs.values()))
    row = offline.loc[pair.pair_id]
    assert row["type"] == pair.type and row["user_pseudonym"] == pair.user_pseudonym
    assert row["serving_model_version"] == "duplexalign-moshi/1"
    assert row["judge_margin"] == pytest.approx(1.0)  # threshold 2.5 - score 1.5
    stats_rows = fstore.read_offline(stage_cfg, CONVERSATION_STATS).set_index("conversation_id")
    conv = stats_rows.loc[pair.conversation_id]
    assert conv["duration_s"] == 12.0 and conv["user_turns"] == 2 and conv["model_turns"] == 2
    assert conv["score_safety"] == pytest.approx(4.5)

    # online (sqlite) read-back: the materialised values are the offline ones
    online = fstore.online_features(stage_cfg, PAIR_FEATURES, list(chain.pairs)).set_index("pair_id")
    for pair_id in chain.pairs:
        assert online.loc[pair_id, "type"] == offline.loc[pair_id, "type"]
        assert online.loc[pair_id, "judge_margin"] == pytest.approx(offline.loc[pair_id, "judge_margin"])
    consent = fstore.online_features(stage_cfg, USER_CONSENT, list(chain.users.values()))
    assert consent["granted"].tolist() == [True, True, True]

    # a rerun writes nothing new and gives the same manifest
    before = _versions(store)
    again = build_features(stage_cfg, fc.validate_id)
    assert again.manifest_id == manifest.manifest_id
    assert _versions(store) == before


def test_point_in_time_a_later_row_never_reaches_an_earlier_pair(stage_cfg):
    # the registry in the bucket, as in the cluster (production profile)
    stage_cfg.features.registry = f"s3://{stage_cfg.storage.bucket}/feast/registry.db"
    fc = feature_chain(stage_cfg, users={"alice": 1})
    assert ObjectStore.from_config(stage_cfg.storage).exists("feast/registry.db")
    pair = next(iter(fc.chain.pairs.values()))
    end = fc.chain.conversation_end[pair.conversation_id]
    base = fstore.read_offline(stage_cfg, CONVERSATION_STATS).drop(columns=["_part", "created"])
    later = base.assign(**{EVENT_TIMESTAMP: end + timedelta(hours=1), "duration_s": 99.0})
    fstore.write_rows(stage_cfg, CONVERSATION_STATS, later)

    entities = pd.DataFrame([
        {"pair_id": pair.pair_id, "conversation_id": pair.conversation_id,
         "user_pseudonym": pair.user_pseudonym, EVENT_TIMESTAMP: pd.Timestamp(end)},
        {"pair_id": pair.pair_id, "conversation_id": pair.conversation_id,
         "user_pseudonym": pair.user_pseudonym,
         EVENT_TIMESTAMP: pd.Timestamp(end + timedelta(hours=2))},
    ])
    out = historical_features(stage_cfg, entities)
    # at the pair's time: the row of its own time, not the later one
    assert out.loc[0, "conversation_stats__duration_s"] == 12.0
    # the later row is real: an entity after it sees it
    assert out.loc[1, "conversation_stats__duration_s"] == 99.0
    assert out.loc[0, "pair_features__type"] == pair.type


def _erase_and_check(cfg, fc) -> None:
    chain = fc.chain
    store = ObjectStore.from_config(cfg.storage)
    bob = chain.users["bob"]
    bob_pairs, bob_convs = chain.pairs_of("bob"), chain.conversations_of("bob")
    others = [p for p in chain.pairs if p not in bob_pairs]
    old_parts = {v.key for v in store.list_versions("features/")}
    assert fstore.scan_entities(cfg, user_pseudonyms=[bob])["found"] > 0

    # by pseudonym only: the user's pairs and conversations are found through their rows
    counts = fstore.erase_entities(cfg, user_pseudonyms=[bob])
    assert counts["offline_rows"] == len(bob_pairs) + len(bob_convs) + 1  # + 1 consent row
    assert counts["parts_deleted"] == 3 and counts["parts_rewritten"] == 3
    assert counts["online_rows"] == len(bob_pairs) + len(bob_convs) + 1

    scan = fstore.scan_entities(cfg, user_pseudonyms=[bob], conversation_ids=bob_convs,
                                pair_ids=bob_pairs)
    assert scan["found"] == 0, scan
    versions = {v.key for v in store.list_versions("features/")}
    assert not (old_parts & versions), "every version of an erased part is gone"
    # the others are intact, offline and online
    offline = fstore.read_offline(cfg, PAIR_FEATURES)
    assert sorted(offline["pair_id"]) == sorted(others)
    online = fstore.online_features(cfg, PAIR_FEATURES, list(chain.pairs)).set_index("pair_id")
    assert online.loc[others, "type"].notna().all()
    assert online.loc[bob_pairs, "type"].isna().all()
    assert fstore.scan_entities(cfg, pair_ids=others)["found"] >= 2 * len(others)
    # a rerun finds nothing more to erase
    assert fstore.erase_entities(cfg, user_pseudonyms=[bob], pair_ids=bob_pairs) == {
        "offline_rows": 0, "parts_rewritten": 0, "parts_deleted": 0,
        "object_versions_deleted": 0, "online_rows": 0}


def test_erase_entities_removes_one_user_offline_and_online_sqlite(stage_cfg):
    fc = feature_chain(stage_cfg)
    online_db = Path(fstore.sqlite_path(stage_cfg))
    bob = fc.chain.users["bob"].encode()
    assert bob in online_db.read_bytes()
    _erase_and_check(stage_cfg, fc)
    # not a byte of bob's rows is left in the online store's file (freed pages included)
    data = online_db.read_bytes()
    assert bob not in data and all(p.encode() not in data for p in fc.chain.pairs_of("bob"))
    assert fc.chain.users["alice"].encode() in data


def test_online_store_on_redis_read_back_and_erase(stage_cfg, redis_server, monkeypatch):
    monkeypatch.setenv("DUPLEXALIGN_REDIS_PASSWORD", redis_server.password)
    stage_cfg.features.online_store = "redis"
    stage_cfg.features.redis_connection_string = redis_server.connection_string
    stage_cfg.features.project = f"t_{stage_cfg.storage.bucket.replace('-', '_')}"
    fc = feature_chain(stage_cfg)
    assert fc.features.stats["online_store"] == "redis"
    online = fstore.online_features(stage_cfg, PAIR_FEATURES, list(fc.chain.pairs))
    offline = fstore.read_offline(stage_cfg, PAIR_FEATURES)
    merged = online.merge(offline, on="pair_id", suffixes=("_online", "_offline"))
    assert len(merged) == len(fc.chain.pairs)
    assert (merged["type_online"] == merged["type_offline"]).all()
    assert merged["chosen_words_online"].tolist() == merged["chosen_words_offline"].tolist()
    _erase_and_check(stage_cfg, fc)
