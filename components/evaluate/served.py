"""Evaluation through the served model: the predictor (serving/) runs the checkpoint on loopback
and every evaluation conversation is a client of its full-duplex WebSocket stream.

Why: the figures the promotion gate compares should come from the code path users get — the
KServe predictor, its batcher (one LMGen step for every open conversation) and its wire protocol —
not only from an in-process loop. The user side is unchanged: live.py's ``ReactiveUser`` drives a
:class:`RemoteSlot` exactly as it drives a lockstep slot or a ``DuplexSession``, and the replies
are labelled by the same ``label_conversation``. Conversations run concurrently (one thread each,
up to ``serving.max_streams`` at once); the server batches them into shared steps.

The evaluation's streams ask the server not to log them (``log=0``): they are nobody's
conversation. Sampling draws from one RNG for the whole batch (serving/batcher.py), so the tokens
of a conversation depend on which others shared its steps: deterministic in distribution, not bit
for bit (the in-process backend, ``evaluate.backend = "inprocess"``, is bit-reproducible).
"""

from __future__ import annotations

import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.common.config import Config
from components.evaluate.behaviour import ReplyRecord
from components.evaluate.items import EvalConversation
from components.evaluate.serve import (
    ServeStats,
    evaluation_policy,
    label_conversation,
    prewarm_tts,
    script_of,
)
from components.simulate import live as L

if TYPE_CHECKING:  # pragma: no cover
    from serving.client import StreamSession


class RemoteSlot:
    """What one reactive user sees as its session (``step(pcm) -> FrameOut``), over the wire;
    keeps every frame's tokens for labelling."""

    def __init__(self, session: "StreamSession"):
        self.session = session
        self.text: list[int] = []
        self.model: list[np.ndarray] = []
        self.user: list[np.ndarray] = []
        self.pcm: list[np.ndarray] = []  # the model's audio, when the session asked for it

    def step(self, user_pcm: np.ndarray) -> Any:
        out = self.session.step(user_pcm)
        if out.pcm is not None:
            self.pcm.append(np.asarray(out.pcm, np.float32))
        self.text.append(int(out.text_token))
        self.model.append(np.asarray(out.model_codes, np.int64))
        self.user.append(np.asarray(out.user_codes, np.int64))
        return out

    def tokens(self) -> Any:
        from serving.engine import SessionTokens

        if not self.text:
            raise RuntimeError("the conversation has no frame")
        return SessionTokens(text=np.asarray(self.text, dtype=np.int64),
                             model_codes=np.stack(self.model, 1),
                             user_codes=np.stack(self.user, 1))


class _TokenizerOnly:
    """``label_conversation`` reads only the model's tokenizer (words from the text stream)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer


def served_config(cfg: Config, n_conversations: int) -> Config:
    """The evaluation server: loopback, a free port, no logging, enough slots for the wave."""
    out = cfg.model_copy(deep=True)
    out.serving = out.serving.model_copy(update={
        "host": "127.0.0.1", "port": 0, "log_conversations": False,
        "max_streams": max(1, min(cfg.evaluate.batch_size, n_conversations)),
        "threads": cfg.evaluate.threads})
    return out


def serve_conversations_served(cfg: Config, folder: Path, model_version: str, tokenizer: Any,
                               conversations: list[EvalConversation], progress: bool = True,
                               ) -> tuple[list[ReplyRecord], ServeStats]:
    """Serve the checkpoint ``folder`` with the predictor on loopback and run every evaluation
    conversation as a WebSocket client of it; the scored records in conversation order."""
    from components.speech.tts import USER_VOICE, PiperSynthesizer
    from serving.client import StreamSession
    from serving.server import running_server

    t0 = time.monotonic()
    ev = cfg.evaluate
    stats = ServeStats()
    tts = PiperSynthesizer(USER_VOICE, cfg.simulate.tts_cache_dir)
    prewarm_tts(tts, conversations)
    stats.tts_s = time.monotonic() - t0
    server_cfg = served_config(cfg, len(conversations))
    labeller = _TokenizerOnly(tokenizer)
    done = [0]

    with running_server(server_cfg, str(folder), model_version=model_version) as server:
        if server.model_version != model_version:
            raise RuntimeError(f"the server reports {server.model_version}, expected "
                               f"{model_version}")
        if progress:
            print(f"[evaluate] {model_version} served at {server.url} (OIP v2) and "
                  f"{server.ws_url}; {len(conversations)} conversations, "
                  f"{server_cfg.serving.max_streams} at a time", file=sys.stderr, flush=True)

        def run(conv: EvalConversation) -> tuple[L.LiveRecord, RemoteSlot]:
            rng = random.Random(f"evaluate-user:{ev.seed}:{conv.seed}")
            noise = np.random.default_rng(rng.getrandbits(63))
            policy = evaluation_policy(cfg.policy, len(conv.script))
            session = StreamSession(server.ws_url, user_id=f"evaluation-{conv.index}",
                                    conversation_id=f"eval-{conv.index}-{conv.seed}",
                                    audio=cfg.evaluate.answers == "audio", log=False)
            slot = RemoteSlot(session)
            try:
                record = L.ReactiveUser(slot, tokenizer, policy, script_of(conv), tts, rng, noise,
                                        cfg.simulate.noise_floor_dbfs).run()
            finally:
                session.close()
            done[0] += 1
            if progress:
                print(f"[evaluate] {model_version}: {done[0]}/{len(conversations)} conversations "
                      f"({time.monotonic() - t0:.0f}s)", file=sys.stderr, flush=True)
            return record, slot

        with ThreadPoolExecutor(server_cfg.serving.max_streams,
                                thread_name_prefix="evaluate-user") as pool:
            results = list(pool.map(run, conversations))
        batch = server.predictor.batcher.stats  # the server's batched steps (shared by all)
        stats.steps, stats.lm_s, stats.encode_s = batch.steps, batch.lm_s, batch.codec_s
    records: list[ReplyRecord] = []
    for conv, (live, slot) in zip(conversations, results):
        live.tokens = slot.tokens()
        stats.frames += live.tokens.n_frames
        stats.ended_by[live.ended_by] = stats.ended_by.get(live.ended_by, 0) + 1
        records += label_conversation(cfg, labeller, conv, live)
        if slot.pcm:  # answers read from the audio: the channel as the predictor streamed it
            stats.model_audio[conv.index] = np.concatenate(slot.pcm)
    stats.conversations = len(conversations)
    stats.seconds = time.monotonic() - t0
    return records, stats
