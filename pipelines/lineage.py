"""Following manifests: the latest sealed batch, and a run's chain of stage manifests."""

from __future__ import annotations

from components.common.config import Config
from components.common.stagekit import manifest_chain  # noqa: F401 - re-exported for callers
from components.common.storage import ObjectStore


def latest_manifest(cfg: Config, stage: str) -> str:
    """The id of the newest manifest a stage wrote (SystemExit when there is none)."""
    store = ObjectStore.from_config(cfg.storage)
    newest = None
    for info in store.list(f"manifests/{stage}/", recursive=False):
        if info.key.endswith(".json") and (newest is None or info.last_modified > newest.last_modified):
            newest = info
    if newest is None:
        hint = ("run `duplexalign simulate` or `duplexalign seal`" if stage == "raw"
                else "run the pipeline first (`duplexalign run --latest`)")
        raise SystemExit(f"no {stage} manifest yet: {hint}")
    return newest.key.rsplit("/", 1)[-1].removesuffix(".json")


def latest_raw_manifest(cfg: Config) -> str:
    return latest_manifest(cfg, "raw")
