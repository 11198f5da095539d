"""Following manifests: the latest sealed batch, and a run's chain of stage manifests."""

from __future__ import annotations

from components.common.config import Config
from components.common.stagekit import manifest_chain  # noqa: F401 - re-exported for callers
from components.common.storage import ObjectStore


def latest_raw_manifest(cfg: Config) -> str:
    store = ObjectStore.from_config(cfg.storage)
    newest = None
    for info in store.list("manifests/raw/", recursive=False):
        if info.key.endswith(".json") and (newest is None or info.last_modified > newest.last_modified):
            newest = info
    if newest is None:
        raise SystemExit("no raw manifest yet: run `duplexalign simulate` or `duplexalign seal`")
    return newest.key.rsplit("/", 1)[-1].removesuffix(".json")
