"""Immutable versions without a user: manifests and pair datasets rewritten as new versions.

Manifests and dataset versions are immutable and content-addressed, so a user is removed from
them by writing NEW versions without the user's items and deleting the old ones:

* manifests are visited parents first (``input_manifest_id`` links); a manifest is rewritten when
  an item or reject mentions the user, when its input was rewritten (so the chain stays
  walkable: the new one names the new input), or when its stats mention the user. Kept items
  have every string equal to a rewritten id (a manifest id, a dataset version) replaced by the
  new id; stats too, plus an ``erasure`` record (request id, the manifest it replaces, what went);
* a pair dataset is rewritten right after its input manifest (the resynthesize manifest), so the
  manifests after it (tokenize, whose stats name the dataset; validate, features, mix, train)
  name the new version. Identical shards are stored once, so a dataset that only lost its input
  id uploads no tensors again. Cached reference log-probs of the old version are deleted — or,
  when its pairs are unchanged, copied to the new version first (they are still exact);
* a rewritten manifest's reports (``reports/<stage>/<old id>/``) move to the new id; a stats
  value naming an old manifest id or dataset version, even inside a key or URI, is remapped;
* old manifests, old dataset manifests, and the shards only they referenced go, every version.

`plan_rewrites` works out all of it without writing (the dry run shows it); `apply_rewrites`
does it. The map old → new id is the lineage record the ledger keeps.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from components.common.stagekit import ManifestWriter, iter_shards
from components.common.storage import ObjectStore
from components.contract import (
    ItemError,
    Keys,
    Manifest,
    PairDatasetManifest,
    canonical_json,
)
from components.erase.scan import Identifiers, redact_json

_MANIFEST_KEY = re.compile(r"^manifests/[^/]+/[^/]+\.json$")
_DATASET_KEY = re.compile(r"^datasets/pairs/([^/]+)/manifest\.json$")


def list_manifests(store: ObjectStore) -> dict[str, Manifest]:
    out: dict[str, Manifest] = {}
    for info in store.list("manifests/"):
        if _MANIFEST_KEY.match(info.key):
            manifest = Manifest.model_validate(store.get_json(info.key))
            out[manifest.manifest_id] = manifest
    return out


def list_datasets(store: ObjectStore) -> dict[str, PairDatasetManifest]:
    out: dict[str, PairDatasetManifest] = {}
    for info in store.list("datasets/pairs/"):
        if _DATASET_KEY.match(info.key):
            dataset = PairDatasetManifest.model_validate(store.get_json(info.key))
            out[dataset.version] = dataset
    return out


def parents_first(manifests: dict[str, Manifest]) -> list[str]:
    """Manifest ids, every manifest after its input (inputs outside the set count as roots)."""
    children: dict[str | None, list[str]] = defaultdict(list)
    for mid, m in manifests.items():
        parent = m.input_manifest_id if m.input_manifest_id in manifests else None
        children[parent].append(mid)
    order: list[str] = []
    stack = sorted(children[None], reverse=True)
    while stack:
        mid = stack.pop()
        order.append(mid)
        stack.extend(sorted(children.get(mid, []), reverse=True))
    return order


# Manifest ids ("<stage>-<24 hex>") and dataset versions ("pairs-<24 hex>") are unique enough to
# be replaced inside longer strings too (a report key or URI naming its manifest).
_ID_LIKE = re.compile(r"^[a-z][a-z0-9_]*-[0-9a-f]{24}$")


def remap_strings(node: Any, mapping: dict[str, str]) -> Any:
    """Every string equal to an old id becomes the new one; an id-like old id (a manifest id or
    dataset version) is replaced inside longer strings too."""
    if not mapping:
        return node
    if isinstance(node, str):
        if node in mapping:
            return mapping[node]
        for old, new in mapping.items():
            if old in node and _ID_LIKE.match(old):
                node = node.replace(old, new)
        return node
    if isinstance(node, list):
        return [remap_strings(v, mapping) for v in node]
    if isinstance(node, dict):
        return {k: remap_strings(v, mapping) for k, v in node.items()}
    return node


# ----------------------------------------------------------------------------- the plan


@dataclass
class ManifestChange:
    old_id: str
    stage: str
    removed_items: int
    removed_rejects: int
    input_changed: bool
    stats_redacted: int
    new_id: str | None = None  # known once written (the dry run leaves it None)


@dataclass
class DatasetChange:
    old_version: str
    removed_pairs: list[str]
    input_changed: bool
    new_version: str | None = None
    reference_logps: str = ""  # "deleted" | "copied" | "none"


@dataclass
class RewritePlan:
    manifests: list[ManifestChange] = field(default_factory=list)
    datasets: list[DatasetChange] = field(default_factory=list)
    deleted_keys: list[dict[str, Any]] = field(default_factory=list)  # {"key", "versions"}

    @property
    def lineage(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {c.old_id: c.new_id for c in self.manifests}
        out.update({d.old_version: d.new_version for d in self.datasets})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"manifests": [c.__dict__ for c in self.manifests],
                "datasets": [d.__dict__ for d in self.datasets],
                "deleted": self.deleted_keys, "lineage": self.lineage}


def _dataset_pair_ids(store: ObjectStore, dataset: PairDatasetManifest) -> list[list[str]]:
    """Pair ids per shard, read from the shards' id arrays only (no tensors decompressed)."""
    import io

    import numpy as np

    out = []
    for key in dataset.shards:
        with np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False) as z:
            out.append([str(p) for p in z["pair_ids"]])
    return out


class _Rewriter:
    def __init__(self, store: ObjectStore, ids: Identifiers, request_id: str, dry_run: bool):
        self.store, self.ids, self.request_id, self.dry_run = store, ids, request_id, dry_run
        self.remap: dict[str, str] = {}  # old id -> new id (manifests and dataset versions)
        self.plan = RewritePlan()
        self._old_manifest_shards: set[str] = set()
        self._old_dataset_shards: set[str] = set()

    # -- manifests

    def manifest(self, m: Manifest) -> None:
        items = list(iter_shards(self.store, m.item_shards))
        rejects = list(iter_shards(self.store, m.reject_shards))
        keep_items = [i for i in items if not self.ids.mentions(canonical_json(i))]
        keep_rejects = [r for r in rejects if not self.ids.mentions(canonical_json(r))]
        new_input = self.remap.get(m.input_manifest_id or "", m.input_manifest_id)
        stats, redacted = redact_json(remap_strings(m.stats, self.remap), self.ids)
        changed_items = [remap_strings(i, self.remap) for i in keep_items]
        if (len(keep_items) == len(items) and len(keep_rejects) == len(rejects)
                and new_input == m.input_manifest_id and not redacted
                and changed_items == keep_items and stats == m.stats):
            return
        change = ManifestChange(m.manifest_id, m.stage, len(items) - len(keep_items),
                                len(rejects) - len(keep_rejects),
                                new_input != m.input_manifest_id, redacted)
        self.plan.manifests.append(change)
        if self.dry_run:
            self.remap[m.manifest_id] = f"(new {m.stage} manifest)"
            return
        for key, value in list(stats.items()):
            if key == "pairs_dataset" and isinstance(value, str) and value != m.stats.get(key):
                self._refresh_dataset_stats(stats, value)
        stats["erasure"] = {"request_id": self.request_id, "replaces": m.manifest_id,
                            "removed_items": change.removed_items,
                            "removed_rejects": change.removed_rejects,
                            "remapped": {old: new for old, new in self.remap.items()
                                         if old == m.input_manifest_id
                                         or old in canonical_json(m.stats)}}
        writer = ManifestWriter(self.store, m.stage, new_input)
        for item in changed_items:
            writer.add_item(item)
        for reject in keep_rejects:
            writer.add_reject(ItemError.model_validate(remap_strings(reject, self.remap)))
        new = writer.close(stats)
        change.new_id = new.manifest_id
        if new.manifest_id != m.manifest_id and m.manifest_id in canonical_json(stats):
            # stats that name the manifest itself (its report's key): the id is known only
            # now (ids do not cover stats), so the new manifest is put again with it
            new = new.model_copy(update={"stats": remap_strings(
                stats, {m.manifest_id: new.manifest_id})})
            self._replace(Keys.manifest(m.stage, new.manifest_id), new.model_dump(mode="json"),
                          record=False)
        if new.manifest_id == m.manifest_id:
            # Same items, same input, only the stats named the user: the id stays, the object is
            # replaced in place (the new version written, every older one deleted).
            self._replace(Keys.manifest(m.stage, m.manifest_id), new.model_dump(mode="json"))
            return
        self.remap[m.manifest_id] = new.manifest_id
        self._old_manifest_shards.update(m.item_shards + m.reject_shards)
        self._move_reports(m.stage, m.manifest_id, new.manifest_id)

    def _move_reports(self, stage: str, old: str, new: str) -> None:
        """``reports/<stage>/<old id>/`` follows its manifest to ``reports/<stage>/<new id>/``
        (copied, then every version of the old deleted); a report naming the user is then
        removed by the sweep like any other object."""
        prefix = Keys.report(stage, old, "")
        objects = [o for o in self.store.list(prefix) if not o.is_dir]
        for o in objects:
            self.store.copy(o.key, Keys.report(stage, new, o.key[len(prefix):]))
        if objects:
            n = self.store.delete_prefix_all_versions(prefix)
            self.plan.deleted_keys.append({"key": prefix, "versions": n,
                                           "moved_to": Keys.report(stage, new, "")})

    def _refresh_dataset_stats(self, stats: dict[str, Any], version: str) -> None:
        from components.streams.pairset import load_manifest as load_dataset

        try:
            ds = load_dataset(self.store, version)
        except Exception:  # noqa: BLE001 - the stats keep what they had
            return
        stats["pairs_dataset_pairs"] = ds.pairs
        if "pairs_dataset_shards" in stats:
            stats["pairs_dataset_shards"] = len(ds.shards)
        if "pairs_by_type" in stats:
            stats["pairs_by_type"] = ds.counts

    def _replace(self, key: str, payload: Any, record: bool = True) -> None:
        new_version = self.store.put_json(key, payload)
        old = [v for v in self.store.list_versions(key) if v.key == key
               and v.version_id != new_version]
        if old:
            self.store.delete_versions(old, key)
            if record:
                self.plan.deleted_keys.append({"key": key, "versions": len(old)})

    # -- datasets

    def dataset(self, ds: PairDatasetManifest) -> None:
        new_input = self.remap.get(ds.input_manifest_id, ds.input_manifest_id)
        shards = _dataset_pair_ids(self.store, ds)
        removed = [p for shard in shards for p in shard if p in self.ids.pair_ids
                   or self.ids.mentions(p)]
        if not removed and new_input == ds.input_manifest_id:
            return
        change = DatasetChange(ds.version, removed, new_input != ds.input_manifest_id)
        self.plan.datasets.append(change)
        if self.dry_run:
            self.remap[ds.version] = "(new dataset version)"
            return
        from components.streams.pairset import read_shard, write_dataset

        gone = set(removed)

        def kept() -> Iterator[Any]:
            for key in ds.shards:
                for pair in read_shard(self.store.get_bytes(key)):
                    if pair.pair_id not in gone:
                        yield pair

        per_shard = max((len(s) for s in shards), default=1) or 1
        new = write_dataset(self.store, kept(), input_manifest_id=new_input,
                            tokenizer_hash=ds.tokenizer_hash, codec_hash=ds.codec_hash,
                            num_codebooks=ds.num_codebooks, context_frames=ds.context_frames,
                            trailing_pad_frames=ds.trailing_pad_frames, pairs_per_shard=per_shard)
        change.new_version = new.version
        if new.version == ds.version:
            return
        self.remap[ds.version] = new.version
        self._old_dataset_shards.update(ds.shards)
        change.reference_logps = self._reference_logps(ds.version, new.version,
                                                       copy=not removed)

    def _reference_logps(self, old: str, new: str, *, copy: bool) -> str:
        prefix = Keys.reference_logps_prefix(old)
        objects = [o for o in self.store.list(prefix) if not o.is_dir]
        if not objects:
            return "none"
        if copy:  # the same pairs: the old version's reference log-probs are still exact
            for o in objects:
                self.store.copy(o.key, Keys.reference_logps_prefix(new) + o.key[len(prefix):])
        n = self.store.delete_prefix_all_versions(prefix)
        self.plan.deleted_keys.append({"key": prefix, "versions": n})
        return "copied" if copy else "deleted"

    # -- cleanup

    def delete_old(self) -> None:
        store = self.store
        for change in self.plan.manifests:
            if change.new_id and change.new_id != change.old_id:
                self._delete(Keys.manifest(change.stage, change.old_id))
        for ds_change in self.plan.datasets:
            if ds_change.new_version and ds_change.new_version != ds_change.old_version:
                self._delete(Keys.pair_dataset_manifest(ds_change.old_version))
        live_manifest_shards = {s for m in list_manifests(store).values()
                                for s in m.item_shards + m.reject_shards}
        for key in sorted(self._old_manifest_shards - live_manifest_shards):
            self._delete(key)
        live_dataset_shards = {s for d in list_datasets(store).values() for s in d.shards}
        for key in sorted(self._old_dataset_shards - live_dataset_shards):
            self._delete(key)

    def _delete(self, key: str) -> None:
        n = self.store.delete_all_versions(key)
        if n:
            self.plan.deleted_keys.append({"key": key, "versions": n})


def rewrite_without(store: ObjectStore, ids: Identifiers, *, request_id: str,
                    dry_run: bool = False, renamed: dict[str, str] | None = None) -> RewritePlan:
    """Rewrite every manifest and pair dataset that holds the user (see the module docstring);
    with ``dry_run`` only say what would be rewritten. ``renamed``: object keys already
    rewritten under a new key by someone else (Feast's offline parts), remapped like ids."""
    manifests = list_manifests(store)
    datasets = list_datasets(store)
    by_input: dict[str, list[PairDatasetManifest]] = defaultdict(list)
    for ds in datasets.values():
        by_input[ds.input_manifest_id].append(ds)
    rw = _Rewriter(store, ids, request_id, dry_run)
    rw.remap.update(renamed or {})
    done: set[str] = set()
    for mid in parents_first(manifests):
        rw.manifest(manifests[mid])
        for ds in sorted(by_input.get(mid, []), key=lambda d: d.version):
            rw.dataset(ds)
            done.add(ds.version)
    for version in sorted(set(datasets) - done):  # datasets whose input is no stored manifest
        rw.dataset(datasets[version])
    if not dry_run:
        rw.delete_old()
    return rw.plan


def describe(plan: RewritePlan) -> str:
    return json.dumps(plan.to_dict(), indent=1, default=str)
