"""Build logged conversations (good and deliberately bad) directly in the object store."""

from __future__ import annotations

import json
import struct
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from components.common.audio import encode_wav
from components.common.storage import ObjectStore
from components.contract import USER_AUDIO_METADATA as USER_AUDIO_META
from components.contract import Keys


def tone(seconds: float, rate: int, freq: float = 220.0, amp: float = 0.2) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def metadata(cid: str, rate: int, layout: str = "stereo", user: str = "user-1",
             model_version: str = "test-v0") -> dict:
    return {"schema_version": 1, "conversation_id": cid, "user_id": user,
            "model_version": model_version,
            "started_at": datetime(2026, 11, 1, tzinfo=timezone.utc).isoformat(),
            "sample_rate": rate, "audio_layout": layout}


def alignments(words: list[tuple[str, float, float]]) -> dict:
    return {"alignments": [[w, [s, e], "SPEAKER_MAIN"] for w, s, e in words]}


def put_conversation(store: ObjectStore, batch: str, cid: str, *, rate: int = 24000,
                     layout: str = "stereo", seconds: float = 2.0, user: str = "user-1",
                     model: np.ndarray | None = None, user_audio: np.ndarray | None = None,
                     words: list[tuple[str, float, float]] | None = None,
                     meta_override: dict | bytes | None = None, skip: tuple[str, ...] = (),
                     raw_objects: dict[str, bytes] | None = None) -> str:
    """Write one conversation under raw/<batch>/<cid>/; returns its prefix."""
    prefix = Keys.raw_prefix(batch, cid)
    model = tone(seconds, rate, 330.0) if model is None else model
    user_audio = tone(seconds, rate, 180.0) if user_audio is None else user_audio
    objects: dict[str, tuple[bytes, dict | None]] = {}
    meta = metadata(cid, rate, layout, user)
    if isinstance(meta_override, bytes):
        objects["metadata.json"] = (meta_override, None)
    else:
        meta.update(meta_override or {})
        objects["metadata.json"] = (json.dumps(meta).encode(), None)
    objects["model_text.json"] = (json.dumps(alignments(words or [("hello", 0.1, 0.4)])).encode(), None)
    if layout == "stereo":
        objects["audio.wav"] = (encode_wav(np.stack([model, user_audio], axis=1), rate), USER_AUDIO_META)
    else:
        objects["model.wav"] = (encode_wav(model, rate), None)
        objects["user.wav"] = (encode_wav(user_audio, rate), USER_AUDIO_META)
    for name, data in (raw_objects or {}).items():
        objects[name] = (data, USER_AUDIO_META if name in ("audio.wav", "user.wav", "user_codes.npz")
                         else None)
    for name, (data, meta_headers) in objects.items():
        if name not in skip:
            store.put_bytes(prefix + name, data, metadata=meta_headers)
    return prefix


def wav_header(channels: int, rate: int, frames: int, bits: int = 16) -> bytes:
    data_bytes = frames * channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * bits // 8,
                        channels * bits // 8, bits) + b"data" + struct.pack("<I", data_bytes))


def write_long_wav(path: Path, seconds: float, rate: int = 8000, channels: int = 1) -> Path:
    """A long PCM16 WAV written in chunks (constant memory), e.g. a one-hour conversation."""
    frames = int(seconds * rate)
    chunk = np.zeros(rate * 60 * channels, dtype="<i2").tobytes()
    with open(path, "wb") as fh:
        fh.write(wav_header(channels, rate, frames))
        remaining = frames * channels * 2
        while remaining > 0:
            piece = chunk[: min(len(chunk), remaining)]
            fh.write(piece)
            remaining -= len(piece)
    return path


def truncated(wav: bytes, keep: float = 0.5) -> bytes:
    return wav[: int(len(wav) * keep)]
