"""The features stage: the dataset's conversations, pairs and users' consent as Feast rows.

Input: the validate manifest (the gate passed); the stage walks its chain back to tokenize (the
dataset version and its pair ids), resynthesize (the PreferencePair of each pair) and judge (each
conversation's item and judgement, read at the pinned version). It writes one content-addressed
parquet part per view (a rerun writes nothing new), applies the repository and materialises the
online store (``features.materialize``). Output: a "features" manifest with one item per pair of
the dataset (pair id, conversation, pseudonym, type, event time): the entity rows of the mix.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from components.common.config import Config
from components.common.consent import ConsentRegistry
from components.common.featurestore.definitions import (
    CONVERSATION_STATS,
    EVENT_TIMESTAMP,
    PAIR_FEATURES,
    USER_CONSENT,
)
from components.common.featurestore.store import (
    apply_repo,
    materialize,
    offline_root,
    write_rows,
)
from components.common.stagekit import (
    ManifestWriter,
    iter_items,
    load_manifest,
    manifest_chain,
    stage_of,
)
from components.common.storage import ObjectStore
from components.contract import (
    ConversationJudgement,
    ItemError,
    JudgedItem,
    Manifest,
    PreferencePair,
)
from components.features.rows import (
    consent_rows,
    conversation_end,
    conversation_stats_row,
    pair_features_row,
)

STAGE = "features"
READ_CONCURRENCY = 8  # judgements read at once


class FeaturesInputError(ValueError):
    """The input manifest's chain lacks what the features need (tokenize, resynthesize, judge)."""


def _chain(store: ObjectStore, manifest_id: str) -> dict[str, Manifest]:
    chain = manifest_chain(store, manifest_id)
    missing = [s for s in ("tokenize", "resynthesize", "judge") if s not in chain]
    if missing:
        raise FeaturesInputError(f"{manifest_id}: its chain has no {', '.join(missing)} manifest "
                                 f"(found {list(chain)})")
    if "pairs_dataset" not in chain["tokenize"].stats:
        raise FeaturesInputError(f"{chain['tokenize'].manifest_id}: names no pairs dataset")
    return chain


def dataset_rows(cfg: Config, input_manifest_id: str) -> dict[str, Any]:
    """The rows of every view for the dataset of ``input_manifest_id``'s chain, plus the pair
    items and what was missing: {"dataset_version", "rows": {view: [row]}, "pairs": [item],
    "rejects": [ItemError]}."""
    store = ObjectStore.from_config(cfg.storage)
    chain = _chain(store, input_manifest_id)
    dataset_version = str(chain["tokenize"].stats["pairs_dataset"])
    pair_ids = [str(item["pair_id"]) for item in iter_items(store, chain["tokenize"])]
    records: dict[str, PreferencePair] = {}
    for item in iter_items(store, chain["resynthesize"]):
        record = PreferencePair.model_validate(item["pair"])
        records[record.pair_id] = record

    def stats_row(item: dict[str, Any]) -> tuple[str, datetime, dict[str, Any]]:
        judged = JudgedItem.model_validate(item)
        judgement = ConversationJudgement.model_validate(  # at the version the judge wrote
            store.get_json(judged.judgement.key, judged.judgement.version_id))
        return (judged.conversation_id,
                conversation_end(judged.started_at, judged.duration_s),
                conversation_stats_row(judged.conversation_id, judged.user_pseudonym,
                                       judged.started_at, judged.duration_s, judgement))

    stats_rows: list[dict[str, Any]] = []
    ends: dict[str, datetime] = {}
    with ThreadPoolExecutor(READ_CONCURRENCY) as pool:  # one GET per conversation
        for conversation_id, ended, row in pool.map(stats_row, iter_items(store, chain["judge"])):
            ends[conversation_id] = ended
            stats_rows.append(row)

    pair_rows: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    rejects: list[ItemError] = []
    thresholds = dict(cfg.judge.thresholds)
    for pair_id in pair_ids:
        pair = records.get(pair_id)
        if pair is None:
            rejects.append(ItemError(item=pair_id, code="pair-missing",
                                     reason="no PreferencePair in the resynthesize manifest"))
            continue
        end = ends.get(pair.conversation_id)
        if end is None:
            rejects.append(ItemError(item=pair_id, code="conversation-missing",
                                     reason=f"{pair.conversation_id} is not in the judge manifest"))
            continue
        pair_rows.append(pair_features_row(pair, end, thresholds))
        items.append({"pair_id": pair_id, "conversation_id": pair.conversation_id,
                      "user_pseudonym": pair.user_pseudonym, "type": pair.type,
                      EVENT_TIMESTAMP: end.isoformat()})

    users = sorted({item["user_pseudonym"] for item in items} |
                   {row["user_pseudonym"] for row in stats_rows})
    consent: list[dict[str, Any]] = []
    with ConsentRegistry.from_config(cfg.consent) as registry:
        registry.migrate()
        for user in users:
            consent.extend(consent_rows(registry.history(user)))
    return {"dataset_version": dataset_version, "pairs": items, "rejects": rejects,
            "rows": {CONVERSATION_STATS: stats_rows, PAIR_FEATURES: pair_rows,
                     USER_CONSENT: consent}}


def build_features(cfg: Config, validate_manifest_id: str) -> Manifest:
    """Write the dataset's feature rows, apply the repository, materialise (when
    ``features.materialize``); returns the "features" manifest (input: ``validate_manifest_id``).
    Idempotent: a rerun writes no new part and returns the same manifest."""
    t0 = time.monotonic()
    store = ObjectStore.from_config(cfg.storage)
    if stage_of(validate_manifest_id) == "validate":
        gate = load_manifest(store, validate_manifest_id)
        if gate.stats.get("critical_failed"):  # nothing the gate stopped reaches the features
            raise ValueError(f"{validate_manifest_id}: the data quality gate stopped this dataset "
                             f"({', '.join(gate.stats['critical_failed'])})")
    data = dataset_rows(cfg, validate_manifest_id)
    created = datetime.now(timezone.utc)
    parts = {view: write_rows(cfg, view, rows, created=created, store=store)
             for view, rows in data["rows"].items()}
    applied = apply_repo(cfg)
    until = materialize(cfg) if cfg.features.materialize else None
    writer = ManifestWriter(store, STAGE, validate_manifest_id)
    for item in data["pairs"]:
        writer.add_item(item)
    for reject in data["rejects"]:
        writer.add_reject(reject)
    stats = {"dataset_version": data["dataset_version"],
             "rows": {view: len(rows) for view, rows in data["rows"].items()},
             "parts": parts, "offline_root": offline_root(cfg),
             "project": applied["project"], "online_store": applied["online_store"],
             "materialized_until": until.isoformat() if until else None,
             "seconds": round(time.monotonic() - t0, 2)}
    return writer.close(stats)
