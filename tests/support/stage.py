"""Per-test isolation on the shared live services: a fresh versioned bucket, consent registry
and pseudonymisation key for every test that runs a stage."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from components.common.config import Config
from components.common.consent import ConsentRegistry
from components.common.privacy import load_pseudonym_key, pseudonymise
from components.common.storage import ObjectStore


@pytest.fixture
def stage_cfg(services_config: Config, tmp_path) -> Iterator[Config]:
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    cfg = services_config.model_copy(deep=True)
    cfg.storage.bucket = bucket
    cfg.consent.dsn = f"sqlite:///{tmp_path}/consent.db"
    cfg.scrub.pseudonym_key_file = str(tmp_path / "pseudonym.key")
    cfg.scrub.vacuum_after = False
    cfg.transcribe.model_cache_dir = services_config.transcribe.model_cache_dir
    store = ObjectStore.from_config(cfg.storage)
    store.ensure_bucket(versioning=True)
    load_pseudonym_key(cfg.scrub, create=True)
    yield cfg
    # SeaweedFS gives every bucket its own volumes: remove the bucket so a long session does
    # not run out of them.
    store.delete_prefix_all_versions("", allow_whole_bucket=True)
    store.client.remove_bucket(bucket)


@pytest.fixture
def stage_store(stage_cfg: Config) -> ObjectStore:
    return ObjectStore.from_config(stage_cfg.storage)


def grant(cfg: Config, *user_ids: str, granted: bool = True) -> None:
    registry = ConsentRegistry.from_dsn(cfg.consent.dsn)
    registry.migrate()
    key = load_pseudonym_key(cfg.scrub)
    for user in user_ids:
        registry.set_consent(pseudonymise(user, key), granted)
    registry.close()
