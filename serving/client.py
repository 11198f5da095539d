"""Clients of the predictor (serving/README.md has the protocol):

* ``infer_turn(url, model_name, pcm)`` — one turn over plain HTTP, Open Inference Protocol v2
  JSON (what the evaluator's endpoint backend sends);
* ``StreamSession(ws_url, user_id)`` — a full-duplex conversation over the WebSocket route:
  ``step(pcm1920)`` returns a ``StreamFrame`` with the fields of serving.engine.FrameOut (frame,
  text_token, model_codes, user_codes) plus the text piece and the model's PCM, so live.py's
  ReactiveUser can drive a remote model exactly as it drives a local DuplexSession.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np

from serving.engine import FRAME_SIZE, FrameOut
from serving.streaming import decode_frame


@dataclass
class TurnReply:
    text: str
    words: list[dict[str, Any]]  # {word, start, end}, seconds from the end of the user's audio
    audio: np.ndarray  # float32 24 kHz, the model's channel from the end of the user's audio
    latency_s: float | None  # first word start (negative: overlap); None: no reply
    model_version: str


def _tensor(outputs: list[dict], name: str) -> dict:
    for out in outputs:
        if out["name"] == name:
            return out
    raise KeyError(f"the response has no output {name!r}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def infer_turn(url: str, model_name: str, pcm: np.ndarray, *, max_reply_s: float | None = None,
               timeout_s: float = 300.0, client: httpx.Client | None = None) -> TurnReply:
    """POST one user turn (float32 24 kHz mono) to ``{url}/v2/models/{model_name}/infer``."""
    x = np.asarray(pcm, dtype=np.float32).reshape(-1)
    body: dict[str, Any] = {"inputs": [{"name": "audio", "datatype": "FP32",
                                        "shape": [int(x.shape[0])], "data": x.tolist()}]}
    if max_reply_s is not None:
        body["parameters"] = {"max_reply_s": float(max_reply_s)}
    endpoint = f"{url.rstrip('/')}/v2/models/{model_name}/infer"
    if client is None:
        with httpx.Client(timeout=timeout_s) as c:
            resp = c.post(endpoint, json=body)
    else:
        resp = client.post(endpoint, json=body, timeout=timeout_s)
    if resp.status_code != 200:
        raise RuntimeError(f"infer failed: HTTP {resp.status_code}: {resp.text[:500]}")
    outputs = resp.json()["outputs"]
    latency = _tensor(outputs, "latency_s")["data"]
    return TurnReply(
        text=_text(_tensor(outputs, "text")["data"][0]),
        words=json.loads(_text(_tensor(outputs, "words")["data"][0])),
        audio=np.asarray(_tensor(outputs, "audio")["data"], dtype=np.float32),
        latency_s=float(latency[0]) if latency else None,
        model_version=_text(_tensor(outputs, "model_version")["data"][0]))


@dataclass(frozen=True)
class StreamFrame(FrameOut):
    """serving.engine.FrameOut plus what only the wire carries."""

    piece: str = ""  # the text token's piece ("" for PAD / EPAD / control)
    pcm: np.ndarray | None = None  # the model's 1920 samples (None with audio=False)


@dataclass
class StreamSession:
    """A WebSocket conversation (module docstring). Use as a context manager or call close()."""

    ws_url: str
    user_id: str
    conversation_id: str | None = None
    audio: bool = True  # ask for the model's PCM with every frame
    log: bool = True  # False: the server must not log this conversation (evaluation, load tests)
    open_timeout_s: float = 30.0
    ready: dict[str, Any] = field(default_factory=dict)  # the server's "ready" message
    closed: dict[str, Any] | None = None  # the server's "closed" message (after close())
    notices: list[dict[str, Any]] = field(default_factory=list)  # e.g. {"type": "draining"}

    def __post_init__(self) -> None:
        from websockets.sync.client import connect

        query = {"user_id": self.user_id, "audio": "1" if self.audio else "0",
                 "log": "1" if self.log else "0"}
        if self.conversation_id:
            query["conversation_id"] = self.conversation_id
        self._stack = ExitStack()  # websockets >= 17 wants its connection entered
        self._ws = self._stack.enter_context(connect(
            f"{self.ws_url}?{urlencode(query)}", open_timeout=self.open_timeout_s,
            max_size=1 << 22))
        first = json.loads(self._ws.recv(timeout=self.open_timeout_s))
        if first.get("type") != "ready":
            self._stack.close()
            raise RuntimeError(f"stream refused: {first.get('message', first)}")
        self.ready = first
        self.conversation_id = first["conversation_id"]
        self.model_version: str = first["model_version"]

    def step(self, user_pcm: np.ndarray, timeout_s: float = 60.0) -> StreamFrame:
        """Send the user's next 80 ms (1920 float32 at 24 kHz); returns the model's frame."""
        x = np.asarray(user_pcm, dtype="<f4").reshape(-1)
        if x.shape[0] != FRAME_SIZE:
            raise ValueError(f"a frame is {FRAME_SIZE} samples at 24 kHz, got {x.shape[0]}")
        self._ws.send(x.tobytes())
        while True:
            msg = self._ws.recv(timeout=timeout_s)
            if isinstance(msg, bytes):
                frame, tok, piece, model_codes, user_codes, pcm = decode_frame(msg)
                return StreamFrame(frame=frame, text_token=tok, model_codes=model_codes,
                                   user_codes=user_codes, piece=piece, pcm=pcm)
            body = json.loads(msg)
            if body.get("type") in ("error", "closed"):
                self.closed = body
                raise RuntimeError(f"stream ended by the server: {body}")
            self.notices.append(body)

    def close(self, timeout_s: float = 60.0) -> dict[str, Any] | None:
        """End the conversation ("end" message); returns the server's "closed" message
        (frames, whether it was logged and why). Idempotent."""
        if self.closed is None:
            try:
                self._ws.send(json.dumps({"type": "end"}))
                while True:
                    msg = self._ws.recv(timeout=timeout_s)
                    if isinstance(msg, str):
                        body = json.loads(msg)
                        if body.get("type") in ("closed", "error"):
                            self.closed = body
                            break
                        self.notices.append(body)
            except Exception as exc:  # the server went away: report what we know
                self.closed = {"type": "closed", "error": repr(exc)}
        self._stack.close()
        return self.closed

    def __enter__(self) -> "StreamSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
