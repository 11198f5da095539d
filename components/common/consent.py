"""The consent registry: the single source of truth for whether a user's conversations may be used.

Keyed by the *pseudonymous* user id (the keyed hash from the scrub stage, never a raw id), it
holds for every user the current consent state (granted / withdrawn) and when it changed, plus an
append-only history of every change (who said what, when, through which channel) for audits.

Two tables, written in ONE transaction by :meth:`ConsentRegistry.set_consent`:

* ``consent_history``: append-only; one row per change, never updated or deleted.
* ``consent_current``: one row per user, the latest state (what ingest asks for every item).

If the process dies between the two writes, the transaction rolls both back: the current state
can never disagree with the history. A late-arriving older event (``at`` earlier than the current
state's time) is recorded in the history but does not overwrite the newer current state.

Backends: sqlite locally (``sqlite:///relative/path.db``, ``sqlite:////abs/path.db``, the
SQLAlchemy convention) and PostgreSQL in a cluster (``postgresql://user@host:port/db``, password
passed separately from a secret). The SQL is the same for both (``INSERT ... ON CONFLICT ... DO
UPDATE ... WHERE`` and ``RETURNING`` exist in sqlite >= 3.35 and PostgreSQL); the differences
(parameter style, identity column, timestamp type, transaction start) live in :class:`_Dialect`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from components.common.config import ConsentConfig

# Bulk lookups are chunked so the IN (...) list stays far below sqlite's variable limit.
_BULK_CHUNK = 500
# Fixed-width UTC text for sqlite: lexicographic order == chronological order, which the
# "newer event wins" comparison in the upsert relies on.
_SQLITE_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"


@dataclass(frozen=True)
class ConsentRecord:
    user_id: str
    granted: bool
    changed_at: datetime  # timezone-aware, UTC
    source: str


class _Dialect:
    """Everything that differs between sqlite and PostgreSQL, in one place."""

    name: str = "base"
    id_column: str = ""
    ts_type: str = ""

    def sql(self, query: str) -> str:
        return query

    def ts_in(self, value: datetime) -> Any:
        return value

    def ts_out(self, value: Any) -> datetime:
        return value

    @contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        raise NotImplementedError
        yield  # pragma: no cover


class _SqliteDialect(_Dialect):
    name = "sqlite"
    id_column = "id INTEGER PRIMARY KEY AUTOINCREMENT"
    ts_type = "TEXT"

    def ts_in(self, value: datetime) -> str:
        return value.astimezone(timezone.utc).strftime(_SQLITE_TS_FORMAT)

    def ts_out(self, value: Any) -> datetime:
        return datetime.fromisoformat(str(value)).astimezone(timezone.utc)

    @contextmanager
    def transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Cursor]:
        # The connection is in autocommit mode (isolation_level=None) so transactions are
        # explicit. IMMEDIATE takes the write lock up front: two writers wait (busy_timeout)
        # instead of deadlocking when both try to upgrade a read lock.
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()
        finally:
            cur.close()


class _PostgresDialect(_Dialect):
    name = "postgresql"
    id_column = "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    ts_type = "TIMESTAMPTZ"

    def sql(self, query: str) -> str:
        # psycopg uses %s placeholders; our SQL uses ? and contains no literal ? or %.
        return query.replace("?", "%s")

    def ts_out(self, value: Any) -> datetime:
        return value.astimezone(timezone.utc)

    @contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        # The connection is autocommit (reads never leave it idle-in-transaction);
        # conn.transaction() issues BEGIN ... COMMIT, or ROLLBACK on an exception.
        with conn.transaction():
            with conn.cursor() as cur:
                yield cur


def _utc(at: datetime | None) -> datetime:
    """Now, or ``at`` in UTC. A naive datetime is taken to be UTC already (what every component
    of this project writes); aware ones are converted."""
    if at is None:
        return datetime.now(timezone.utc)
    if at.tzinfo is None:
        return at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc)


class ConsentRegistry:
    """Consent state per pseudonymous user id. Unknown user = no consent."""

    # SQL kept as attributes: one text for both backends, and tests can break one statement on
    # purpose to prove the two writes of set_consent are atomic.
    _insert_history_sql = (
        "INSERT INTO consent_history (user_id, granted, changed_at, source, recorded_at) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id"
    )
    _upsert_current_sql = (
        "INSERT INTO consent_current (user_id, granted, changed_at, source, history_id) "
        "VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET "
        "granted = excluded.granted, changed_at = excluded.changed_at, "
        "source = excluded.source, history_id = excluded.history_id "
        "WHERE excluded.changed_at >= consent_current.changed_at"
    )

    def __init__(self, conn: Any, dialect: _Dialect, dsn_for_display: str = "") -> None:
        self._conn = conn
        self._dialect = dialect
        self._dsn = dsn_for_display
        # Stages look consent up from worker threads. One connection is shared, so every use of
        # it is serialised: sqlite connections must not be used concurrently, and interleaved
        # statements of two threads on one PostgreSQL connection would share a transaction.
        self._lock = threading.RLock()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_dsn(cls, dsn: str, password: str | None = None) -> "ConsentRegistry":
        """Open ``sqlite:///path`` or ``postgresql://user@host:port/db`` (``password`` from a
        secret; when None, libpq's usual sources such as PGPASSWORD/.pgpass still apply)."""
        if dsn.startswith("sqlite:///"):
            path = dsn[len("sqlite:///"):]
            if path != ":memory:":
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: safe because every use goes through self._lock.
            conn = sqlite3.connect(
                path, isolation_level=None, timeout=30.0, check_same_thread=False
            )
            # WAL: readers (ingest workers) never block the writer and vice versa.
            if path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            return cls(conn, _SqliteDialect(), dsn)
        if dsn.startswith(("postgresql://", "postgres://")):
            import psycopg  # imported here: sqlite-only users need no libpq

            kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
            if password is not None:
                kwargs["password"] = password
            pg_conn = psycopg.connect(dsn, **kwargs)
            return cls(pg_conn, _PostgresDialect(), dsn)
        raise ValueError(
            "consent DSN must start with sqlite:/// or postgresql:// "
            f"(got {dsn.split('://', 1)[0]!r}://...)"
        )

    @classmethod
    def from_config(cls, cfg: ConsentConfig) -> "ConsentRegistry":
        password = os.environ.get(cfg.password_env) if cfg.password_env else None
        return cls.from_dsn(cfg.resolved_dsn(), password=password or None)

    @property
    def backend(self) -> str:
        return self._dialect.name

    def __enter__(self) -> "ConsentRegistry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- schema --------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create the tables if absent. Idempotent; safe on every start."""
        d = self._dialect
        statements = [
            f"""CREATE TABLE IF NOT EXISTS consent_history (
                {d.id_column},
                user_id TEXT NOT NULL,
                granted BOOLEAN NOT NULL,
                changed_at {d.ts_type} NOT NULL,
                source TEXT NOT NULL,
                recorded_at {d.ts_type} NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS consent_history_user_idx "
            "ON consent_history (user_id, changed_at)",
            f"""CREATE TABLE IF NOT EXISTS consent_current (
                user_id TEXT PRIMARY KEY,
                granted BOOLEAN NOT NULL,
                changed_at {d.ts_type} NOT NULL,
                source TEXT NOT NULL,
                history_id BIGINT NOT NULL
            )""",
        ]
        with self._lock, d.transaction(self._conn) as cur:
            for statement in statements:
                cur.execute(statement)

    # -- writes --------------------------------------------------------------------------------

    def set_consent(
        self,
        user_id: str,
        granted: bool,
        at: datetime | None = None,
        source: str = "registry-api",
    ) -> ConsentRecord:
        """Record a consent change (history + current state, one transaction).

        Returns the user's *current* record afterwards: the new one, or the existing newer one
        when this event is older than the current state (it is still kept in the history).
        """
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be a non-empty string (the pseudonymous id)")
        changed_at = _utc(at)
        d = self._dialect
        with self._lock, d.transaction(self._conn) as cur:
            cur.execute(
                d.sql(self._insert_history_sql),
                (user_id, bool(granted), d.ts_in(changed_at), source, d.ts_in(_utc(None))),
            )
            history_id = cur.fetchone()[0]
            cur.execute(
                d.sql(self._upsert_current_sql),
                (user_id, bool(granted), d.ts_in(changed_at), source, history_id),
            )
            cur.execute(
                d.sql(
                    "SELECT user_id, granted, changed_at, source FROM consent_current "
                    "WHERE user_id = ?"
                ),
                (user_id,),
            )
            row = cur.fetchone()
        return self._record(row)

    # -- reads ---------------------------------------------------------------------------------

    def _record(self, row: Sequence[Any]) -> ConsentRecord:
        return ConsentRecord(
            user_id=str(row[0]),
            granted=bool(row[1]),
            changed_at=self._dialect.ts_out(row[2]),
            source=str(row[3]),
        )

    def _query(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute(self._dialect.sql(sql), tuple(params))
                return list(cur.fetchall())
            finally:
                cur.close()

    def get(self, user_id: str) -> ConsentRecord | None:
        rows = self._query(
            "SELECT user_id, granted, changed_at, source FROM consent_current WHERE user_id = ?",
            (user_id,),
        )
        return self._record(rows[0]) if rows else None

    def has_consent(self, user_id: str) -> bool:
        """True only for a user whose current state is "granted"; unknown users have none."""
        record = self.get(user_id)
        return bool(record and record.granted)

    def bulk_get(self, user_ids: Iterable[str]) -> dict[str, ConsentRecord]:
        """Current records of the *known* users among ``user_ids`` (absent = no consent)."""
        unique = list(dict.fromkeys(user_ids))
        out: dict[str, ConsentRecord] = {}
        for start in range(0, len(unique), _BULK_CHUNK):
            chunk = unique[start:start + _BULK_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            for row in self._query(
                "SELECT user_id, granted, changed_at, source FROM consent_current "
                f"WHERE user_id IN ({marks})",
                chunk,
            ):
                record = self._record(row)
                out[record.user_id] = record
        return out

    def history(self, user_id: str) -> list[ConsentRecord]:
        """Every recorded change of one user, oldest first (by event time, then arrival)."""
        rows = self._query(
            "SELECT user_id, granted, changed_at, source FROM consent_history "
            "WHERE user_id = ? ORDER BY changed_at, id",
            (user_id,),
        )
        return [self._record(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Row counts (history, current, granted): for status output and tests."""
        history = self._query("SELECT COUNT(*) FROM consent_history", ())[0][0]
        current = self._query("SELECT COUNT(*) FROM consent_current", ())[0][0]
        granted = self._query(
            "SELECT COUNT(*) FROM consent_current WHERE granted = ?", (True,)
        )[0][0]
        return {"history": int(history), "current": int(current), "granted": int(granted)}
