"""The Feast feature store of a configuration: offline parts in the bucket, registry, online store.

* Offline store: Feast's file offline store (dask) over parquet parts in the data bucket,
  ``features/<view>/<sha256>.parquet`` (``Keys.feature_part``); Feast reads ``s3://`` through
  s3fs with the FileSource's ``s3_endpoint_override`` = ``storage.endpoint``. Parts are written
  here (minio), content-addressed by their rows without the ``created`` time, so the same rows are
  never written twice.
* Registry: a file, local (default: one per data bucket under the state dir) or ``s3://``.
* Online store: sqlite (``features.sqlite_path``) or Redis (``features.redis_connection_string``,
  password from the env var ``features.redis_password_env``).

The RepoConfig is built from the configuration in code (``repo_config``); feature_repo/ holds the
same definitions and a feature_store.yaml for the local default, for ``feast`` CLI users.

Erasure: ``erase_entities`` rewrites every part that holds an erased row as a new part without it,
deletes every version of the old part and deletes the erased entities' online rows;
``scan_entities`` reports what is left of them, offline and online (every online row's key and
values are searched for the ids, so a row is found whichever view or entity holds it).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.common.config import Config
from components.common.featurestore.definitions import (
    CONVERSATION_STATS,
    CREATED,
    EVENT_TIMESTAMP,
    FEATURES,
    PAIR_FEATURES,
    USER_CONSENT,
    VIEW_KEY,
    VIEWS,
    Definitions,
    build_definitions,
)
from components.common.storage import ObjectStore, _split_endpoint, load_s3_credentials
from components.contract import Keys

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig

# Materialisation always starts here: a row's event time is when its conversation ENDED, and
# logs arrive late, so an incremental window from the last run's end would skip rows written
# after it with earlier event times. Online writes are upserts: re-materialising is idempotent.
MATERIALIZE_FROM = datetime(2000, 1, 1, tzinfo=timezone.utc)

# Columns of each view's parts that name an entity (erasure matches rows on any of them).
ID_COLUMNS = {
    CONVERSATION_STATS: ("conversation_id", "user_pseudonym"),
    USER_CONSENT: ("user_pseudonym",),
    PAIR_FEATURES: ("pair_id", "user_pseudonym", "conversation_id"),
}


# ----------------------------------------------------------------------------- configuration


def feast_dir(cfg: Config) -> Path:
    """Local state of the store of cfg's data bucket: <state_dir>/state/feast/<bucket>/."""
    return (Path(cfg.services.state_dir).expanduser() / "state" / "feast"
            / cfg.storage.bucket).resolve()


def registry_path(cfg: Config) -> str:
    path = cfg.features.registry
    if not path:
        return str(feast_dir(cfg) / "registry.db")
    return path if path.startswith("s3://") else str(Path(path).expanduser().resolve())


def sqlite_path(cfg: Config) -> str:
    path = cfg.features.sqlite_path
    return str(Path(path).expanduser().resolve()) if path else str(feast_dir(cfg) / "online.db")


def s3_endpoint_url(cfg: Config) -> str:
    host, secure = _split_endpoint(cfg.storage.endpoint, cfg.storage.secure)
    return f"{'https' if secure else 'http'}://{host}"


def offline_root(cfg: Config) -> str:
    """The folder whose ``<view>/`` subfolders the FileSources read."""
    return f"s3://{cfg.storage.bucket}/{Keys.FEATURES.rstrip('/')}"


def redis_connection_string(cfg: Config) -> str:
    conn = cfg.features.redis_connection_string
    password = os.environ.get(cfg.features.redis_password_env, "") if \
        cfg.features.redis_password_env else ""
    return f"{conn},password={password}" if password and "password=" not in conn else conn


def repo_config(cfg: Config) -> "RepoConfig":
    """Feast's RepoConfig for cfg (no secrets in it but the Redis password, read from env)."""
    from feast import RepoConfig

    if cfg.features.online_store == "redis":
        online: dict[str, Any] = {"type": "redis",
                                  "connection_string": redis_connection_string(cfg)}
    else:
        Path(sqlite_path(cfg)).parent.mkdir(parents=True, exist_ok=True)
        online = {"type": "sqlite", "path": sqlite_path(cfg)}
    registry = registry_path(cfg)
    if not registry.startswith("s3://"):
        Path(registry).parent.mkdir(parents=True, exist_ok=True)
    return RepoConfig(
        project=cfg.features.project, provider="local",
        registry={"registry_type": "file", "path": registry, "cache_ttl_seconds": 0},
        online_store=online, offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=feast_dir(cfg),  # every path above is absolute; this only anchors Feast
    )


def feature_store(cfg: Config) -> "FeatureStore":
    """A FeatureStore for cfg. Reading the offline store needs S3 credentials in the
    environment (s3fs): wrap Feast calls in ``s3_environment(cfg)``, as every function here
    does."""
    from feast import FeatureStore

    return FeatureStore(config=repo_config(cfg))


def definitions(cfg: Config) -> Definitions:
    return build_definitions(offline_root(cfg), s3_endpoint_url(cfg))


_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
             "AWS_ENDPOINT_URL", "FEAST_S3_ENDPOINT_URL")


@contextmanager
def s3_environment(cfg: Config) -> Iterator[None]:
    """The bucket's credentials and endpoint in the environment while Feast reads or writes
    (s3fs, pyarrow and Feast's S3 registry read them there), restored afterwards. fsspec's
    cached S3 filesystems are dropped on entry, so a listing cached before a part was written
    never hides it."""
    access, secret = load_s3_credentials(cfg.storage)
    saved = {key: os.environ.get(key) for key in _ENV_KEYS}
    os.environ.update({"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
                       "AWS_DEFAULT_REGION": cfg.storage.region,
                       "AWS_ENDPOINT_URL": s3_endpoint_url(cfg),
                       "FEAST_S3_ENDPOINT_URL": s3_endpoint_url(cfg)})
    _clear_s3fs_cache()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _clear_s3fs_cache() -> None:
    try:
        from s3fs import S3FileSystem
    except ImportError:  # pragma: no cover - s3fs is a dependency
        return
    S3FileSystem.clear_instance_cache()


# ----------------------------------------------------------------------------- offline parts

_PA_TYPES = {"Float64": pa.float64(), "Int64": pa.int64(), "String": pa.string(),
             "Bool": pa.bool_(), "UnixTimestamp": pa.timestamp("us", tz="UTC")}


def arrow_schema(view: str) -> pa.Schema:
    """The columns of a view's parts: entity key, event_timestamp, created, then features."""
    fields = [pa.field(VIEW_KEY[view], pa.string(), nullable=False),
              pa.field(EVENT_TIMESTAMP, pa.timestamp("us", tz="UTC"), nullable=False),
              pa.field(CREATED, pa.timestamp("us", tz="UTC"), nullable=False)]
    for name, dtype in FEATURES[view].items():
        fields.append(pa.field(name, _PA_TYPES[str(dtype)]))
    return pa.schema(fields)


def _utc(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def rows_digest(view: str, frame: pd.DataFrame) -> str:
    """sha256 of a view's rows in canonical form, ``created`` left out, order-independent."""
    columns = [c for c in arrow_schema(view).names if c != CREATED]
    records = []
    for row in frame[columns].itertuples(index=False, name=None):
        records.append(json.dumps([None if _isnull(v) else (v.isoformat() if hasattr(
            v, "isoformat") else v) for v in row], sort_keys=True, default=str))
    body = json.dumps([view, columns, sorted(records)])
    return hashlib.sha256(body.encode()).hexdigest()


def _isnull(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _to_table(view: str, frame: pd.DataFrame) -> pa.Table:
    schema = arrow_schema(view)
    frame = frame.copy()
    for name in (EVENT_TIMESTAMP, CREATED, *[n for n, t in FEATURES[view].items()
                                             if str(t) == "UnixTimestamp"]):
        frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
    frame = frame.sort_values([VIEW_KEY[view], EVENT_TIMESTAMP], kind="stable")
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def write_rows(cfg: Config, view: str, rows: pd.DataFrame | list[dict[str, Any]], *,
               created: datetime | None = None, store: ObjectStore | None = None) -> str | None:
    """Write rows of ``view`` as one content-addressed part; returns its key, or None when no
    rows were given. Rows without ``created`` get ``created`` (default: now). A part with the
    same rows already there is kept as it is (its ``created`` times included)."""
    frame = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows.copy()
    if frame.empty:
        return None
    if view not in VIEWS:
        raise ValueError(f"unknown feature view {view!r}; one of {VIEWS}")
    missing = [c for c in arrow_schema(view).names if c not in frame.columns and c != CREATED]
    if missing:
        raise ValueError(f"{view}: rows lack columns {missing}")
    if CREATED not in frame.columns:
        frame[CREATED] = created or datetime.now(timezone.utc)
    frame[CREATED] = frame[CREATED].fillna(created or datetime.now(timezone.utc))
    key = Keys.feature_part(view, rows_digest(view, frame))
    store = store or ObjectStore.from_config(cfg.storage)
    if store.exists(key):
        return key
    buf = io.BytesIO()
    pq.write_table(_to_table(view, frame), buf, compression="zstd")
    store.put_bytes(key, buf.getvalue(), content_type="application/vnd.apache.parquet")
    return key


def part_keys(store: ObjectStore, view: str) -> list[str]:
    return sorted(o.key for o in store.list(Keys.feature_prefix(view))
                  if o.key.endswith(".parquet"))


def read_part(store: ObjectStore, key: str) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(store.get_bytes(key))).to_pandas()


def read_offline(cfg: Config, view: str, store: ObjectStore | None = None) -> pd.DataFrame:
    """Every offline row of a view, as stored (all parts; column ``_part`` = the part's key)."""
    store = store or ObjectStore.from_config(cfg.storage)
    frames = []
    for key in part_keys(store, view):
        frame = read_part(store, key)
        frame["_part"] = key
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*arrow_schema(view).names, "_part"])
    return pd.concat(frames, ignore_index=True)


def views_with_rows(cfg: Config, store: ObjectStore | None = None) -> list[str]:
    """Views with at least one offline part (Feast's file source cannot read an empty folder)."""
    store = store or ObjectStore.from_config(cfg.storage)
    return [v for v in VIEWS if part_keys(store, v)]


# ----------------------------------------------------------------------------- apply, materialize


def apply_repo(cfg: Config) -> dict[str, Any]:
    """``feast apply`` of the repository's definitions to cfg's registry and online store."""
    defs = definitions(cfg)
    with s3_environment(cfg), redirect_stdout(sys.stderr):  # stdout is the CLI's JSON
        fs = feature_store(cfg)
        fs.apply(defs.objects())  # type: ignore[arg-type]
    return {"project": cfg.features.project, "registry": registry_path(cfg),
            "online_store": cfg.features.online_store, "offline_root": offline_root(cfg),
            "entities": ["conversation", "user", "pair"], "feature_views": list(defs.views)}


def materialize(cfg: Config, end: datetime | None = None,
                views: Iterable[str] | None = None) -> datetime:
    """Load the newest row per entity (event time <= ``end``, default now) of every view that
    has rows into the online store; returns ``end``. Always from MATERIALIZE_FROM (see there)."""
    end = _utc(end or datetime.now(timezone.utc)).to_pydatetime()
    store = ObjectStore.from_config(cfg.storage)
    present = set(views_with_rows(cfg, store))
    wanted = [v for v in (views or VIEWS) if v in present]
    if wanted:
        with s3_environment(cfg), redirect_stdout(sys.stderr):  # Feast prints progress
            feature_store(cfg).materialize(start_date=MATERIALIZE_FROM, end_date=end,
                                           feature_views=wanted)
    return end


def online_features(cfg: Config, view: str, ids: Iterable[str]) -> pd.DataFrame:
    """The online rows of ``ids`` (the view's entity key) as a DataFrame (missing = nulls)."""
    ids = list(ids)
    refs = [f"{view}:{name}" for name in FEATURES[view]]
    with s3_environment(cfg):
        response = feature_store(cfg).get_online_features(
            features=refs, entity_rows=[{VIEW_KEY[view]: i} for i in ids])
        return response.to_df()


# ----------------------------------------------------------------------------- erasure


def _matches(view: str, frame: pd.DataFrame, ids: dict[str, set[str]]) -> pd.Series:
    mask = pd.Series(False, index=frame.index)
    for column in ID_COLUMNS[view]:
        wanted = ids.get(column) or set()
        if wanted and column in frame.columns:
            mask |= frame[column].isin(wanted)
    return mask


def _id_sets(user_pseudonyms: Iterable[str], conversation_ids: Iterable[str],
             pair_ids: Iterable[str]) -> dict[str, set[str]]:
    return {"user_pseudonym": set(user_pseudonyms), "conversation_id": set(conversation_ids),
            "pair_id": set(pair_ids)}


def erase_entities(cfg: Config, *, user_pseudonyms: Iterable[str] = (),
                   conversation_ids: Iterable[str] = (), pair_ids: Iterable[str] = ()
                   ) -> dict[str, int]:
    """Remove every offline and online row that names one of these users, conversations or
    pairs. Offline: each part holding such rows is rewritten as a new content-addressed part
    without them (rows kept with their own ``created`` times), then every version of the old
    part is deleted. Online: the rows of every erased entity (the given ids plus the entities of
    the erased offline rows: a user's pairs and conversations) are deleted. Idempotent."""
    ids = _id_sets(user_pseudonyms, conversation_ids, pair_ids)
    store = ObjectStore.from_config(cfg.storage)
    counts = {"offline_rows": 0, "parts_rewritten": 0, "parts_deleted": 0,
              "object_versions_deleted": 0, "online_rows": 0}
    online_keys: dict[str, set[str]] = {view: set(ids[VIEW_KEY[view]]) for view in VIEWS}
    for view in VIEWS:
        for key in part_keys(store, view):
            frame = read_part(store, key)
            mask = _matches(view, frame, ids)
            if not mask.any():
                continue
            online_keys[view] |= set(frame.loc[mask, VIEW_KEY[view]])
            for column in ("conversation_id",):  # a user's conversations, from their pairs
                if view == PAIR_FEATURES and column in frame.columns:
                    online_keys[CONVERSATION_STATS] |= set(frame.loc[mask, column])
            counts["offline_rows"] += int(mask.sum())
            kept = frame.loc[~mask]
            if not kept.empty:
                new_key = write_rows(cfg, view, kept, store=store)
                counts["parts_rewritten"] += 1
                if new_key == key:  # cannot happen (rows differ), but never delete what we keep
                    continue
            counts["object_versions_deleted"] += store.delete_all_versions(key)
            counts["parts_deleted"] += 1
    counts["online_rows"] = _delete_online(cfg, online_keys)
    return counts


def _entity_key_bytes(view: str, value: str) -> bytes:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    proto = EntityKeyProto(join_keys=[VIEW_KEY[view]], entity_values=[ValueProto(string_val=value)])
    return serialize_entity_key(proto, entity_key_serialization_version=3)


def _sqlite_tables(conn: sqlite3.Connection, project: str) -> dict[str, str]:
    """view -> table name of the online store's tables of ``project``."""
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return {view: f"{project}_{view}" for view in VIEWS if f"{project}_{view}" in names}


def _redis_client(cfg: Config) -> Any:
    from feast.infra.online_stores.redis import RedisOnlineStore

    config = repo_config(cfg).online_store
    return RedisOnlineStore()._get_client(config)


def _delete_online(cfg: Config, keys: dict[str, set[str]]) -> int:
    """Delete the online rows of these entity keys (per view); returns how many entities had
    rows."""
    project = cfg.features.project
    deleted = 0
    if cfg.features.online_store == "redis":
        client = _redis_client(cfg)
        for view, values in keys.items():
            for value in sorted(values):
                deleted += int(client.delete(_entity_key_bytes(view, value) + project.encode()))
        return deleted
    path = sqlite_path(cfg)
    if not Path(path).exists():
        return 0
    conn = sqlite3.connect(path)
    try:
        # secure_delete zeroes the freed pages; VACUUM rebuilds the file: no byte of an erased
        # row survives in online.db (a file scan of the state dir finds nothing).
        conn.execute("PRAGMA secure_delete = ON")
        tables = _sqlite_tables(conn, project)
        with conn:
            for view, values in keys.items():
                if view not in tables:
                    continue
                for value in sorted(values):
                    cur = conn.execute(f'DELETE FROM "{tables[view]}" WHERE entity_key = ?',
                                       (_entity_key_bytes(view, value),))
                    deleted += 1 if cur.rowcount else 0
        if deleted:
            conn.execute("VACUUM")
    finally:
        conn.close()
    return deleted


def _online_rows(cfg: Config) -> Iterator[tuple[str, bytes, bytes]]:
    """(where, key bytes, value bytes) of every online row of cfg's project."""
    project = cfg.features.project
    if cfg.features.online_store == "redis":
        client = _redis_client(cfg)
        for key in client.scan_iter(match=b"*" + project.encode()):
            values = client.hgetall(key)
            yield "redis", bytes(key), b"\x00".join(bytes(k) + b"=" + bytes(v)
                                                    for k, v in values.items())
        return
    path = sqlite_path(cfg)
    if not Path(path).exists():
        return
    conn = sqlite3.connect(path)
    try:
        for view, table in _sqlite_tables(conn, project).items():
            for entity_key, value in conn.execute(f'SELECT entity_key, value FROM "{table}"'):
                yield f"sqlite:{view}", bytes(entity_key), bytes(value or b"")
    finally:
        conn.close()


def scan_entities(cfg: Config, *, user_pseudonyms: Iterable[str] = (),
                  conversation_ids: Iterable[str] = (), pair_ids: Iterable[str] = ()
                  ) -> dict[str, Any]:
    """What is left of these users, conversations and pairs in the feature store:
    ``{"offline": {view: rows}, "offline_parts": [keys], "online": {where: rows},
    "found": total}``. Online rows are searched byte-wise (entity keys and feature values), so
    an id is found in any view, as a key or as a value."""
    ids = _id_sets(user_pseudonyms, conversation_ids, pair_ids)
    store = ObjectStore.from_config(cfg.storage)
    offline: dict[str, int] = {}
    parts: list[str] = []
    for view in VIEWS:
        for key in part_keys(store, view):
            hits = int(_matches(view, read_part(store, key), ids).sum())
            if hits:
                offline[view] = offline.get(view, 0) + hits
                parts.append(key)
    needles = [v.encode() for values in ids.values() for v in values if v]
    online: dict[str, int] = {}
    if needles:
        for where, row_key, value in _online_rows(cfg):
            if any(n in row_key or n in value for n in needles):
                online[where] = online.get(where, 0) + 1
    return {"offline": offline, "offline_parts": parts, "online": online,
            "found": sum(offline.values()) + sum(online.values())}
