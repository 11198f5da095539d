"""The training-mix builder: which pairs of a dataset the trainer sees, chosen from features.

Input: a "features" manifest (its items are the dataset's pairs with their event time = their
conversation's end). Entity rows = those pairs; ``get_historical_features`` joins
``pair_features`` and ``conversation_stats`` point-in-time correct (a row dated after a pair's
time never reaches it) and ``user_consent`` (recorded for audit only). Then the filters of
``components/mix/selection.py``; consent is the registry's CURRENT state. Output: a "mix"
manifest (input: the features manifest) whose items are the chosen pairs, rejects the others
with their code; the trainer trains on exactly its items.

Idempotent: the same features manifest, consent state, settings and ``as_of`` give the same
manifest id. ``as_of`` (default: when the features manifest was written) leaves out pairs whose
time is later than it (code ``after_as_of``).
"""

from __future__ import annotations

import sys
import time
from contextlib import redirect_stdout
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from components.common.config import Config
from components.common.consent import ConsentRegistry
from components.common.featurestore.definitions import (
    CONVERSATION_STATS,
    EVENT_TIMESTAMP,
    FEATURES,
    PAIR_FEATURES,
    USER_CONSENT,
)
from components.common.featurestore.store import (
    feature_store,
    s3_environment,
    views_with_rows,
)
from components.common.stagekit import ManifestWriter, iter_items, load_manifest
from components.common.storage import ObjectStore
from components.contract import ItemError, Manifest
from components.mix.selection import (
    MARGIN,
    SERVING,
    TIMING_TYPES,
    TYPE,
    select_mix,
    timing_share,
)

STAGE = "mix"
ENTITY_COLUMNS = ("pair_id", "conversation_id", "user_pseudonym", EVENT_TIMESTAMP)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def entity_frame(store: ObjectStore, features_manifest: Manifest) -> pd.DataFrame:
    """The features manifest's pairs as Feast entity rows (event_timestamp = the pair's time)."""
    rows = [{c: item[c] for c in (*ENTITY_COLUMNS, "type")}
            for item in iter_items(store, features_manifest)]
    frame = pd.DataFrame(rows, columns=[*ENTITY_COLUMNS, "type"])
    frame[EVENT_TIMESTAMP] = pd.to_datetime(frame[EVENT_TIMESTAMP], utc=True, format="ISO8601")
    return frame


def historical_features(cfg: Config, entities: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features of each entity row (pair_id, conversation_id, user_pseudonym,
    event_timestamp): ``<view>__<feature>`` columns of every view that has rows, in the input's
    row order."""
    if entities.empty:
        return entities.copy()
    present = set(views_with_rows(cfg))
    refs = [f"{view}:{name}" for view in (PAIR_FEATURES, CONVERSATION_STATS, USER_CONSENT)
            if view in present for name in FEATURES[view]]
    frame = entities[list(ENTITY_COLUMNS)].copy()
    frame["_row"] = range(len(frame))
    with s3_environment(cfg), redirect_stdout(sys.stderr):
        out = feature_store(cfg).get_historical_features(
            entity_df=frame, features=refs, full_feature_names=True).to_df()
    out = out.sort_values("_row").drop(columns="_row").reset_index(drop=True)
    for view in (PAIR_FEATURES, CONVERSATION_STATS, USER_CONSENT):
        for name in FEATURES[view]:
            if f"{view}__{name}" not in out.columns:  # a view without rows yet
                out[f"{view}__{name}"] = None
    return out


def champion_version(cfg: Config) -> str:
    """The model version the trainer's policy source serves (default: the champion alias)."""
    from components.model.registry import model_version_tag

    return model_version_tag(cfg, cfg.train.policy_source)


def _value(value: Any) -> Any:
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.isoformat()
    return value


def build_mix(cfg: Config, features_manifest_id: str, *, as_of: datetime | None = None,
              model_version: str | None = None) -> Manifest:
    """Select the training mix of a features manifest; returns the "mix" manifest."""
    t0 = time.monotonic()
    store = ObjectStore.from_config(cfg.storage)
    features = load_manifest(store, features_manifest_id)
    if features.stage != "features":
        raise ValueError(f"{features_manifest_id} is a {features.stage} manifest, not features")
    as_of = _utc(as_of) if as_of is not None else _utc(features.created_at)
    if cfg.mix.on_policy and model_version is None:
        model_version = champion_version(cfg)

    entities = entity_frame(store, features)
    late = entities[EVENT_TIMESTAMP] > pd.Timestamp(as_of)
    candidates = entities[~late]
    frame = historical_features(cfg, candidates)
    with ConsentRegistry.from_config(cfg.consent) as registry:
        registry.migrate()
        current = {user: record.granted for user, record in
                   registry.bulk_get(frame["user_pseudonym"].unique().tolist()).items()}
    selection = select_mix(frame, current_consent=current, model_version=model_version,
                           mix=cfg.mix)

    writer = ManifestWriter(store, STAGE, features_manifest_id)
    kept = selection.kept
    for _, row in kept.sort_values("pair_id").iterrows():
        writer.add_item({
            "pair_id": row["pair_id"], "type": row[TYPE],
            "user_pseudonym": row["user_pseudonym"], "conversation_id": row["conversation_id"],
            "serving_model_version": row[SERVING], "judge_margin": _value(row[MARGIN]),
            EVENT_TIMESTAMP: pd.Timestamp(row[EVENT_TIMESTAMP]).isoformat(),
            # the conversation as it was at the pair's time (point in time)
            "conversation_duration_s": _value(row.get(f"{CONVERSATION_STATS}__duration_s")),
            "response_latency_s": _value(row.get(f"{CONVERSATION_STATS}__response_latency_s")),
            # audit: what the point-in-time join said (the filter used the current state)
            "consent_at_pair_time": _value(row.get(f"{USER_CONSENT}__granted")),
        })
    rejects = [ItemError(item=p, code="after_as_of",
                         reason=f"the pair's time is after as_of {as_of.isoformat()}")
               for p in entities.loc[late, "pair_id"]]
    rejects += [ItemError(item=p, code=code, reason=reason)
                for p, code, reason in selection.rejects]
    for reject in sorted(rejects, key=lambda r: (r.item, r.code)):
        writer.add_reject(reject)
    excluded: dict[str, int] = {}
    for reject in rejects:
        excluded[reject.code] = excluded.get(reject.code, 0) + 1
    by_type = {t: int((kept[TYPE] == t).sum()) for t in ("content", *TIMING_TYPES)}
    features_stats = features.stats
    stats = {
        "dataset_version": features_stats.get("dataset_version"),
        "as_of": as_of.isoformat(),
        "model_version": model_version if cfg.mix.on_policy else None,
        "on_policy": cfg.mix.on_policy,
        "candidates": int(len(entities)),
        "pairs": int(len(kept)),
        "by_type": by_type,
        "excluded": excluded,
        "timing_fraction": timing_share(kept[TYPE]),
        "balance": selection.balance,
        "settings": cfg.mix.model_dump(mode="json"),
        "consent_granted_at_pair_time_but_withdrawn_now": int(sum(
            1 for p, code, _ in selection.rejects if code == "consent_withdrawn"
            and bool(frame.loc[frame["pair_id"] == p, f"{USER_CONSENT}__granted"].fillna(False)
                     .any()))),
        "seconds": round(time.monotonic() - t0, 2),
    }
    return writer.close(stats)
