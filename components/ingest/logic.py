"""ingest: logged conversations in → validated, consented, deduplicated manifest out.

Input is a RAW manifest (pinned object versions of one logged batch, made by `seal_raw_batch`);
the only place a mutable prefix is ever listed is that sealing step. Output is the "ingest"
manifest of IngestedItem records. Per item, in order:
  1. contract validation (validate.py) → reject with a code and reason, keep going;
  2. dedupe by conversation id (within the batch and against earlier runs);
  3. consent from the consent registry (single source of truth) → no consent: every version of
     the conversation's raw objects is deleted and a privacy ledger entry written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone

from components.common.config import Config
from components.common.consent import ConsentRegistry
from components.common.privacy import load_pseudonym_key, pseudonymise
from components.common.stagekit import (
    ItemFailure,
    ManifestWriter,
    StageRun,
    iter_items,
    iter_rejects,
    load_manifest,
    run_items,
)
from components.common.storage import ABSENT_CODES, ObjectStore, StorageError
from components.contract import (
    IngestedItem,
    Keys,
    Manifest,
    ObjectRef,
    PrivacyLedgerEntry,
    RawItem,
)
from components.ingest.validate import validate_conversation

STAGE = "ingest"
# Marker of every conversation id ever ingested, to dedupe across batches and runs.
SEEN_PREFIX = "state/ingest/seen/"


def seal_raw_batch(store: ObjectStore, prefix: str, pending_only: bool = False) -> str:
    """List a logged batch ONCE, pin every object's version, write the immutable raw manifest.

    Objects are grouped by their conversation folder (`<prefix>.../<conversation_id>/<name>`);
    anything else is kept as an item too, so ingest reports it instead of silently ignoring it.
    ``pending_only``: leave out conversations ingest has already seen (a scheduled run seals
    everything logged under ``raw/`` since the last one: nothing is ingested twice)."""
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    writer = ManifestWriter(store, "raw", None)
    groups: dict[str, dict[str, ObjectRef]] = defaultdict(dict)
    # ListObjectVersions, not ListObjects: only it carries version ids (on SeaweedFS too).
    for version in store.list_versions(prefix):
        if not version.is_latest or version.is_delete_marker:
            continue
        folder, _, name = version.key.rpartition("/")
        groups[folder + "/"][name] = ObjectRef(key=version.key, version_id=version.version_id,
                                               size=version.size)
    for folder in sorted(groups):
        cid = folder.rstrip("/").rsplit("/", 1)[-1]
        if pending_only and store.exists(SEEN_PREFIX + f"{cid}.json"):
            continue
        writer.add_item(RawItem(conversation_id=cid, prefix=folder,
                                objects=dict(sorted(groups[folder].items()))).model_dump(mode="json"))
    return writer.close({"prefix": prefix}).manifest_id


def delete_conversation_objects(store: ObjectStore, item: RawItem) -> list[dict]:
    """Delete every version of every raw object of a conversation; returns what was deleted."""
    return [{"key": ref.key, "versions": store.delete_all_versions(ref.key)}
            for ref in item.objects.values()]


def _ledger(store: ObjectStore, item: RawItem, pseudonym: str, run: str, deleted: list[dict],
            note: str) -> None:
    entry = PrivacyLedgerEntry(conversation_id=item.conversation_id, user_pseudonym=pseudonym,
                               run=run, at=datetime.now(timezone.utc), deleted=deleted,
                               redactions=[], muted_model_audio_s=0.0, note=note)
    store.put_json(Keys.privacy_ledger(item.conversation_id, run), entry.model_dump(mode="json"))


def ingest(cfg: Config, input_manifest_id: str, concurrency: int = 8) -> StageRun:
    store = ObjectStore.from_config(cfg.storage)
    manifest = load_manifest(store, input_manifest_id)
    registry = ConsentRegistry.from_config(cfg.consent)
    registry.migrate()
    key = load_pseudonym_key(cfg.scrub)
    run = f"{STAGE}-{input_manifest_id}"

    # Duplicates inside the batch: the first folder (in manifest order) wins. Only ids are kept
    # in memory (tens of bytes each), so this stays small for very large batches.
    first_prefix: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    for raw in iter_items(store, manifest):
        cid, prefix = raw["conversation_id"], raw["prefix"]
        if cid in first_prefix:
            duplicates[prefix] = first_prefix[cid]
        else:
            first_prefix[cid] = prefix
    del first_prefix

    def process(item: RawItem) -> dict | None:
        if item.prefix in duplicates:
            raise ItemFailure("duplicate", f"conversation id {item.conversation_id!r} is already "
                                           f"in this batch at {duplicates[item.prefix]}")
        seen_key = SEEN_PREFIX + f"{item.conversation_id}.json"
        seen = store.get_json(seen_key) if store.exists(seen_key) else None
        if seen is not None and seen["prefix"] != item.prefix:
            raise ItemFailure("duplicate", f"conversation id {item.conversation_id!r} was "
                                           f"ingested before from {seen['prefix']}")
        try:
            valid = validate_conversation(store, item, cfg.ingest)
        except StorageError as exc:
            if exc.code not in ABSENT_CODES:
                raise  # a server problem: "internal", retried on rerun
            raise ItemFailure("missing-object", f"{exc.key} (pinned version) is gone from the "
                                                "store") from None
        pseudonym = pseudonymise(valid.metadata.user_id, key)
        if not registry.has_consent(pseudonym):
            deleted = delete_conversation_objects(store, item)
            _ledger(store, item, pseudonym, run, deleted, "no consent at ingest: raw objects deleted")
            raise ItemFailure("no-consent", "the user has not consented (consent registry); "
                                            "every version of its raw objects was deleted")
        store.put_json(seen_key, {"prefix": item.prefix, "manifest": input_manifest_id})
        meta = valid.metadata
        return IngestedItem(
            conversation_id=meta.conversation_id,
            user_pseudonym=pseudonym,
            model_version=meta.model_version,
            started_at=meta.started_at,
            audio_layout=meta.audio_layout,
            source_sample_rate=meta.sample_rate,
            duration_s=round(valid.duration_s, 3),
            objects=item.objects,
        ).model_dump(mode="json")

    def items() -> Iterator[tuple[str, RawItem]]:
        for raw in iter_items(store, manifest):
            item = RawItem.model_validate(raw)
            # The folder, not the id, names the work item: duplicates are separate items.
            yield item.prefix.strip("/").replace("/", "~"), item

    try:
        result = run_items(store, STAGE, input_manifest_id, items(), process,
                           total=manifest.counts.get("items"), concurrency=concurrency)
    finally:
        registry.close()
    if result.manifest.counts.get("rejected:no-consent"):
        store.reclaim_deleted_space()  # deleted user audio must not linger on disk either
    report_rejects(store, result.manifest.manifest_id, result.manifest)
    return result


def report_rejects(store: ObjectStore, manifest_id: str, manifest: Manifest) -> str:
    """The rejects report: one entry per rejected item with its code and reason (JSON)."""
    key = Keys.report(STAGE, manifest_id, "rejects.json")
    if not store.exists(key):
        store.put_json(key, {"manifest_id": manifest_id, "counts": manifest.counts,
                             "rejects": [r.model_dump() for r in iter_rejects(store, manifest)]})
    return key
