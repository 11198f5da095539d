"""Following manifests: the latest sealed batch, and a run's chain of stage manifests."""

from __future__ import annotations

from components.common.config import Config
from components.common.stagekit import load_manifest
from components.common.storage import ObjectStore
from components.contract import Manifest


def latest_raw_manifest(cfg: Config) -> str:
    store = ObjectStore.from_config(cfg.storage)
    newest = None
    for info in store.list("manifests/raw/", recursive=False):
        if info.key.endswith(".json") and (newest is None or info.last_modified > newest.last_modified):
            newest = info
    if newest is None:
        raise SystemExit("no raw manifest yet: run `duplexalign simulate` or `duplexalign seal`")
    return newest.key.rsplit("/", 1)[-1].removesuffix(".json")


def manifest_chain(store: ObjectStore, final_manifest_id: str) -> dict[str, Manifest]:
    """stage name → manifest, walking input_manifest_id links back to the raw batch."""
    chain: dict[str, Manifest] = {}
    current: str | None = final_manifest_id
    while current:
        manifest = load_manifest(store, current)
        chain[manifest.stage] = manifest
        current = manifest.input_manifest_id
    return dict(reversed(list(chain.items())))
