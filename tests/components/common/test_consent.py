"""The consent registry on both backends: sqlite (local) and a real PostgreSQL (cluster)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

from components.common.config import ConsentConfig
from components.common.consent import ConsentRegistry

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def registry_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """(dsn, password) of an EMPTY database: a fresh sqlite file, or a fresh PostgreSQL database
    on the session's server (so tests never see each other's rows)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/consent.db", None
        return
    import psycopg

    base_dsn: str = request.getfixturevalue("postgres_dsn")
    password: str = request.getfixturevalue("postgres_password")
    name = f"consent_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base_dsn, password=password, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield base_dsn.rsplit("/", 1)[0] + f"/{name}", password
    with psycopg.connect(base_dsn, password=password, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def registry(registry_dsn: tuple[str, str | None]) -> Iterator[ConsentRegistry]:
    dsn, password = registry_dsn
    reg = ConsentRegistry.from_dsn(dsn, password=password)
    reg.migrate()
    yield reg
    reg.close()


def test_grant_withdraw_and_history(registry: ConsentRegistry) -> None:
    rec = registry.set_consent("u-1", True, at=T0, source="signup-form")
    assert rec.granted and rec.changed_at == T0 and rec.source == "signup-form"
    assert registry.has_consent("u-1")

    registry.set_consent("u-1", False, at=T0 + timedelta(days=3), source="privacy-portal")
    assert not registry.has_consent("u-1")
    current = registry.get("u-1")
    assert current is not None
    assert (current.granted, current.changed_at, current.source) == (
        False, T0 + timedelta(days=3), "privacy-portal")

    history = registry.history("u-1")
    assert [(h.granted, h.changed_at, h.source) for h in history] == [
        (True, T0, "signup-form"),
        (False, T0 + timedelta(days=3), "privacy-portal"),
    ]
    assert registry.counts() == {"history": 2, "current": 1, "granted": 0}


def test_unknown_user_has_no_consent(registry: ConsentRegistry) -> None:
    assert registry.get("nobody") is None
    assert registry.has_consent("nobody") is False
    assert registry.bulk_get(["nobody"]) == {}
    assert registry.history("nobody") == []


def test_bulk_get_spans_chunks_and_skips_unknown(registry: ConsentRegistry) -> None:
    users = [f"u-{i:04d}" for i in range(620)]  # > one 500-id chunk
    for i, user in enumerate(users):
        registry.set_consent(user, i % 3 != 0, at=T0)
    got = registry.bulk_get(users + ["unknown-1", users[0]])
    assert set(got) == set(users)
    assert all(got[u].granted == (i % 3 != 0) for i, u in enumerate(users))


def test_older_event_is_kept_in_history_but_does_not_override(registry: ConsentRegistry) -> None:
    registry.set_consent("u-2", False, at=T0 + timedelta(hours=2), source="withdrawal")
    late = registry.set_consent("u-2", True, at=T0, source="replayed-old-grant")
    assert late.granted is False  # the newer withdrawal stands
    assert not registry.has_consent("u-2")
    assert [h.source for h in registry.history("u-2")] == ["replayed-old-grant", "withdrawal"]


def test_timestamps_are_utc_whatever_zone_comes_in(registry: ConsentRegistry) -> None:
    cet = timezone(timedelta(hours=1))
    rec = registry.set_consent("u-3", True, at=datetime(2026, 3, 1, 13, 0, tzinfo=cet))
    assert rec.changed_at == T0 and rec.changed_at.tzinfo is not None
    assert rec.changed_at.utcoffset() == timedelta(0)
    naive = registry.set_consent("u-4", True, at=datetime(2026, 3, 1, 12, 0))
    assert naive.changed_at == T0  # naive = already UTC
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    assert registry.set_consent("u-5", True).changed_at >= before  # default: now


def test_set_consent_is_one_transaction(registry: ConsentRegistry) -> None:
    registry.set_consent("u-6", True, at=T0)
    # Break the second statement: the history row written just before must be rolled back.
    registry._upsert_current_sql = "INSERT INTO no_such_table (x) VALUES (?, ?, ?, ?, ?)"
    with pytest.raises(Exception):
        registry.set_consent("u-6", False, at=T0 + timedelta(days=1))
    del registry._upsert_current_sql  # back to the class's statement
    assert registry.has_consent("u-6")
    assert len(registry.history("u-6")) == 1
    assert registry.counts() == {"history": 1, "current": 1, "granted": 1}
    # The connection is usable again after the rollback.
    registry.set_consent("u-6", False, at=T0 + timedelta(days=1))
    assert not registry.has_consent("u-6")


def test_usable_from_worker_threads(registry: ConsentRegistry) -> None:
    """Stages check consent from thread pools; one registry is shared by the workers."""
    from concurrent.futures import ThreadPoolExecutor

    def work(i: int) -> bool:
        registry.set_consent(f"t-{i}", i % 2 == 0, at=T0)
        return registry.has_consent(f"t-{i}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(40)))
    assert results == [i % 2 == 0 for i in range(40)]
    assert registry.counts()["history"] == 40


def test_migrate_is_idempotent_and_data_persists(registry_dsn: tuple[str, str | None]) -> None:
    dsn, password = registry_dsn
    with ConsentRegistry.from_dsn(dsn, password=password) as reg:
        reg.migrate()
        reg.migrate()
        reg.set_consent("u-7", True, at=T0)
    with ConsentRegistry.from_dsn(dsn, password=password) as reg:
        reg.migrate()
        assert reg.has_consent("u-7") and len(reg.history("u-7")) == 1


def test_rejects_empty_user_and_unknown_scheme(tmp_path: Path) -> None:
    with ConsentRegistry.from_dsn(f"sqlite:///{tmp_path}/c.db") as reg:
        reg.migrate()
        with pytest.raises(ValueError):
            reg.set_consent("", True)
    with pytest.raises(ValueError, match="sqlite:///"):
        ConsentRegistry.from_dsn("mysql://x@y/z")


@pytest.mark.postgres
def test_postgres_needs_the_password_from_the_secret(
    postgres_dsn: str, postgres_password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises(psycopg.OperationalError):
        ConsentRegistry.from_dsn(postgres_dsn, password="wrong-password")
    # from_config reads the password from the env var the config names (a Kubernetes Secret).
    monkeypatch.setenv("T_CONSENT_PW", postgres_password)
    cfg = ConsentConfig(dsn=postgres_dsn, password_env="T_CONSENT_PW")
    with ConsentRegistry.from_config(cfg) as reg:
        assert reg.backend == "postgresql"
