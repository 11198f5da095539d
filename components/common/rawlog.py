"""The raw/ writer of a served conversation: what a Moshi-class server logs, in the data contract.

One folder ``raw/<batch>/<conversation_id>/`` (``Keys.raw_prefix``), separate audio layout at
24 kHz:

* ``model.wav``: the codec's decode of the model's own codes;
* ``user.wav``: the user's audio exactly as it was streamed (on the 16-bit grid, so encoding it
  again gives the logged user codes);
* ``model_text.json``: the model's words read from its text stream (written form);
* ``model_tokens.npz``: its EXACT per-frame text tokens and audio codes (``contract.ModelTokens``,
  tagged with the serving model version);
* ``user_codes.npz``: the user's codes (user audio: scrub deletes it);
* ``metadata.json`` LAST among the raw objects (``ConversationMetadata``).

Shared by the simulator's on-policy conversations (components/simulate/live.py) and the serving
stack's WebSocket endpoint (serving/streaming.py), so the two write byte-identical layouts. Objects
whose stored bytes are already identical are not rewritten: reruns create no new versions.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any, Protocol

import numpy as np

from components.common.audio import encode_wav
from components.contract import (
    MODEL_TOKENS_METADATA,
    MODEL_TOKENS_OBJECT,
    USER_AUDIO_METADATA,
    USER_CODES_OBJECT,
    ConversationMetadata,
    Keys,
    ModelTokens,
    ObjectRef,
    WordStamp,
    model_alignments_payload,
)

SAMPLE_RATE = 24_000
FRAME_RATE = 12.5
# S3 user metadata of model.wav; the same value as components.simulate.generate's (the rendered
# simulator writes it too; tests/serving/test_protocol.py keeps the two equal).
MODEL_AUDIO_METADATA = {"duplexalign-content": "model-audio"}


class TokensLike(Protocol):
    """serving.engine.SessionTokens (or anything with the same three arrays)."""

    text: np.ndarray  # int64 [T]
    model_codes: np.ndarray  # int64 [q, T]
    user_codes: np.ndarray  # int64 [q, T]


class IdentityLike(Protocol):
    """components.model.checkpoint.ModelIdentity: the stream format the tokens are in."""

    tokenizer_hash: str
    codec_hash: str


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=None).encode("utf-8")


def npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def put_if_changed(store, key: str, data: bytes, content_type: str,
                   metadata: dict[str, str] | None = None):
    """Put unless the stored object already has these exact bytes; returns the current info."""
    info = store.stat(key)
    md5 = hashlib.md5(data).hexdigest()
    if info is not None and (info.etag or "").strip('"') == md5 and info.size == len(data):
        if metadata is None or all(info.metadata.get(k) == v for k, v in metadata.items()):
            return info
    store.put_bytes(key, data, content_type=content_type, metadata=metadata)
    return store.stat(key)


def object_ref(info) -> ObjectRef:
    return ObjectRef(key=info.key, version_id=info.version_id, etag=info.etag, size=info.size)


def write_raw_conversation(store, batch: str, metadata: ConversationMetadata, *,
                           model_audio: np.ndarray, user_audio: np.ndarray,
                           model_words: list[WordStamp], tokens: TokensLike,
                           identity: IdentityLike) -> dict[str, ObjectRef]:
    """Write one served conversation's raw objects (module docstring); returns their refs by
    object name, sorted. ``metadata.model_version`` tags model_tokens.npz too."""
    prefix = Keys.raw_prefix(batch, metadata.conversation_id)
    refs: dict[str, ObjectRef] = {}
    refs["model.wav"] = object_ref(put_if_changed(
        store, prefix + "model.wav", encode_wav(model_audio, SAMPLE_RATE), "audio/wav",
        dict(MODEL_AUDIO_METADATA)))
    refs["user.wav"] = object_ref(put_if_changed(
        store, prefix + "user.wav", encode_wav(user_audio, SAMPLE_RATE), "audio/wav",
        dict(USER_AUDIO_METADATA)))
    refs["model_text.json"] = object_ref(put_if_changed(
        store, prefix + "model_text.json", json_bytes(model_alignments_payload(model_words)),
        "application/json"))
    model_tokens = ModelTokens(tokens.text, tokens.model_codes, frame_rate=FRAME_RATE,
                               tokenizer_hash=identity.tokenizer_hash,
                               codec_hash=identity.codec_hash,
                               model_version=metadata.model_version)
    refs[MODEL_TOKENS_OBJECT] = object_ref(put_if_changed(
        store, prefix + MODEL_TOKENS_OBJECT, model_tokens.to_bytes(), "application/x-npz",
        dict(MODEL_TOKENS_METADATA)))
    user_codes = npz_bytes(codes=np.asarray(tokens.user_codes, np.int32),
                           frame_rate=np.float64(FRAME_RATE),
                           codec_hash=np.str_(identity.codec_hash))
    refs[USER_CODES_OBJECT] = object_ref(put_if_changed(
        store, prefix + USER_CODES_OBJECT, user_codes, "application/x-npz",
        dict(USER_AUDIO_METADATA)))
    refs["metadata.json"] = object_ref(put_if_changed(
        store, prefix + "metadata.json", json_bytes(metadata.model_dump(mode="json")),
        "application/json"))
    return dict(sorted(refs.items()))
