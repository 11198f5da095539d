"""erase: one user's data gone from every store, every object version, with a ledger and proof.

``erase_user(cfg, user_id=... | pseudonym=...)``:

1. **find** — the pseudonym (raw id → keyed hash, components/common/privacy.py); the user's
   conversations (scrubbed metadata's pseudonym, raw/ metadata's serving-side user id, manifest
   items carrying the pseudonym, earlier erasure ledgers of the same pseudonym) and pairs
   (manifest items of those conversations);
2. **record and stop the inflow** — a first ledger entry names the ids found (a crash from here
   on is finished by a rerun, which reads them back), and the withdrawal is recorded in the
   consent registry (their next logs are dropped at ingest);
3. **Feast** — offline and online rows of the user, their conversations and pairs
   (``components.common.featurestore.store.erase_entities``); its rewritten parts get new keys, which the
   features manifest rewritten next names;
4. **rewrite** what is immutable (components/erase/rewrite.py): every manifest and pair dataset
   holding the user becomes a new version without them; old versions, the shards only they
   used and the reference log-probs cached for old dataset versions are deleted; the lineage map
   old → new is kept;
5. **sweep the bucket** — every version of every object whose key or content names the user
   (raw/ leftovers, quarantine/, transcripts/, conversations/, judgements/, pairs/, state
   markers, judge and composer cache entries, privacy ledger entries, reports, MLflow artefacts,
   a pipeline root in the bucket) is deleted, every version; other ledgers (retention) are
   rewritten without the entries naming the user;
6. **local copies** — KFP's pipeline root and workspace, logs (lines naming the user dropped),
   synthesised-speech caches holding the user's words;
7. **lineage** — MLflow runs and registered model versions trained on a rewritten dataset
   version (model weights are out of scope: docs/privacy-erasure.md);
8. **re-scan** — every object version of the bucket, the Feast rows and the local folders must
   name the user nowhere outside ``ledger/erasure/``;
9. **ledger** — ``ledger/erasure/<request_id>.json`` (+ ``.html``): what was found and removed
   per location, the lineage map, the re-scan.

``dry_run`` does 1 and lists what 3–7 would touch, writing and deleting nothing. A rerun finds
nothing left (earlier ledgers supply the ids to re-scan for) and removes nothing.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from components.common.config import Config
from components.common.stagekit import iter_shards
from components.common.storage import ObjectStore, parse_s3_uri
from components.contract import Keys
from components.erase.rewrite import list_manifests, rewrite_without
from components.erase.scan import (
    ERASURE_LEDGER_PREFIX,
    Identifiers,
    ScanResult,
    iter_files,
    json_strings,
    redact_json,
    scan_bucket,
    scan_files,
)

log = logging.getLogger("duplexalign.erase")

# Feast's parquet parts hold other users' rows too: left to erase_entities (step 3). Manifests
# and datasets are rewritten (step 2); the sweep deletes only what no live one references.
FEATURES_PREFIX = "features/"
LEDGER_PREFIX = "ledger/"
REDACTED_PREFIXES = (LEDGER_PREFIX, "reports/")
PRIVACY_LEDGER_PREFIX = "ledger/privacy/"


def location_of(key: str, pipeline_root_prefix: str = "") -> str:
    """The ledger's location name for a bucket key."""
    if pipeline_root_prefix and key.startswith(pipeline_root_prefix):
        return "pipeline-root"
    for prefix in ("ledger/privacy/", "ledger/retention/", "cache/judge/",
                   f"{Keys.REFERENCE_LOGPS}/", "mlflow-artifacts/", "datasets/pairs/"):
        if key.startswith(prefix):
            return prefix.rstrip("/")
    return key.split("/", 1)[0] if "/" in key else "(bucket root)"


@dataclass
class ErasureReport:
    request_id: str
    pseudonym: str
    at: datetime
    dry_run: bool
    conversations: list[str] = field(default_factory=list)
    pairs: list[str] = field(default_factory=list)
    # location -> [{"key", "versions", "action": "deleted" | "redacted" | "would delete" ...}]
    found: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rewrites: dict[str, Any] = field(default_factory=dict)  # manifests, datasets, lineage
    feast: dict[str, Any] = field(default_factory=dict)
    local: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    consent: str = ""
    broken_lineage: dict[str, Any] = field(default_factory=dict)
    rescan: dict[str, Any] = field(default_factory=dict)
    reclaimed_bytes: int | None = None
    ledger_key: str | None = None

    @property
    def removed(self) -> dict[str, int]:
        """Object versions removed per location (bucket sweep and rewrites)."""
        out: Counter[str] = Counter()
        for location, entries in self.found.items():
            out[location] += sum(int(e.get("versions", 0)) for e in entries
                                 if e.get("action") in ("deleted", "redacted"))
        for entry in self.rewrites.get("deleted", []):
            out[location_of(entry["key"])] += int(entry.get("versions", 0))
        return {k: v for k, v in sorted(out.items()) if v}

    @property
    def clean(self) -> bool:
        return bool(self.rescan.get("clean", False))

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "pseudonym": self.pseudonym,
                "at": self.at.isoformat(), "dry_run": self.dry_run,
                "conversations": self.conversations, "pairs": self.pairs,
                "found": self.found, "removed": self.removed, "rewrites": self.rewrites,
                "feast": self.feast, "local": self.local, "consent": self.consent,
                "broken_lineage": self.broken_lineage, "rescan": self.rescan,
                "reclaimed_bytes": self.reclaimed_bytes, "ledger_key": self.ledger_key}

    def summary(self) -> dict[str, Any]:
        """The CLI's one JSON line: counts, not keys."""
        return {"request_id": self.request_id, "pseudonym": self.pseudonym,
                "dry_run": self.dry_run, "conversations": len(self.conversations),
                "pairs": len(self.pairs),
                "found": {k: len(v) for k, v in sorted(self.found.items())},
                "removed_versions": self.removed,
                "manifests_rewritten": len(self.rewrites.get("manifests", [])),
                "datasets_rewritten": len(self.rewrites.get("datasets", [])),
                "lineage": self.rewrites.get("lineage", {}),
                "feast": self.feast, "consent": self.consent,
                "local": {k: len(v) for k, v in sorted(self.local.items())},
                "broken_lineage": self.broken_lineage,
                "rescan_clean": self.rescan.get("clean") if self.rescan else None,
                "ledger": self.ledger_key}


# ----------------------------------------------------------------------------- 1. find


def resolve_pseudonym(cfg: Config, user_id: str | None, pseudonym: str | None) -> str:
    from components.common.privacy import load_pseudonym_key, pseudonymise

    if not user_id and not pseudonym:
        raise ValueError("erase needs a user id or a pseudonym")
    if user_id:
        derived = pseudonymise(user_id, load_pseudonym_key(cfg.scrub))
        if pseudonym and pseudonym != derived:
            raise ValueError("the pseudonym given is not this user's")
        return derived
    return str(pseudonym)


def _collect(node: Any, pseudonym: str, conversations: set[str], pairs: set[str]) -> bool:
    """Walk a manifest item: every record carrying the pseudonym or one of the conversations
    adds its conversation and pair ids. True when something new was added."""
    added = False
    if isinstance(node, dict):
        conv = node.get("conversation_id")
        if node.get("user_pseudonym") == pseudonym or (isinstance(conv, str)
                                                       and conv in conversations):
            if isinstance(conv, str) and conv not in conversations:
                conversations.add(conv)
                added = True
            pid = node.get("pair_id")
            if isinstance(pid, str) and pid not in pairs:
                pairs.add(pid)
                added = True
        for value in node.values():
            added |= _collect(value, pseudonym, conversations, pairs)
    elif isinstance(node, list):
        for value in node:
            added |= _collect(value, pseudonym, conversations, pairs)
    return added


def find_user(store: ObjectStore, cfg: Config, pseudonym: str,
              raw_user_id: str | None = None) -> Identifiers:
    conversations: set[str] = set()
    pairs: set[str] = set()
    # Earlier requests for the same user: a rerun re-scans for (and removes) what they named.
    for info in store.list(ERASURE_LEDGER_PREFIX):
        if info.key.endswith(".json"):
            entry = store.get_json(info.key)
            if isinstance(entry, dict) and entry.get("pseudonym") == pseudonym:
                conversations.update(entry.get("conversations", []))
                pairs.update(entry.get("pairs", []))
    for info in store.list("conversations/"):
        if info.key.endswith("/metadata.json"):
            meta = store.get_json(info.key)
            if isinstance(meta, dict) and meta.get("user_pseudonym") == pseudonym:
                conversations.add(str(meta.get("conversation_id") or info.key.split("/")[1]))
    # Privacy ledger entries name the pseudonym: they also find conversations dropped at
    # ingest (no consent), which left nothing else behind but a reject.
    for info in store.list(PRIVACY_LEDGER_PREFIX):
        if info.key.endswith(".json"):
            try:
                entry = store.get_json(info.key)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("user_pseudonym") == pseudonym:
                conversations.add(str(entry.get("conversation_id") or info.key.split("/")[2]))
    key = None
    try:
        from components.common.privacy import load_pseudonym_key

        key = load_pseudonym_key(cfg.scrub)
    except RuntimeError:
        pass
    for info in store.list("raw/"):
        if not info.key.endswith("/metadata.json"):
            continue
        try:
            meta = store.get_json(info.key)
        except ValueError:
            continue
        uid = meta.get("user_id") if isinstance(meta, dict) else None
        if not isinstance(uid, str):
            continue
        if uid == raw_user_id or (key is not None and _pseudonym(uid, key) == pseudonym):
            conversations.add(str(meta.get("conversation_id") or info.key.split("/")[2]))
    items: list[dict[str, Any]] = []
    for manifest in list_manifests(store).values():
        items.extend(iter_shards(store, manifest.item_shards))
    for _ in range(4):  # to a fixpoint: a conversation found late names more pairs
        if not any([_collect(item, pseudonym, conversations, pairs) for item in items]):
            break
    return Identifiers(pseudonym, frozenset(conversations), frozenset(pairs), raw_user_id)


def _pseudonym(user_id: str, key: bytes) -> str:
    from components.common.privacy import pseudonymise

    return pseudonymise(user_id, key)


# ----------------------------------------------------------------------------- 3. Feast


def _feast(cfg: Config, ids: Identifiers, dry_run: bool, scan_only: bool = False
           ) -> dict[str, Any]:
    try:
        from components.common.featurestore import store as feature_store
    except ImportError as exc:
        return {"status": "unavailable", "reason": f"components.common.featurestore.store: {exc}"}
    kwargs = {"user_pseudonyms": [ids.pseudonym],
              "conversation_ids": sorted(ids.conversation_ids), "pair_ids": sorted(ids.pair_ids)}
    try:
        if dry_run or scan_only:
            scan = getattr(feature_store, "scan_entities", None)
            if scan is None:
                return {"status": "unavailable", "reason": "no scan_entities"}
            return {"status": "scanned", "remaining": _jsonable(scan(cfg, **kwargs))}
        erase = getattr(feature_store, "erase_entities", None)
        if erase is None:
            return {"status": "unavailable", "reason": "no erase_entities"}
        return {"status": "erased", "removed": _jsonable(erase(cfg, **kwargs))}
    except Exception as exc:  # noqa: BLE001 - recorded; the re-scan says whether rows remain
        log.exception("feast erasure failed")
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}


def _feature_parts(store: ObjectStore) -> dict[str, set[str]]:
    """view folder -> its offline part keys."""
    out: dict[str, set[str]] = defaultdict(set)
    for info in store.list(FEATURES_PREFIX):
        if not info.is_dir and info.key.count("/") >= 2:
            out[info.key.rsplit("/", 1)[0]].add(info.key)
    return out


def _renamed_parts(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, str]:
    """Old part key -> new part key, where a view lost exactly one part and gained one (the
    part Feast's erasure rewrote). A view that lost a part and gained none kept nothing."""
    out: dict[str, str] = {}
    for folder, keys in before.items():
        gone = sorted(keys - after.get(folder, set()))
        new = sorted(after.get(folder, set()) - keys)
        if len(gone) == 1 and len(new) == 1:
            out[gone[0]] = new[0]
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _feast_clean(result: dict[str, Any]) -> bool | None:
    """True when a scan_entities result says no row remains (any non-zero count = not clean);
    False when the scan failed (nothing proved); None without a feature store module."""
    if result.get("status") == "failed":
        return False
    if result.get("status") != "scanned":
        return None

    def total(node: Any) -> int:
        if isinstance(node, bool):
            return int(node)
        if isinstance(node, (int, float)):
            return int(node)
        if isinstance(node, list):
            return len(node)
        if isinstance(node, dict):
            return sum(total(v) for v in node.values())
        return 0

    remaining = result.get("remaining")
    if isinstance(remaining, dict) and isinstance(remaining.get("found"), int):
        return remaining["found"] == 0
    return total(remaining) == 0


# ----------------------------------------------------------------------------- 4. bucket sweep


def _pipeline_root_in_bucket(cfg: Config) -> tuple[str, str] | None:
    root = cfg.pipeline.pipeline_root
    if root.startswith("s3://"):
        bucket, prefix = parse_s3_uri(root)
        return bucket, prefix.rstrip("/") + "/" if prefix else ""
    return None


def live_versioned_keys(store: ObjectStore) -> set[str]:
    """Manifests, dataset manifests and every shard one of them references: what the sweep
    never deletes (a live one still naming the user is for the re-scan to report)."""
    from components.erase.rewrite import list_datasets

    keys: set[str] = set()
    for m in list_manifests(store).values():
        keys.add(Keys.manifest(m.stage, m.manifest_id))
        keys.update(m.item_shards + m.reject_shards)
    for d in list_datasets(store).values():
        keys.add(Keys.pair_dataset_manifest(d.version))
        keys.update(d.shards)
    return keys


def _sweep(store: ObjectStore, ids: Identifiers, cfg: Config, dry_run: bool,
           root_prefix: str = "", exclude: tuple[str, ...] = (),
           protected: set[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    scan = scan_bucket(store, ids, exclude=(ERASURE_LEDGER_PREFIX, *exclude),
                       max_bytes=cfg.erasure.scan_max_bytes)
    by_key: dict[str, list[Any]] = defaultdict(list)
    for finding in scan.findings:
        if protected and finding.key in protected:
            continue
        by_key[finding.key].append(finding)
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key in sorted(by_key):
        location = location_of(key, root_prefix)
        # Ledgers and JSON reports shared with other users (ingest rejects, retention runs)
        # lose only what names the user; everything else naming them goes whole.
        redact = (key.startswith(REDACTED_PREFIXES) and not key.startswith(PRIVACY_LEDGER_PREFIX)
                  and key.endswith(".json") and all(f.by == "content" for f in by_key[key]))
        entry: dict[str, Any] = {"key": key, "versions": len(by_key[key])}
        if dry_run:
            entry["action"] = "would redact" if redact else "would delete"
        elif redact:
            entry["action"] = "redacted"
            entry["versions"] = _redact_object(store, key, ids)
        else:
            entry["action"] = "deleted"
            entry["versions"] = store.delete_all_versions(key)
        found[location].append(entry)
    return dict(found)


def _redact_object(store: ObjectStore, key: str, ids: Identifiers) -> int:
    """A ledger (retention) or JSON report that names the user: a new version without those
    entries, every older version deleted. Returns how many versions went."""
    current = store.stat(key)
    payload: Any = {}
    if current is not None:
        payload, _ = redact_json(store.get_json(key), ids)
    new_version = store.put_json(key, payload)
    old = [v for v in store.list_versions(key) if v.key == key and v.version_id != new_version]
    store.delete_versions(old, key)
    return len(old)


# ----------------------------------------------------------------------------- 5. local copies


def local_roots(cfg: Config) -> list[Path]:
    roots = [Path(p) for p in cfg.erasure.local_roots]
    if not roots:
        state = Path(cfg.services.state_dir)
        roots = [state / "kfp-workspace", state / "logs"]
    if not cfg.pipeline.pipeline_root.startswith("s3://"):
        roots.insert(0, Path(cfg.pipeline.pipeline_root))
    return roots


def tts_cache_dirs(cfg: Config) -> list[Path]:
    dirs = cfg.erasure.tts_cache_dirs or [cfg.resynthesize.cache_dir, cfg.simulate.tts_cache_dir]
    return list(dict.fromkeys(Path(d) for d in dirs if d))


def _clean_local(roots: list[Path], ids: Identifiers, dry_run: bool, max_bytes: int
                 ) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for finding in scan_files(roots, ids, max_bytes).findings:
        path = Path(finding.key)
        if path.suffix in (".log", ".txt") and finding.by == "content":
            action = "would redact" if dry_run else "redacted"
            if not dry_run:
                lines = path.read_text(errors="replace").splitlines(keepends=True)
                path.write_text("".join(line for line in lines if not ids.mentions(line)))
        else:
            action = "would delete" if dry_run else "deleted"
            if not dry_run:
                path.unlink(missing_ok=True)
        out.append({"path": str(path), "by": finding.by, "action": action})
    return out


_PLACEHOLDER = re.compile(r"^\[[A-Z_]+\]$")


def _norm_words(words: list[str]) -> list[str]:
    return [w for w in (re.sub(r"[^0-9a-z']+", "", x.lower()) for x in words) if w]


def speech_templates(store: ObjectStore, ids: Identifiers) -> list[re.Pattern[str]]:
    """What the pipeline synthesised from the user's words, as patterns over normalised text:
    the user's turns (redaction placeholders match the fake values put in their place) and the
    chosen / rejected replies of their pairs. Read BEFORE the sweep deletes the sources."""
    texts: list[list[str]] = []
    for conv in sorted(ids.conversation_ids):
        for info in store.list(f"judgements/{conv}/"):
            try:
                judgement = store.get_json(info.key)
            except ValueError:
                continue
            for turn in judgement.get("user_turns", []) + judgement.get("model_turns", []):
                texts.append(str(turn.get("text", "")).split())
    for pid in sorted(ids.pair_ids):
        key = Keys.pair_object(pid, "resynthesis.json")
        if store.stat(key) is None:
            continue
        record = store.get_json(key)
        for side in ("chosen", "rejected"):
            texts.append(str((record.get(side) or {}).get("text", "")).split())
    patterns: dict[str, re.Pattern[str]] = {}
    for words in texts:
        parts = []
        for w in words:
            if _PLACEHOLDER.match(w):
                parts.append(r"(?:\S+ ){1,8}")
            else:
                norm = _norm_words([w])
                if norm:
                    parts.append(re.escape(norm[0]) + " ")
        if len(parts) >= 2 or (parts and not parts[0].startswith("(?:")):
            body = "".join(parts)
            patterns.setdefault(body, re.compile(f"^{body}$"))
    return list(patterns.values())


def _clean_tts_caches(dirs: list[Path], templates: list[re.Pattern[str]], dry_run: bool
                      ) -> list[dict[str, Any]]:
    import numpy as np

    out: list[dict[str, Any]] = []
    if not templates:
        return out
    for root in dirs:
        for path in iter_files(root):
            if path.suffix != ".npz":
                continue
            try:
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(str(z["meta"]))
            except (OSError, KeyError, ValueError):
                continue
            text = " ".join(_norm_words([str(w[0]) for w in meta.get("words", [])])) + " "
            if any(t.match(text) for t in templates):
                if not dry_run:
                    path.unlink(missing_ok=True)
                out.append({"path": str(path), "action": "would delete" if dry_run else "deleted"})
    return out


# ----------------------------------------------------------------------------- 7. lineage


def broken_lineage(cfg: Config, old_datasets: list[str]) -> dict[str, Any]:
    """MLflow runs tagged with a rewritten (now deleted) dataset version (training, validation,
    the pairs report) and the registered model versions they produced: trained on data that
    included the erased user."""
    if not old_datasets:
        return {"datasets": [], "runs": [], "model_versions": []}
    try:
        import httpx

        httpx.get(cfg.mlflow.tracking_uri.rstrip("/") + "/health", timeout=3.0)
    except Exception as exc:  # noqa: BLE001
        return {"datasets": old_datasets, "status": "mlflow unreachable",
                "reason": type(exc).__name__}
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
        exp = client.get_experiment_by_name(cfg.mlflow.experiment)
        runs: list[dict[str, str]] = []
        if exp is not None:
            seen: set[str] = set()
            for version in old_datasets:
                # train and validate tag dataset_version; the pairs report tags pairs_dataset
                for tag in ("dataset_version", "pairs_dataset"):
                    for run in client.search_runs([exp.experiment_id],
                                                  f"tags.{tag} = '{version}'"):
                        if run.info.run_id in seen:
                            continue
                        seen.add(run.info.run_id)
                        runs.append({"run_id": run.info.run_id,
                                     "run_name": run.info.run_name or "",
                                     "dataset_version": version})
        run_ids = {r["run_id"] for r in runs}
        versions: list[dict[str, str]] = []
        if run_ids:
            for mv in client.search_model_versions(f"name='{cfg.model.registered_name}'"):
                if mv.run_id in run_ids:
                    versions.append({"name": mv.name, "version": str(mv.version),
                                     "run_id": mv.run_id})
        return {"datasets": old_datasets, "runs": runs, "model_versions": versions,
                "policy": "weights are not edited: retrain without the user "
                          "(docs/privacy-erasure.md)"}
    except Exception as exc:  # noqa: BLE001 - lineage is recorded, never a reason to stop
        return {"datasets": old_datasets, "status": "failed",
                "reason": f"{type(exc).__name__}: {exc}"[:300]}


# ----------------------------------------------------------------------------- 8. re-scan


def rescan(cfg: Config, store: ObjectStore, ids: Identifiers) -> dict[str, Any]:
    bucket = scan_bucket(store, ids, max_bytes=cfg.erasure.scan_max_bytes)
    result: dict[str, Any] = {"bucket": bucket.to_dict()}
    clean = bucket.clean
    in_bucket = _pipeline_root_in_bucket(cfg)
    if in_bucket and in_bucket[0] != store.bucket:
        other = ObjectStore(store.client, in_bucket[0], in_bucket[1])
        root = scan_bucket(other, ids, max_bytes=cfg.erasure.scan_max_bytes)
        result["pipeline_root"] = root.to_dict()
        clean &= root.clean
    local = scan_files(local_roots(cfg), ids, cfg.erasure.scan_max_bytes)
    result["local"] = local.to_dict()
    clean &= local.clean
    feast = _feast(cfg, ids, dry_run=False, scan_only=True)
    result["feast"] = feast
    if _feast_clean(feast) is False:
        clean = False
    result["clean"] = clean
    return result


# ----------------------------------------------------------------------------- the request


def _request_id(pseudonym: str, at: datetime) -> str:
    digest = hashlib.sha256(f"{pseudonym}:{at.isoformat()}".encode()).hexdigest()[:8]
    return f"erase-{at.strftime('%Y%m%dT%H%M%SZ')}-{digest}"


def erase_user(cfg: Config, *, user_id: str | None = None, pseudonym: str | None = None,
               dry_run: bool = False, request_id: str | None = None) -> ErasureReport:
    """Erase one user everywhere (see the module docstring); returns the report (also the
    ledger entry, unless ``dry_run``)."""
    pseudonym = resolve_pseudonym(cfg, user_id, pseudonym)
    at = datetime.now(timezone.utc)
    request_id = request_id or _request_id(pseudonym, at)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", request_id):
        raise ValueError("request_id must be a plain identifier ([A-Za-z0-9._-])")
    store = ObjectStore.from_config(cfg.storage)
    report = ErasureReport(request_id=request_id, pseudonym=pseudonym, at=at, dry_run=dry_run)

    ids = find_user(store, cfg, pseudonym, raw_user_id=user_id)
    report.conversations = sorted(ids.conversation_ids)
    report.pairs = sorted(ids.pair_ids)
    templates = speech_templates(store, ids)
    if not dry_run:
        store.put_json(Keys.erasure_ledger(request_id),
                       {**report.to_dict(), "status": "started"})
    report.consent = _withdraw(cfg, pseudonym, request_id, dry_run)

    # Feast first: its offline parts are rewritten as new objects, so the features manifest
    # rewritten next names the new parts.
    parts_before = _feature_parts(store)
    report.feast = _feast(cfg, ids, dry_run)
    renamed = _renamed_parts(parts_before, _feature_parts(store))
    if renamed:
        report.feast["renamed_parts"] = renamed
    plan = rewrite_without(store, ids, request_id=request_id, dry_run=dry_run, renamed=renamed)
    report.rewrites = plan.to_dict()

    root = _pipeline_root_in_bucket(cfg)
    root_prefix = root[1] if root and root[0] == store.bucket else ""
    # In a dry run nothing was rewritten: every manifest and dataset is left to the plan.
    protected = (live_versioned_keys(store) if not dry_run else None)
    report.found = _sweep(store, ids, cfg, dry_run, root_prefix,
                          exclude=(FEATURES_PREFIX,) + (("manifests/", "datasets/") if dry_run
                                                        else ()),
                          protected=protected)
    if root and root[0] != store.bucket:
        other = ObjectStore(store.client, root[0], root[1])
        for location, entries in _sweep(other, ids, cfg, dry_run).items():
            report.found.setdefault("pipeline-root", []).extend(entries)

    report.local = {}
    local = _clean_local(local_roots(cfg), ids, dry_run, cfg.erasure.scan_max_bytes)
    if local:
        report.local["files"] = local
    speech = _clean_tts_caches(tts_cache_dirs(cfg), templates, dry_run)
    if speech:
        report.local["tts_cache"] = speech

    old_datasets = [d["old_version"] for d in report.rewrites.get("datasets", [])]
    report.broken_lineage = broken_lineage(cfg, old_datasets)
    if dry_run:
        return report
    if cfg.erasure.reclaim_space:
        try:
            report.reclaimed_bytes = store.reclaim_deleted_space()
        except Exception as exc:  # noqa: BLE001 - the bytes are unreachable already
            log.warning("reclaiming deleted space failed: %s", exc)
    report.rescan = rescan(cfg, store, ids)
    report.ledger_key = Keys.erasure_ledger(request_id)
    store.put_json(report.ledger_key, {**report.to_dict(), "status": "done"})
    store.put_bytes(Keys.erasure_ledger(request_id, "html"), render_html(report).encode(),
                    content_type="text/html")
    return report


def _withdraw(cfg: Config, pseudonym: str, request_id: str, dry_run: bool) -> str:
    if not cfg.erasure.withdraw_consent:
        return "unchanged (erasure.withdraw_consent is off)"
    if dry_run:
        return "would record withdrawal"
    from components.common.consent import ConsentRegistry

    try:
        with ConsentRegistry.from_config(cfg.consent) as registry:
            registry.migrate()
            current = registry.get(pseudonym)
            if current is not None and not current.granted:
                return "already withdrawn"
            registry.set_consent(pseudonym, False, source=f"erasure:{request_id}")
            return "withdrawn"
    except Exception as exc:  # noqa: BLE001 - recorded in the ledger; the data is gone anyway
        return f"failed: {type(exc).__name__}"


def render_html(report: ErasureReport) -> str:
    """A one-page view of the ledger entry (stored next to it, under ledger/erasure/)."""
    d = report.to_dict()
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>"
                   for k, v in d["removed"].items())
    lineage = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                      for k, v in report.rewrites.get("lineage", {}).items())
    status = "clean" if report.clean else "NOT CLEAN"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Erasure "
            f"{html.escape(report.request_id)}</title></head><body>"
            f"<h1>Erasure {html.escape(report.request_id)}</h1>"
            f"<p>pseudonym {html.escape(report.pseudonym)}, at {html.escape(d['at'])}: "
            f"{len(report.conversations)} conversations, {len(report.pairs)} pairs; "
            f"re-scan: <b>{status}</b></p>"
            f"<h2>Object versions removed</h2><table>{rows}</table>"
            f"<h2>Lineage (old → new)</h2><table>{lineage}</table>"
            f"<h2>Ledger entry</h2><pre>{html.escape(json.dumps(d, indent=1, default=str))}</pre>"
            f"</body></html>")


__all__ = ["ErasureReport", "erase_user", "find_user", "rescan", "resolve_pseudonym",
           "json_strings", "ScanResult"]
