"""Privacy audits of a finished run — the demo's proof that the promises hold.

They look everywhere a copy could survive: every VERSION of every object in the data bucket
(MLflow's artefacts live there too), KFP's pipeline root on disk, and the stages' temp area.
They are the only code besides the simulator that reads the ground-truth bucket.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from components.common.config import Config
from components.common.stagekit import iter_items, load_manifest
from components.common.storage import ObjectStore
from components.contract import CONTENT_CLASS_KEY, SYNTHETIC_SPEECH, USER_AUDIO
from components.scrub.pii import normalise_for_pii_search, occurs_in_normalised

TEXT_SUFFIXES = (".json", ".jsonl", ".txt", ".md", ".html", ".csv", ".yaml", ".yml", ".log")
USER_AUDIO_NAMES = ("user.wav", "audio.wav")
# Objects larger than this are not text we wrote (audio, models, parquet); skipped by the PII scan.
MAX_TEXT_BYTES = 8 * 1024 * 1024


@dataclass
class AuditResult:
    raw_user_audio_left: int
    pii_left: int
    findings: list[str] = field(default_factory=list)


def _is_user_audio(store: ObjectStore, key: str, version_id: str | None) -> bool:
    """By content class, and by name unless the object says it is synthetic speech (the
    resynthesised user side is TTS in a voice that is no user's): a user-side name without
    that mark counts, whatever its prefix."""
    info = store.stat(key, version_id=version_id)
    content = (info.metadata or {}).get(CONTENT_CLASS_KEY) if info else None
    if content == SYNTHETIC_SPEECH:
        return False
    return key.rsplit("/", 1)[-1] in USER_AUDIO_NAMES or content == USER_AUDIO


def count_user_audio(store: ObjectStore, roots: list[Path]) -> tuple[int, list[str]]:
    """User-audio objects in ANY version (delete markers excluded) plus audio files on disk."""
    found: list[str] = []
    for version in store.list_versions(""):
        if version.is_delete_marker:
            continue
        if _is_user_audio(store, version.key, version.version_id):
            found.append(f"s3://{store.bucket}/{version.key}@{version.version_id}")
    for path in _files(roots):
        with open(path, "rb") as fh:
            if fh.read(4) in (b"RIFF", b"RF64"):
                found.append(str(path))
    return len(found), found


def _files(roots: list[Path]) -> Iterator[Path]:
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                yield Path(dirpath) / name


def _texts(store: ObjectStore, roots: list[Path]) -> Iterator[tuple[str, str]]:
    for version in store.list_versions(""):
        if version.is_delete_marker or not version.key.endswith(TEXT_SUFFIXES):
            continue
        if version.size is not None and version.size > MAX_TEXT_BYTES:
            continue
        data = store.get_bytes(version.key, version_id=version.version_id)
        yield f"s3://{store.bucket}/{version.key}@{version.version_id}", _searchable(data)
    for path in _files(roots):
        if path.stat().st_size <= MAX_TEXT_BYTES:
            yield str(path), _searchable(path.read_bytes())


def _token_texts(store: ObjectStore, cfg: Config | None) -> Iterator[tuple[str, str]]:
    """The text streams of logged model tokens (every version), decoded with the tokenizer they
    were made with: an echoed name in the model's inner monologue is PII even as token ids."""
    if cfg is None:
        return
    from components.contract import MODEL_TOKENS_OBJECT, NO_TOKEN, ModelTokens

    tokenizer = None
    for version in store.list_versions(""):
        if version.is_delete_marker or not version.key.endswith(MODEL_TOKENS_OBJECT):
            continue
        tokens = ModelTokens.from_bytes(store.get_bytes(version.key, version_id=version.version_id))
        if tokenizer is None:
            from components.streams.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(cfg)
        if tokens.tokenizer_hash != tokenizer.hash:
            yield (f"s3://{store.bucket}/{version.key}@{version.version_id}",
                   f"[tokens made with tokenizer {tokens.tokenizer_hash}: not decodable here]")
            continue
        ids = [int(t) for t in tokens.text if t != NO_TOKEN]
        yield f"s3://{store.bucket}/{version.key}@{version.version_id}", tokenizer.decode(ids)


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _searchable(data: bytes) -> str:
    """The text as stored, plus — for JSON — its string values joined by spaces, so a value
    split over several JSON tokens (one word per alignment entry) is still found whole."""
    text = data.decode("utf-8", "replace")
    lines = text.splitlines() if text.lstrip().startswith("{") and "\n{" in text else [text]
    joined: list[str] = []
    for line in lines:
        try:
            joined.append(" ".join(_strings(json.loads(line))))
        except ValueError:
            pass
    return text + "\n" + "\n".join(joined)


def count_pii(store: ObjectStore, roots: list[Path], planted: list[tuple[str, str]],
              cfg: Config | None = None) -> tuple[int, list[str]]:
    """Planted PII values (type, written value) found in any stored text — and, given the
    config, in the decoded text streams of logged model tokens — after normalising digits,
    spoken numbers and spelled-out emails (components.scrub.pii.pii_occurs)."""
    found: list[str] = []
    wanted = [(kind, normalise_for_pii_search(value)) for kind, value in planted]
    if not wanted:
        return 0, found
    for where, text in itertools.chain(_texts(store, roots), _token_texts(store, cfg)):
        norm = normalise_for_pii_search(text)
        for kind, value in wanted:
            if occurs_in_normalised(value, norm):
                found.append(f"{kind} in {where}")
    return len(found), found


def logged_conversation_ids(store: ObjectStore) -> list[str]:
    """Every conversation that ever entered this bucket: the items of all its raw manifests."""
    ids: set[str] = set()
    for info in store.list("manifests/raw/", recursive=False):
        if info.key.endswith(".json"):
            manifest = load_manifest(store, info.key.rsplit("/", 1)[-1].removesuffix(".json"))
            ids.update(item["conversation_id"] for item in iter_items(store, manifest))
    return sorted(ids)


def planted_pii(cfg: Config, conversation_ids: list[str]) -> list[tuple[str, str]]:
    """(type, written value) of the PII planted in these conversations, deduplicated (a
    recurring user's values are planted in several conversations)."""
    from components.simulate.groundtruth import load_planted_pii

    return sorted(set(load_planted_pii(cfg, conversation_ids)))


def audit_run(cfg: Config, conversation_ids: list[str] | None = None) -> AuditResult:
    """Both audits over the data bucket (every version) and the local run's files: KFP's pipeline
    root and workspace, and the logs of the pipeline and the services."""
    store = ObjectStore.from_config(cfg.storage)
    state = Path(cfg.services.state_dir)
    roots = [Path(cfg.pipeline.pipeline_root), state / "kfp-workspace", state / "logs"]
    audio_left, audio_where = count_user_audio(store, roots)
    ids = conversation_ids if conversation_ids is not None else logged_conversation_ids(store)
    pii_left, pii_where = count_pii(store, roots, planted_pii(cfg, ids), cfg)
    return AuditResult(audio_left, pii_left, audio_where + pii_where)
