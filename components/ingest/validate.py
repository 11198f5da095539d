"""Contract checks of one logged conversation, each failure a specific per-item reason.

Only headers and small JSON objects are read: audio is inspected from its first bytes plus the
object's size, so a one-hour conversation is validated in constant memory.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from components.common.audio import HEADER_PROBE_BYTES, AudioFormatError, WavInfo, check_wav_object
from components.common.config import IngestConfig
from components.common.stagekit import ItemFailure
from components.common.storage import ObjectStore
from components.contract import (
    MODEL_TOKENS_OBJECT,
    REQUIRED_OBJECTS,
    USER_CODES_OBJECT,
    ModelTokens,
    ConversationMetadata,
    ObjectRef,
    RawItem,
    audio_objects,
    parse_model_alignments,
)

MAX_JSON_BYTES = 16 * 1024 * 1024  # model_text of an hour is ~1 MB; anything far larger is junk
MAX_METADATA_BYTES = 64 * 1024
MAX_TOKENS_BYTES = 64 * 1024 * 1024  # an hour of 17 int32 rows at 12.5 Hz is ~3 MB


@dataclass
class ValidConversation:
    metadata: ConversationMetadata
    duration_s: float
    audio: dict[str, WavInfo]


def _read_json(store: ObjectStore, name: str, ref: ObjectRef, limit: int) -> Any:
    if ref.size is not None and ref.size > limit:
        raise ItemFailure("too-large", f"{name} is {ref.size} bytes (limit {limit})")
    raw = store.get_bytes(ref.key, version_id=ref.version_id)
    if len(raw) > limit:
        raise ItemFailure("too-large", f"{name} is {len(raw)} bytes (limit {limit})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ItemFailure("bad-encoding", f"{name} is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ItemFailure("bad-json", f"{name} is not valid JSON: {exc.msg} at line {exc.lineno}") from None


def _check_audio(store: ObjectStore, name: str, ref: ObjectRef) -> WavInfo:
    size = ref.size
    if size is None:
        info = store.stat(ref.key)
        if info is None:
            raise ItemFailure("missing-object", f"{name} is listed but gone from the store")
        size = info.size
    if size == 0:
        raise ItemFailure("zero-length", f"{name} is an empty object")
    with store.open_stream(ref.key, version_id=ref.version_id, offset=0,
                           length=min(size, HEADER_PROBE_BYTES)) as body:
        head = body.read()
    try:
        return check_wav_object(head, size)
    except AudioFormatError as exc:
        code = "zero-length" if "zero-length" in str(exc) else (
            "truncated-audio" if "truncated" in str(exc) else "bad-audio")
        raise ItemFailure(code, f"{name}: {exc}") from None


def validate_conversation(store: ObjectStore, item: RawItem, cfg: IngestConfig) -> ValidConversation:
    """Every contract rule, in the order that gives the most useful first error."""
    missing = [n for n in REQUIRED_OBJECTS if n not in item.objects]
    if missing:
        raise ItemFailure("missing-object", f"missing {', '.join(missing)}")

    payload = _read_json(store, "metadata.json", item.objects["metadata.json"], MAX_METADATA_BYTES)
    try:
        meta = ConversationMetadata.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "metadata"
        raise ItemFailure("bad-metadata", f"metadata.json {where}: {first['msg']}") from None
    if meta.conversation_id != item.conversation_id:
        raise ItemFailure("id-mismatch", f"metadata says {meta.conversation_id!r}, "
                                         f"folder says {item.conversation_id!r}")

    names = audio_objects(meta.audio_layout)
    absent = [n for n in names if n not in item.objects]
    if absent:
        raise ItemFailure("missing-channel",
                          f"{meta.audio_layout} layout needs {', '.join(absent)}")
    infos = {n: _check_audio(store, n, item.objects[n]) for n in names}
    want_channels = 2 if meta.audio_layout == "stereo" else 1
    for name, info in infos.items():
        if info.channels != want_channels:
            code = "missing-channel" if info.channels < want_channels else "bad-audio"
            raise ItemFailure(code, f"{name} has {info.channels} channel(s); the "
                                    f"{meta.audio_layout} layout needs {want_channels}")
        if info.sample_rate != meta.sample_rate:
            raise ItemFailure("rate-mismatch", f"{name} is {info.sample_rate} Hz, "
                                               f"metadata says {meta.sample_rate} Hz")
    if meta.sample_rate not in cfg.accepted_sample_rates:
        raise ItemFailure("unsupported-rate", f"{meta.sample_rate} Hz is not a rate we resample "
                                              f"(accepted: {cfg.accepted_sample_rates})")

    durations = [info.duration_s for info in infos.values()]
    if max(durations) - min(durations) > cfg.channel_length_tolerance_s:
        raise ItemFailure("channel-length", "channels differ in length: "
                          + ", ".join(f"{n} {d:.2f}s" for n, d in zip(names, durations)))
    duration = max(durations)
    if duration < cfg.min_duration_s:
        raise ItemFailure("too-short", f"{duration:.2f}s is shorter than {cfg.min_duration_s}s")
    if duration > cfg.max_duration_s:
        raise ItemFailure("too-long", f"{duration:.0f}s is longer than {cfg.max_duration_s:.0f}s")

    text_payload = _read_json(store, "model_text.json", item.objects["model_text.json"], MAX_JSON_BYTES)
    try:
        words = parse_model_alignments(text_payload)
    except (ValueError, ValidationError) as exc:
        raise ItemFailure("bad-alignments", f"model_text.json: {exc}") from None
    if words and words[-1].end > duration + cfg.channel_length_tolerance_s:
        raise ItemFailure("bad-alignments", f"model words run to {words[-1].end:.2f}s, past the "
                                            f"audio's {duration:.2f}s")
    _check_token_objects(store, item, duration, cfg)
    return ValidConversation(meta, duration, infos)


def _read_npz_bytes(store: ObjectStore, name: str, ref: ObjectRef) -> bytes:
    if ref.size is not None and ref.size > MAX_TOKENS_BYTES:
        raise ItemFailure("too-large", f"{name} is {ref.size} bytes (limit {MAX_TOKENS_BYTES})")
    return store.get_bytes(ref.key, version_id=ref.version_id)


def _check_token_objects(store: ObjectStore, item: RawItem, duration: float,
                         cfg: IngestConfig) -> None:
    """The optional per-frame token logs must be readable and as long as the audio: a token
    log that does not line up with its conversation would train on the wrong frames."""
    tolerance = cfg.channel_length_tolerance_s
    frames: dict[str, int] = {}
    if MODEL_TOKENS_OBJECT in item.objects:
        raw = _read_npz_bytes(store, MODEL_TOKENS_OBJECT, item.objects[MODEL_TOKENS_OBJECT])
        try:
            tokens = ModelTokens.from_bytes(raw)
        except ValueError as exc:
            raise ItemFailure("bad-tokens", f"{MODEL_TOKENS_OBJECT}: {exc}") from None
        frames[MODEL_TOKENS_OBJECT] = tokens.frames
        seconds = tokens.frames / tokens.frame_rate
        if abs(seconds - duration) > tolerance + 1.0 / tokens.frame_rate:
            raise ItemFailure("bad-tokens", f"{MODEL_TOKENS_OBJECT} covers {seconds:.2f}s, the "
                                            f"audio {duration:.2f}s")
    if USER_CODES_OBJECT in item.objects:
        raw = _read_npz_bytes(store, USER_CODES_OBJECT, item.objects[USER_CODES_OBJECT])
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                codes = z["codes"]
        except (KeyError, OSError, ValueError, EOFError) as exc:
            raise ItemFailure("bad-tokens", f"{USER_CODES_OBJECT}: not a codes archive "
                                            f"({exc})") from None
        if codes.ndim != 2:
            raise ItemFailure("bad-tokens", f"{USER_CODES_OBJECT}: codes are {codes.shape}, "
                                            "not [q, T]")
        frames[USER_CODES_OBJECT] = int(codes.shape[1])
    if len(set(frames.values())) > 1:
        raise ItemFailure("bad-tokens", "token logs differ in length: "
                          + ", ".join(f"{n} {f} frames" for n, f in frames.items()))
