"""Finding a user's identifiers in stored bytes: the matcher, the text of an object, the re-scan.

A user is known to the stores by three kinds of identifier only (scrub removed the raw id and
the voice): the pseudonym, the conversation ids and the pair ids. `Identifiers.mentions` finds
any of them in a text with identifier boundaries, so ``conv-1`` does not match inside
``conv-12`` or ``xconv-1`` while it still matches in ``transcripts/conv-1.json``,
``state/pairs/<m>/conv-1--r0.json`` and ``{"conversation_id": "conv-1"}``.

`object_text` turns stored bytes into searchable text: UTF-8 text as is; npz archives (dataset
shards, pair tensors, TTS cache entries) by their string arrays; parquet (Feast's offline rows)
by its string columns; audio and other binaries by nothing (their KEY is still matched).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.storage import ObjectStore

# The erasure ledger is the one place that names what was erased: never searched, never erased.
ERASURE_LEDGER_PREFIX = "ledger/erasure/"
# Audio and weights: matched by key only (no identifier is inside their bytes as text).
BINARY_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".safetensors", ".pt", ".pth",
                   ".bin", ".onnx", ".ckpt")
# Characters an identifier is made of (contract.CONVERSATION_ID_RE; pseudonyms and pair ids too).
_ID_CHARS = "A-Za-z0-9._-"
_EXTENSIONS = "json|jsonl|wav|npz|npy|html|parquet|txt|log|csv|md|yaml|yml|pt|safetensors"


@dataclass(frozen=True)
class Identifiers:
    """What names one user in the stores. ``raw_user_id`` (the serving side's id) only ever
    compares equal against raw/ metadata fields; it is never searched as text (short raw ids are
    ordinary words) and never written to the ledger."""

    pseudonym: str
    conversation_ids: frozenset[str] = frozenset()
    pair_ids: frozenset[str] = frozenset()
    raw_user_id: str | None = None

    def all(self) -> list[str]:
        return sorted({self.pseudonym, *self.conversation_ids, *self.pair_ids} - {""})

    def with_ids(self, conversation_ids: Iterable[str] = (), pair_ids: Iterable[str] = ()
                 ) -> "Identifiers":
        return Identifiers(self.pseudonym, self.conversation_ids | frozenset(conversation_ids),
                           self.pair_ids | frozenset(pair_ids), self.raw_user_id)

    @property
    def pattern(self) -> re.Pattern[str]:
        cached = _PATTERNS.get(self)
        if cached is None:
            ids = sorted(self.all(), key=len, reverse=True)
            body = "|".join(re.escape(i) for i in ids) or r"(?!x)x"
            # Left: not inside a longer identifier. Right: not followed by more identifier
            # characters, except a marker suffix ("--r0") or a file extension (".json").
            cached = re.compile(
                rf"(?<![{_ID_CHARS}])(?:{body})"
                rf"(?![A-Za-z0-9_]|-(?!-)|\.(?!(?:{_EXTENSIONS})\b)[A-Za-z0-9_])")
            _PATTERNS[self] = cached
        return cached

    def mentions(self, text: str) -> bool:
        return bool(text) and self.pattern.search(text) is not None

    def found_in(self, text: str) -> set[str]:
        return {m.group(0) for m in self.pattern.finditer(text)} if text else set()


_PATTERNS: dict[Identifiers, re.Pattern[str]] = {}


# ----------------------------------------------------------------------------- object text


def _npz_text(data: bytes) -> str:
    import numpy as np

    parts: list[str] = []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in zf.namelist():
                if not name.endswith(".npy"):
                    continue
                with zf.open(name) as fh:
                    try:
                        major, _ = np.lib.format.read_magic(fh)
                        read = (np.lib.format.read_array_header_1_0 if major == 1
                                else np.lib.format.read_array_header_2_0)
                        _, _, dtype = read(fh)
                    except ValueError:
                        continue
                    if dtype.kind not in ("U", "S"):
                        continue
                arr = np.load(io.BytesIO(zf.read(name)), allow_pickle=False)
                parts.extend(str(x if dtype.kind == "U" else x.decode("utf-8", "replace"))
                             for x in np.ravel(arr))
    except (zipfile.BadZipFile, OSError, ValueError):
        return ""
    return "\n".join(parts)


def _parquet_text(data: bytes) -> str:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - not parquet after all: nothing searchable
        return ""
    parts: list[str] = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            parts.extend(str(v) for v in column.to_pylist() if v is not None)
    return "\n".join(parts)


def object_text(key: str, data: bytes) -> str:
    """The searchable text of an object's bytes (see the module docstring)."""
    name = key.lower()
    if name.endswith(BINARY_SUFFIXES) or data[:4] in (b"RIFF", b"RF64"):
        return ""
    if data[:4] == b"PK\x03\x04":
        return _npz_text(data)
    if data[:4] == b"PAR1":
        return _parquet_text(data)
    return data.decode("utf-8", "replace")


def json_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from json_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from json_strings(v)


# ----------------------------------------------------------------------------- scanning


@dataclass
class Finding:
    where: str  # s3://bucket/key@version, or a local path
    key: str  # the object key (bucket) or the path (local)
    version_id: str | None
    ids: list[str]
    by: str  # "key" | "content"


@dataclass
class ScanResult:
    scanned: int = 0  # object versions (bucket) or files (local) looked at
    unsearched: int = 0  # content not searched (too large): their keys were still matched
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {"scanned": self.scanned, "unsearched": self.unsearched,
                "found": [f.__dict__ for f in self.findings]}


def scan_bucket(store: ObjectStore, ids: Identifiers, *, prefix: str = "",
                exclude: tuple[str, ...] = (ERASURE_LEDGER_PREFIX,),
                max_bytes: int = 64 * 1024 * 1024) -> ScanResult:
    """Every version (delete markers by key only) of every object under ``prefix``: its key,
    and its content when at most ``max_bytes``."""
    result = ScanResult()
    for version in store.list_versions(prefix):
        if version.key.startswith(exclude):
            continue
        result.scanned += 1
        where = f"s3://{store.bucket}/{store.full_key(version.key)}@{version.version_id}"
        hit = ids.found_in(version.key)
        if hit:
            result.findings.append(Finding(where, version.key, version.version_id, sorted(hit),
                                           "key"))
            continue
        if version.is_delete_marker:
            continue
        if version.size > max_bytes:
            result.unsearched += 1
            continue
        text = object_text(version.key, store.get_bytes(version.key, version_id=version.version_id))
        hit = ids.found_in(text)
        if hit:
            result.findings.append(Finding(where, version.key, version.version_id, sorted(hit),
                                           "content"))
    return result


def iter_files(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for dirpath, _, names in os.walk(root):
        for name in names:
            yield Path(dirpath) / name


def scan_files(roots: Iterable[Path], ids: Identifiers,
               max_bytes: int = 64 * 1024 * 1024) -> ScanResult:
    """Files under local folders (KFP's pipeline root and workspace, logs, caches)."""
    result = ScanResult()
    for root in roots:
        for path in iter_files(Path(root)):
            result.scanned += 1
            hit = ids.found_in(str(path.relative_to(root)))
            by = "key"
            if not hit:
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                if size > max_bytes:
                    result.unsearched += 1
                    continue
                try:
                    hit = ids.found_in(object_text(path.name, path.read_bytes()))
                except OSError:
                    continue
                by = "content"
            if hit:
                result.findings.append(Finding(str(path), str(path), None, sorted(hit), by))
    return result


def redact_json(node: Any, ids: Identifiers) -> tuple[Any, int]:
    """``node`` without what mentions ``ids``: list elements that are such strings or records
    (dicts) with such a string value of their own, and dict entries whose key mentions them,
    are dropped; other strings that do become "[erased]"; containers are searched inside.
    Returns (new node, how many went)."""
    if isinstance(node, str):
        return ("[erased]", 1) if ids.mentions(node) else (node, 0)
    if isinstance(node, list):
        out, gone = [], 0
        for value in node:
            # a string naming the user, or a record (dict) one of whose own strings does
            if (isinstance(value, str) and ids.mentions(value)) or (
                    isinstance(value, dict) and any(isinstance(v, str) and ids.mentions(v)
                                                    for v in value.values())):
                gone += 1
                continue
            new, n = redact_json(value, ids)
            out.append(new)
            gone += n
        return out, gone
    if isinstance(node, dict):
        out_d, gone = {}, 0
        for k, v in node.items():
            if ids.mentions(str(k)):
                gone += 1
                continue
            new, n = redact_json(v, ids)
            out_d[k] = new
            gone += n
        return out_d, gone
    return node, 0
