"""Full-duplex conversations over a WebSocket on the predictor's port: 80 ms frames in, 80 ms
frames out, every conversation a slot of the shared batcher (serving/batcher.py). The wire
protocol is documented in serving/README.md; this module implements it.

Per frame the server hands the user's 1920 samples (rounded to the 16-bit grid) to the batcher
— ONE batched step encodes, steps the LM and decodes for every conversation with a frame ready —
and sends one binary frame message back (text token + piece, model codes, user codes, model PCM).

On close (client "end", disconnect, or server drain) the conversation is logged to
``raw/<raw_batch_prefix>-<model tag>-<YYYYMMDD>/<conversation_id>/`` in the data contract
(components/common/rawlog.py: the model's exact per-frame tokens, the user's codes and audio,
metadata tagged with the serving model version) — only if ``cfg.serving.log_conversations`` and
the consent registry (components/common/consent.py, the source of truth) says the user consents
NOW, asked with the user's pseudonym (the scrub key's HMAC, as ingest asks). Otherwise nothing is
stored and ``duplexalign_conversations_not_logged_total{reason}`` counts it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from serving import metrics as M
from serving.batcher import BatcherStopped, SlotsFull, StreamSlot
from serving.engine import FRAME_SIZE, SAMPLE_RATE, SessionTokens
from serving.predictor import DuplexPredictor, to_pcm16_grid

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config

log = logging.getLogger("duplexalign.serving")

STREAM_ROUTE = "/v2/models/{model_name}/stream"
# One binary message per frame, server → client (little endian; serving/README.md):
# magic, frame index, text token, #model codes, #user codes, piece bytes; then the codes
# (int32), the piece (UTF-8) and the model's PCM (float32 x 1920, absent with audio=0).
FRAME_MAGIC = b"DXF1"
FRAME_HEADER = struct.Struct("<4sIiHHH")
FRAME_BYTES = FRAME_SIZE * 4  # client → server: 1920 float32
# WebSocket close codes: 1000 normal, 1001 going away (server drains), 1008 policy (bad
# request), 1011 internal error, 1013 try again later (all slots taken / not ready).
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_ERROR, CLOSE_TRY_LATER = (
    1000, 1001, 1008, 1011, 1013)
_CID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def encode_frame(frame: int, text_token: int, piece: str, model_codes: np.ndarray,
                 user_codes: np.ndarray, pcm: np.ndarray | None) -> bytes:
    piece_b = piece.encode("utf-8")
    parts = [FRAME_HEADER.pack(FRAME_MAGIC, frame, text_token, len(model_codes), len(user_codes),
                               len(piece_b)),
             np.asarray(model_codes, "<i4").tobytes(), np.asarray(user_codes, "<i4").tobytes(),
             piece_b]
    if pcm is not None:
        parts.append(np.asarray(pcm, "<f4").tobytes())
    return b"".join(parts)


def decode_frame(data: bytes) -> tuple[int, int, str, np.ndarray, np.ndarray, np.ndarray | None]:
    """(frame, text token, piece, model codes, user codes, pcm or None) of a frame message."""
    magic, frame, tok, qm, qu, np_ = FRAME_HEADER.unpack_from(data, 0)
    if magic != FRAME_MAGIC:
        raise ValueError(f"not a frame message (magic {magic!r})")
    off = FRAME_HEADER.size
    model_codes = np.frombuffer(data, "<i4", qm, off).astype(np.int64)
    off += 4 * qm
    user_codes = np.frombuffer(data, "<i4", qu, off).astype(np.int64)
    off += 4 * qu
    piece = data[off:off + np_].decode("utf-8")
    off += np_
    pcm = np.frombuffer(data, "<f4", offset=off).astype(np.float32) if len(data) > off else None
    return frame, tok, piece, model_codes, user_codes, pcm


def text_piece(tok: int, tokenizer: Any) -> str:
    """The SentencePiece piece of a word token ("▁" → a space); "" for PAD/EPAD/control ids."""
    if tokenizer is None or not 0 <= tok < tokenizer.text_card or tokenizer.is_control(tok):
        return ""
    return tokenizer.sp.id_to_piece(int(tok)).replace("\u2581", " ")


def batch_name(prefix: str, model_version: str, day: datetime) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model_version).strip("-") or "model"
    return f"{prefix}-{safe}-{day:%Y%m%d}"


@dataclass
class Conversation:
    """One open stream: its slot, codec streams and everything logged at the end."""

    conversation_id: str
    user_id: str
    started_at: datetime
    slot: StreamSlot
    send_audio: bool
    # The client may opt out of logging (log=0: evaluation and load tests are no user's
    # conversation); opting in is not the client's call: the consent registry decides.
    may_log: bool = True
    text: list[int] = field(default_factory=list)
    model_codes: list[np.ndarray] = field(default_factory=list)
    user_codes: list[np.ndarray] = field(default_factory=list)
    user_audio: list[np.ndarray] = field(default_factory=list)
    model_audio: list[np.ndarray] = field(default_factory=list)  # as streamed to the user

    @property
    def frames(self) -> int:
        return len(self.text)

    def tokens(self, q_out: int, q_in: int) -> SessionTokens:
        T = self.frames
        return SessionTokens(
            text=np.asarray(self.text, np.int64),
            model_codes=np.stack(self.model_codes, 1) if T else np.zeros((q_out, 0), np.int64),
            user_codes=np.stack(self.user_codes, 1) if T else np.zeros((q_in, 0), np.int64))


class StreamHub:
    """The open conversations of one server: admission, draining and logging."""

    def __init__(self, cfg: "Config", predictor: DuplexPredictor, executor: Executor):
        self.cfg = cfg
        self.predictor = predictor
        self.executor = executor  # codec work and logging (off the event loop)
        self.open: dict[str, asyncio.Event] = {}  # conversation id → set when fully finished
        self.draining = False
        self._draining = asyncio.Event()  # set when the drain starts
        self._cut = asyncio.Event()  # set when the drain deadline passed: open streams end now
        self._bucket_ready = False

    # -- draining (graceful shutdown)
    async def drain(self, timeout_s: float) -> int:
        """Refuse new streams, tell open ones, wait up to ``timeout_s`` for them to finish (their
        logs written), then end the rest (their logs are written too). Returns how many were cut."""
        self.draining = True
        self.predictor.start_draining()
        self._draining.set()
        waits = [asyncio.ensure_future(e.wait()) for e in self.open.values()]
        if not waits:
            return 0
        _, pending = await asyncio.wait(waits, timeout=timeout_s)
        if pending:
            self._cut.set()
            await asyncio.wait(pending, timeout=60.0)  # their logs are being written
        return len(pending)

    # -- one WebSocket conversation
    async def handle(self, ws: WebSocket, model_name: str) -> None:
        await ws.accept()
        pred = self.predictor
        if model_name != pred.name:
            await _refuse(ws, CLOSE_POLICY, f"unknown model {model_name!r}")
            return
        if self.draining or not pred.ready or pred.batcher is None or pred.model is None:
            await _refuse(ws, CLOSE_TRY_LATER, "the predictor is not ready (loading or draining)")
            return
        q = ws.query_params
        user_id = (q.get("user_id") or "").strip()
        if not 1 <= len(user_id) <= 256:
            await _refuse(ws, CLOSE_POLICY, "query parameter user_id (1-256 chars) is required")
            return
        cid = q.get("conversation_id") or f"srv-{uuid.uuid4().hex[:20]}"
        if not _CID_RE.match(cid):
            await _refuse(ws, CLOSE_POLICY, "conversation_id must match " + _CID_RE.pattern)
            return
        if cid in self.open:
            await _refuse(ws, CLOSE_POLICY, f"conversation {cid} is already open")
            return
        send_audio = q.get("audio", "1") not in ("0", "false", "no")
        may_log = q.get("log", "1") not in ("0", "false", "no")
        model = pred.model
        try:
            slot = pred.batcher.open()
        except (SlotsFull, BatcherStopped) as exc:
            await _refuse(ws, CLOSE_TRY_LATER, str(exc))
            return
        conv = Conversation(cid, user_id, datetime.now(timezone.utc), slot, send_audio,
                            may_log=may_log)
        finished = asyncio.Event()
        self.open[cid] = finished
        version = pred.model_version
        M.ACTIVE_STREAMS.labels(version).inc()
        outcome = "ok"
        reason = "end"
        try:
            await ws.send_text(json.dumps({
                "type": "ready", "conversation_id": cid, "model_version": version,
                "sample_rate": SAMPLE_RATE, "frame_size": FRAME_SIZE, "slot": slot.index,
                "text_card": model.tokenizer.text_card if model.tokenizer else None,
                "audio": send_audio}))
            reason = await self._frames(ws, conv)
        except WebSocketDisconnect:
            reason = "disconnect"
        except ValueError as exc:  # a malformed message: the client's fault (close 1008)
            outcome, reason = "error", "bad-request"
            await _try_send(ws, {"type": "error", "message": str(exc)})
        except Exception as exc:  # reported to the client, logged, counted
            outcome, reason = "error", "error"
            log.exception("stream %s failed", cid)
            await _try_send(ws, {"type": "error", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            slot.close()
            M.ACTIVE_STREAMS.labels(version).dec()
            M.REQUESTS.labels(version, "stream", outcome).inc()
            try:
                logged, why = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.log_conversation, conv)
            except Exception:
                log.exception("logging conversation %s failed", cid)
                logged, why = False, "error"
                M.NOT_LOGGED.labels(version, "error").inc()
            if reason != "disconnect":
                await _try_send(ws, {"type": "closed", "conversation_id": cid,
                                     "frames": conv.frames, "logged": logged, "reason": why,
                                     "ended_by": reason})
                code = {"drain": CLOSE_GOING_AWAY, "bad-request": CLOSE_POLICY,
                        "error": CLOSE_ERROR}.get(reason, CLOSE_NORMAL)
                try:
                    await ws.close(code)
                except Exception:  # already gone
                    pass
            self.open.pop(cid, None)
            finished.set()

    async def _frames(self, ws: WebSocket, conv: Conversation) -> str:
        """The frame loop; returns why it ended ("end" | "disconnect" | "drain")."""
        pred = self.predictor
        assert pred.batcher is not None and pred.model is not None
        frame_seconds = M.REQUEST_SECONDS.labels(pred.model_version, "stream")
        cut = asyncio.ensure_future(self._cut.wait())
        drain = asyncio.ensure_future(self._draining.wait())
        receive: asyncio.Future | None = None
        told = False
        try:
            while True:
                if self._cut.is_set():
                    return "drain"
                if self.draining and not told:  # the client may wrap up before the deadline
                    told = True
                    await ws.send_text(json.dumps({
                        "type": "draining", "deadline_s": self.cfg.serving.drain_timeout_s}))
                if receive is None:
                    receive = asyncio.ensure_future(ws.receive())
                waits = {receive, cut} | (set() if told else {drain})
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    continue
                msg, receive = receive.result(), None
                if msg["type"] == "websocket.disconnect":
                    return "disconnect"
                if msg.get("text") is not None:
                    body = _json(msg["text"])
                    if body.get("type") == "end":
                        return "end"
                    raise ValueError(f"unknown control message {body.get('type')!r}")
                data = msg.get("bytes") or b""
                t0 = time.perf_counter()
                if len(data) != FRAME_BYTES:
                    raise ValueError(f"a frame is {FRAME_SIZE} float32 samples ({FRAME_BYTES} "
                                     f"bytes), got {len(data)} bytes")
                pcm = to_pcm16_grid(np.frombuffer(data, "<f4"))
                out = await asyncio.wrap_future(conv.slot.submit(pcm))
                k = conv.frames
                conv.text.append(out.text_token)
                conv.model_codes.append(out.model_codes)
                conv.user_codes.append(out.user_codes)
                conv.user_audio.append(pcm)
                conv.model_audio.append(out.pcm)
                piece = text_piece(out.text_token, pred.model.tokenizer)
                await ws.send_bytes(encode_frame(k, out.text_token, piece, out.model_codes,
                                                 out.user_codes,
                                                 out.pcm if conv.send_audio else None))
                frame_seconds.observe(time.perf_counter() - t0)
        finally:
            for fut in (cut, drain, receive):
                if fut is not None:
                    fut.cancel()

    # -- logging (worker thread)
    def log_conversation(self, conv: Conversation) -> tuple[bool, str]:
        """Write the conversation to raw/ if allowed; returns (logged, reason)."""
        pred, cfg = self.predictor, self.cfg
        version = pred.model_version
        if conv.frames == 0:
            return self._not_logged(version, "empty")
        if not cfg.serving.log_conversations:
            return self._not_logged(version, "logging-disabled")
        if not conv.may_log:
            return self._not_logged(version, "client-opt-out")
        if not user_consents_now(cfg, conv.user_id):
            return self._not_logged(version, "no-consent")
        from components.common.rawlog import write_raw_conversation
        from components.common.storage import ObjectStore
        from components.contract import ConversationMetadata
        from components.streams.interleave import words_from_text_stream

        model = pred.model
        assert model is not None and pred.batcher is not None
        tokens = conv.tokens(pred.batcher.q_out, pred.batcher.q_in)
        store = ObjectStore.from_config(cfg.storage)
        if not self._bucket_ready:
            store.ensure_bucket(versioning=True)
            self._bucket_ready = True
        meta = ConversationMetadata(conversation_id=conv.conversation_id, user_id=conv.user_id,
                                    model_version=version, started_at=conv.started_at,
                                    sample_rate=SAMPLE_RATE, audio_layout="separate")
        batch = batch_name(cfg.serving.raw_batch_prefix, version, conv.started_at)
        write_raw_conversation(  # model.wav: the streaming decode, what the user heard
            store, batch, meta, model_audio=np.concatenate(conv.model_audio),
            user_audio=np.concatenate(conv.user_audio), tokens=tokens, identity=model.identity,
            model_words=words_from_text_stream(tokens.text, model.tokenizer))
        M.LOGGED.labels(version).inc()
        log.info("logged %s to raw/%s/", conv.conversation_id, batch)
        return True, "logged"

    @staticmethod
    def _not_logged(version: str, reason: str) -> tuple[bool, str]:
        M.NOT_LOGGED.labels(version, reason).inc()
        return False, reason


def user_consents_now(cfg: "Config", user_id: str) -> bool:
    """Ask the consent registry (the source of truth) with the user's pseudonym, now."""

    from components.common.consent import ConsentRegistry
    from components.common.privacy import load_pseudonym_key, pseudonymise

    pseudonym = pseudonymise(user_id, load_pseudonym_key(cfg.scrub))
    registry = ConsentRegistry.from_config(cfg.consent)
    try:
        registry.migrate()
        return registry.has_consent(pseudonym)
    finally:
        registry.close()


def _json(text: str) -> dict:
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"control messages are JSON objects: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("control messages are JSON objects")
    return body


async def _try_send(ws: WebSocket, body: dict) -> None:
    try:
        await ws.send_text(json.dumps(body))
    except Exception:  # the client is gone: nothing to tell
        pass


async def _refuse(ws: WebSocket, code: int, message: str) -> None:
    await _try_send(ws, {"type": "error", "message": message})
    await ws.close(code)


def register_stream_route(app: FastAPI, hub: StreamHub) -> None:
    """Add the WebSocket route to the (KServe) FastAPI app: ONE port for OIP and streams."""

    async def stream(websocket: WebSocket, model_name: str) -> None:
        await hub.handle(websocket, model_name)

    app.add_api_websocket_route(STREAM_ROUTE, stream)
