"""The loop every stage shares: per-item completion markers, per-item errors, sealed manifests.

Why markers: KFP's local runner has no retries and a cluster pod can be killed at any moment, so
idempotency must live in the stage. Each item's outputs are written to deterministic keys first,
then its marker; a rerun skips items that have a marker and redoes the rest, so every item is
processed exactly once in effect and nothing is doubled. The output manifest is built from the
markers' results in input order, so it is the same whether the run was interrupted or not.

Why shards: manifests are streamed in and out in fixed-size JSONL shards, so a stage's memory
does not grow with the number of conversations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

from components.common.storage import ObjectStore
from components.contract import ItemError, ItemResult, Keys, Manifest, canonical_json

log = logging.getLogger("duplexalign.stage")

SHARD_ITEMS = 1000
# Items in flight at once: bounds memory when a stage runs items concurrently.
WINDOW = 64


class ItemFailure(Exception):
    """A per-item problem: recorded with its code and reason, and the run goes on."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


# ----------------------------------------------------------------------------- manifests


class ManifestWriter:
    """Accumulates items/rejects into content-addressed shards; `close` seals the manifest."""

    def __init__(self, store: ObjectStore, stage: str, input_manifest_id: str | None,
                 shard_items: int = SHARD_ITEMS):
        self.store, self.stage, self.input_manifest_id = store, stage, input_manifest_id
        self.shard_items = shard_items
        self._items: list[str] = []
        self._rejects: list[str] = []
        self.item_shards: list[str] = []
        self.reject_shards: list[str] = []
        self.counts: Counter[str] = Counter()

    def _flush(self, lines: list[str], shards: list[str]) -> None:
        if not lines:
            return
        body = ("\n".join(lines) + "\n").encode()
        key = Keys.manifest_shard(self.stage, hashlib.sha256(body).hexdigest())
        if not self.store.exists(key):
            self.store.put_bytes(key, body, content_type="application/x-ndjson")
        shards.append(key)
        lines.clear()

    def add_item(self, item: dict[str, Any]) -> None:
        self._items.append(canonical_json(item))
        self.counts["items"] += 1
        if len(self._items) >= self.shard_items:
            self._flush(self._items, self.item_shards)

    def add_reject(self, reject: ItemError) -> None:
        self._rejects.append(canonical_json(reject.model_dump()))
        self.counts["rejected"] += 1
        self.counts[f"rejected:{reject.code}"] += 1
        if len(self._rejects) >= self.shard_items:
            self._flush(self._rejects, self.reject_shards)

    def seal_id(self) -> str:
        """The id ``close`` will give the manifest, known before it is written (a stage can put
        the id into a report's key first). Flushes what is buffered to its shards; adding more
        afterwards changes the id."""
        self._flush(self._items, self.item_shards)
        self._flush(self._rejects, self.reject_shards)
        return Manifest(stage=self.stage, input_manifest_id=self.input_manifest_id,
                        item_shards=self.item_shards, reject_shards=self.reject_shards).content_id()

    def close(self, stats: dict[str, Any] | None = None) -> Manifest:
        self._flush(self._items, self.item_shards)
        self._flush(self._rejects, self.reject_shards)
        manifest = Manifest(
            stage=self.stage,
            input_manifest_id=self.input_manifest_id,
            item_shards=self.item_shards,
            reject_shards=self.reject_shards,
            counts=dict(self.counts),
            stats=stats or {},
        ).sealed()
        key = Keys.manifest(manifest.stage, manifest.manifest_id)
        if not self.store.exists(key):  # immutable: an identical rerun never rewrites it
            self.store.put_json(key, manifest.model_dump(mode="json"))
        return manifest


def stage_of(manifest_id: str) -> str:
    """Manifest ids are "<stage>-<hash>": the stage that wrote it is recoverable from the id."""
    return manifest_id.rsplit("-", 1)[0]


def load_manifest(store: ObjectStore, manifest_id: str) -> Manifest:
    return Manifest.model_validate(store.get_json(Keys.manifest(stage_of(manifest_id), manifest_id)))


def iter_shards(store: ObjectStore, keys: list[str]) -> Iterator[dict[str, Any]]:
    """The records of manifest shards ``keys`` (items or rejects, as stored), in order."""
    for key in keys:
        for line in store.get_bytes(key).decode().splitlines():
            if line:
                yield json.loads(line)


def manifest_chain(store: ObjectStore, final_manifest_id: str) -> dict[str, Manifest]:
    """stage name → manifest, walking input_manifest_id links back to the raw batch (in
    pipeline order)."""
    chain: dict[str, Manifest] = {}
    current: str | None = final_manifest_id
    while current:
        manifest = load_manifest(store, current)
        chain[manifest.stage] = manifest
        current = manifest.input_manifest_id
    return dict(reversed(list(chain.items())))


def iter_items(store: ObjectStore, manifest: Manifest) -> Iterator[dict[str, Any]]:
    return iter_shards(store, manifest.item_shards)


def iter_rejects(store: ObjectStore, manifest: Manifest) -> Iterator[ItemError]:
    return (ItemError.model_validate(r) for r in iter_shards(store, manifest.reject_shards))


# ----------------------------------------------------------------------------- the item loop


@dataclass
class StageRun:
    stage: str
    input_manifest_id: str
    manifest: Manifest
    processed: int  # items processed in THIS run (the rest were already done)
    skipped: int
    seconds: float


def _is_final(result: ItemResult) -> bool:
    # An "internal" failure may be transient (a bug fixed, a server back up): retry it on rerun.
    return not (result.status == "failed" and result.error and result.error.code == "internal")


def _existing(store: ObjectStore, marker_key: str) -> ItemResult | None:
    """The item's final result from an earlier run, or None if it must be (re)processed."""
    if store.stat(marker_key) is None:
        return None
    existing = ItemResult.model_validate(store.get_json(marker_key))
    return existing if _is_final(existing) else None


def _process_one(store: ObjectStore, stage: str, marker_key: str,
                 process: Callable[[Any], dict[str, Any] | None],
                 item_id: str, item: Any) -> ItemResult:
    try:
        output = process(item)
        result = ItemResult(item=item_id, status="done" if output is not None else "dropped",
                            output=output)
    except ItemFailure as exc:
        result = ItemResult(item=item_id, status="failed",
                            error=ItemError(item=item_id, code=exc.code, reason=exc.reason))
    except Exception as exc:  # noqa: BLE001 - a bug on one item must not lose the others
        log.exception("%s: item %s failed", stage, item_id)
        result = ItemResult(item=item_id, status="failed",
                            error=ItemError(item=item_id, code="internal",
                                            reason=f"{type(exc).__name__}: {exc}"))
    store.put_json(marker_key, result.model_dump(mode="json"))
    return result


def run_items(
    store: ObjectStore,
    stage: str,
    input_manifest_id: str,
    items: Iterable[tuple[str, Any]],
    process: Callable[[Any], dict[str, Any] | None],
    total: int | None = None,
    concurrency: int = 1,
    carried_rejects: Iterable[ItemError] = (),
    extra_stats: Callable[[], dict[str, Any]] | None = None,
    prefetch: Callable[[list[Any]], None] | None = None,
    window: int = WINDOW,
    on_result: Callable[[Any, ItemResult], None] | None = None,
) -> StageRun:
    """Process every (item_id, item) not yet marked done; seal and write the output manifest.

    `process` returns the item's output record (goes into the manifest), or None when the item is
    dropped without error; it raises ItemFailure for a per-item error. Any other exception is
    caught per item too (code "internal") so one bad item never stops the run. Items go in
    windows of `window` items, so memory stays bounded; with concurrency > 1 a window's items run
    on a thread pool (I/O-bound stages). `prefetch`, if given, first receives each window's
    items that still need processing, so a stage can work on them as a batch (transcribe packs
    several conversations into one Whisper window) before `process` writes each item's outputs.
    Results are written in input order either way. `on_result(item, result)`, if given, sees
    EVERY item's result in input order — processed now or read from an earlier run's marker — so
    a stage can tally the whole manifest (before `extra_stats` runs) without reading the markers
    again."""
    t0 = time.monotonic()
    writer = ManifestWriter(store, stage, input_manifest_id)
    for reject in carried_rejects:
        writer.add_reject(reject)
    status = Counter[str]()
    processed = skipped = done = 0
    iterator = iter(items)
    pool = ThreadPoolExecutor(concurrency) if concurrency > 1 else None
    last_print = 0.0
    try:
        while entries := list(islice(iterator, window)):
            markers = [Keys.item_state(stage, input_manifest_id, item_id) for item_id, _ in entries]
            known = list((pool.map if pool else map)(lambda k: _existing(store, k), markers))
            pending = [i for i, result in enumerate(known) if result is None]
            if prefetch and pending:
                prefetch([entries[i][1] for i in pending])
            run = lambda i: _process_one(store, stage, markers[i], process, *entries[i])  # noqa: E731
            outcomes = iter((pool.map if pool else map)(run, pending))  # lazy: live progress
            for i in range(len(entries)):
                is_fresh = known[i] is None
                result = next(outcomes) if is_fresh else known[i]
                done += 1
                status[result.status] += 1
                if on_result is not None:
                    on_result(entries[i][1], result)
                processed += is_fresh
                skipped += not is_fresh
                if result.status == "done" and result.output is not None:
                    writer.add_item(result.output)
                elif result.error is not None:
                    writer.add_reject(result.error)
                now = time.monotonic()
                if is_fresh and (concurrency == 1 or now - last_print > 2.0):
                    last_print = now
                    of = f"/{total}" if total else ""
                    print(f"[{stage}] {done}{of} {result.item} {result.status} "
                          f"({now - t0:.1f}s)", file=sys.stderr, flush=True)
    finally:
        if pool:
            pool.shutdown()
    stats = {"done": status["done"], "failed": status["failed"], "dropped": status["dropped"],
             "seconds": round(time.monotonic() - t0, 2)}
    if extra_stats:
        stats.update(extra_stats())
    manifest = writer.close(stats)
    return StageRun(stage, input_manifest_id, manifest, processed, skipped, time.monotonic() - t0)
