"""The KServe custom predictor: a Moshi-class model behind the Open Inference Protocol v2.

``DuplexPredictor`` is a ``kserve.Model``. ``load()`` resolves ``cfg.serving.model_source`` (a
registry alias, ``models:/`` URI, ``s3://`` URI or a folder — in a pod the ``/mnt/models`` folder
KServe's storage initializer filled) through components/model, loads the checkpoint and starts
the batcher (serving/batcher.py: ONE LMGen, ``cfg.serving.max_streams`` slots) that OIP turns and
WebSocket conversations (serving/streaming.py) share.

OIP v2 ``infer`` is TURN-BASED (what the evaluator's endpoint backend asks): every request is a
fresh one-turn conversation in its own slot —

* input ``audio``: FP32 [n], the user's turn, 24 kHz mono PCM (zero-padded to whole 80 ms frames;
  rounded to the 16-bit grid like every served input);
* optional request parameter ``max_reply_s`` (default ``cfg.serving.max_reply_s``);
* the user's frames are fed, then silence frames, until the reply has started and
  ``cfg.serving.end_of_reply_s`` passed without a new word, or ``max_reply_s`` of silence frames;
* outputs (times are relative to the END of the user's audio): ``audio`` FP32 [m] — the model's
  channel from the end of the user's audio on (the streaming decode, as a live user hears it);
  ``text`` BYTES [1] — the reply's words;
  ``words`` BYTES [1] — JSON list of {word, start, end}; ``latency_s`` FP32 [1] — first word start
  (negative: the model talked over the user; shape [0] when it said nothing: JSON has no NaN);
  ``model_version`` BYTES [1].

The reply's words are the words the model STARTED from the beginning of the user's audio on (as
live.py's labeller windows a request), read from its text stream.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import HTTPException

from serving import metrics as M
from serving.batcher import BatchedLM, SlotsFull
from serving.engine import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE
from serving.kserve_compat import (  # kserve must not parse our command line
    InferOutput,
    InferRequest,
    InferResponse,
    InvalidInput,
    Model,
    ModelNotReady,
)

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config
    from components.model.checkpoint import LoadedModel

log = logging.getLogger("duplexalign.serving")


@dataclass
class TurnResult:
    text: str
    words: list[dict[str, Any]]  # {word, start, end}: seconds from the end of the user's audio
    audio: np.ndarray  # float32, the model's channel from the end of the user's audio
    latency_s: float | None  # first word start (relative to the end of the user's audio)
    frames: int  # frames stepped (user + silence)
    user_frames: int


def to_pcm16_grid(pcm: np.ndarray) -> np.ndarray:
    """float32 samples rounded to the 16-bit grid (clipped to [-1, 1)): what user.wav stores, so
    re-encoding the logged user.wav gives exactly the codes the model heard."""
    from components.common.audio import quantize_pcm16

    return quantize_pcm16(np.asarray(pcm, dtype=np.float32).reshape(-1)).astype(np.float32)


def is_word_token(tok: int, tokenizer: Any) -> bool:
    return 0 <= tok < tokenizer.text_card and not tokenizer.is_control(int(tok))


def run_turn(model: "LoadedModel", batcher: BatchedLM, pcm: np.ndarray, *, max_reply_s: float,
             end_of_reply_s: float) -> TurnResult:
    """One turn-based exchange through a batcher slot (blocking; run it off the event loop)."""
    from components.streams.interleave import words_from_text_stream

    x = to_pcm16_grid(pcm)
    n_user = max(1, -(-x.shape[0] // FRAME_SIZE))
    padded = np.zeros(n_user * FRAME_SIZE, np.float32)
    padded[: x.shape[0]] = x
    silence = np.zeros(FRAME_SIZE, np.float32)
    quiet_frames = max(1, int(round(end_of_reply_s * FRAME_RATE)))
    max_frames = max(1, int(round(max_reply_s * FRAME_RATE)))
    text: list[int] = []
    reply_audio: list[np.ndarray] = []
    started, last_word = False, -1
    with batcher.open() as slot:
        for k in range(n_user + max_frames):
            frame = padded[k * FRAME_SIZE:(k + 1) * FRAME_SIZE] if k < n_user else silence
            out = slot.step(frame)
            text.append(out.text_token)
            if k >= n_user:
                reply_audio.append(out.pcm)
            if is_word_token(out.text_token, model.tokenizer):
                started, last_word = True, k
            if k >= n_user and started and k - last_word >= quiet_frames:
                break
    user_end_s = n_user / FRAME_RATE
    # Negative times are legal here (the model talked over the user), unlike a WordStamp's.
    words = [{"word": w.word, "start": round(w.start - user_end_s, 4),
              "end": round(w.end - user_end_s, 4)}
             for w in words_from_text_stream(np.asarray(text, np.int64), model.tokenizer)]
    audio = np.concatenate(reply_audio) if reply_audio else np.zeros(0, np.float32)
    return TurnResult(text=" ".join(w["word"] for w in words), words=words, audio=audio,
                      latency_s=words[0]["start"] if words else None, frames=len(text),
                      user_frames=n_user)


class DuplexPredictor(Model):
    """A Moshi-class model as a KServe predictor (module docstring). ``model_version``
    overrides the version tag (default: components.model.registry.model_version_tag)."""

    def __init__(self, cfg: "Config", model_source: str | None = None, *,
                 model_version: str | None = None):
        super().__init__(cfg.serving.model_name)
        self.cfg = cfg
        self.model_source = str(model_source or cfg.serving.model_source)
        self.model_version = model_version or ""
        self.model: "LoadedModel | None" = None
        self.batcher: BatchedLM | None = None
        self.draining = False

    # -- lifecycle
    def load(self) -> bool:
        import torch

        from components.model.checkpoint import load_checkpoint
        from components.model.registry import model_version_tag, resolve_model

        t0 = time.monotonic()
        if self.cfg.serving.threads and not torch.cuda.is_available():
            torch.set_num_threads(self.cfg.serving.threads)  # small steps: 1 thread is fastest
        folder = resolve_model(self.cfg, self.model_source)
        self.model = load_checkpoint(folder, self.cfg)
        if torch.cuda.is_available():
            self.model.lm.to("cuda")
        if not self.model_version:
            self.model_version = model_version_tag(self.cfg, self.model_source)
        self.batcher = BatchedLM(self.model, self.cfg.policy, self.cfg.serving.max_streams,
                                 seed=self.cfg.policy.seed,
                                 gather_s=self.cfg.serving.gather_ms / 1000.0,
                                 on_step=M.on_step(self.model_version))
        self.ready = True
        log.info("loaded %s (%s) in %.1fs", self.model_version, folder, time.monotonic() - t0)
        return self.ready

    def start_draining(self) -> None:
        """Readiness false at once (Knative stops routing new requests here)."""
        self.draining = True
        self.ready = False

    def stop(self) -> None:
        self.ready = False
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None

    # -- OIP v2 metadata
    def get_input_types(self) -> list[dict]:
        return [{"name": "audio", "datatype": "FP32", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": "audio", "datatype": "FP32", "shape": [-1]},
                {"name": "text", "datatype": "BYTES", "shape": [1]},
                {"name": "words", "datatype": "BYTES", "shape": [1]},
                {"name": "latency_s", "datatype": "FP32", "shape": [1]},
                {"name": "model_version", "datatype": "BYTES", "shape": [1]}]

    # -- OIP v2 infer
    def _turn_inputs(self, payload: Any) -> tuple[np.ndarray, float]:
        if not isinstance(payload, InferRequest):
            raise InvalidInput("this predictor speaks the Open Inference Protocol v2 only "
                               "(POST /v2/models/<name>/infer)")
        tensor = payload.get_input_by_name("audio")
        if tensor is None:
            raise InvalidInput("input tensor 'audio' (FP32 [n], 24 kHz mono PCM) is required")
        if tensor.datatype != "FP32":
            raise InvalidInput(f"input 'audio' must be FP32, got {tensor.datatype}")
        pcm = np.asarray(tensor.as_numpy(), dtype=np.float32).reshape(-1)
        if pcm.size == 0 or not np.all(np.isfinite(pcm)):
            raise InvalidInput("input 'audio' must be non-empty and finite")
        params = payload.parameters or {}
        max_reply_s = float(params.get("max_reply_s", self.cfg.serving.max_reply_s))
        if not 0 < max_reply_s <= 120:
            raise InvalidInput("parameter max_reply_s must be in (0, 120]")
        return pcm, max_reply_s

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> InferResponse:
        if self.draining or self.batcher is None or self.model is None:
            raise ModelNotReady(self.name, "the predictor is shutting down")
        t0 = time.perf_counter()
        outcome = "error"
        try:
            pcm, max_reply_s = self._turn_inputs(payload)
            try:
                turn = await asyncio.to_thread(
                    run_turn, self.model, self.batcher, pcm, max_reply_s=max_reply_s,
                    end_of_reply_s=self.cfg.serving.end_of_reply_s)
            except SlotsFull as exc:
                raise HTTPException(status_code=503, detail=str(exc)) from None
            outcome = "ok"
        finally:
            M.REQUESTS.labels(self.model_version, "infer", outcome).inc()
            M.REQUEST_SECONDS.labels(self.model_version, "infer").observe(time.perf_counter() - t0)
        words_json = json.dumps(turn.words)
        outputs = [
            _output("audio", turn.audio.astype(np.float32)),
            _output("text", np.array([turn.text.encode()], dtype=np.object_)),
            _output("words", np.array([words_json.encode()], dtype=np.object_)),
            _output("latency_s", np.array([] if turn.latency_s is None else [turn.latency_s],
                                          dtype=np.float32)),
            _output("model_version", np.array([self.model_version.encode()], dtype=np.object_)),
        ]
        return InferResponse(response_id=payload.id or "", model_name=self.name,
                             infer_outputs=outputs, model_version=self.model_version)


def _output(name: str, arr: np.ndarray) -> InferOutput:
    datatype = "BYTES" if arr.dtype == np.object_ else "FP32"
    out = InferOutput(name=name, shape=list(arr.shape), datatype=datatype)
    out.set_data_from_numpy(arr, binary_data=False)
    return out


__all__ = ["DuplexPredictor", "TurnResult", "run_turn", "SAMPLE_RATE", "FRAME_SIZE"]
