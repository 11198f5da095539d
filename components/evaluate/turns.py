"""Evaluation through the predictor's Open Inference Protocol v2 endpoint, one turn per item
(``evaluate.backend = "oip"``): the question spoken by the evaluation voice is POSTed as the user's
turn, the reply comes back as audio, text and word times.

What it is for: an endpoint-only evaluation — any OIP v2 server of the model, e.g. a canary
revision behind KServe's router, with no WebSocket — and a fast content check. What it is not:
a conversation. Each item is a fresh one-turn session with no warm-up and no reactive user
(nobody waits, nudges or cuts a reply), so the timing labels mean something narrower than in
the full-duplex backends and are defined here:

* ``interrupted``: the reply's first word starts more than ``evaluate.interruption_tolerance_s``
  before the end of the user's audio (``latency_s`` from the predictor);
* ``silent``: no word within ``evaluate.silence_threshold_s`` after the user's end (or no word);
* the reply = the words the model started from the beginning of the user's audio on, until the
  predictor ended the turn (``serving.end_of_reply_s`` of no new word, or ``max_reply_s``).

Content labels are the full-duplex backends' (live.py's ``label_reply``, public sets'
``answer_matches``); with ``evaluate.answers = "audio"`` the reply audio is transcribed
(answers.py) like theirs.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from components.common.config import Config
from components.evaluate.behaviour import ReplyRecord
from components.evaluate.items import EvalConversation, EvalItem
from components.evaluate.serve import ServeStats, prewarm_tts
from components.speech.textnorm import normalize, spoken_text

SAMPLE_RATE = 24_000


def spoken_prompt(tts: Any, item: EvalItem) -> np.ndarray:
    """The item's prompt in the evaluation voice, 24 kHz mono float32."""
    from components.common.audio import resample

    speech = tts.speak(spoken_text(normalize(item.prompt)))
    return resample(np.asarray(speech.audio, np.float32), speech.sample_rate, SAMPLE_RATE)


def record_of(cfg: Config, conv: EvalConversation, item: EvalItem, reply: Any,
              user_s: float) -> ReplyRecord:
    """One turn's reply labelled (module docstring); times from the start of the user's audio."""
    from components.simulate.live import label_reply

    ev = cfg.evaluate
    words = reply.words or []
    latency = reply.latency_s
    first = user_s + words[0]["start"] if words else None
    last = user_s + words[-1]["end"] if words else None
    correct = refused = None
    if item.kind == "public_qa":
        from components.evaluate.public import answer_matches

        correct = answer_matches(reply.text, item.answers) if words else None
    elif item.request_kind == "fact":
        correct = bool(label_reply("fact", item.script_id, reply.text).answer_correct) \
            if words else None
    elif item.request_kind in ("unsafe", "benign_edgy"):
        refused = label_reply(item.request_kind, item.script_id, reply.text).refused
    return ReplyRecord(
        conversation=conv.index, item_id=item.id, kind=item.kind, world_id=item.world_id,
        user_end=round(user_s, 3), first_word_start=first, last_word_end=last, latency_s=latency,
        interrupted=latency is not None and latency < -ev.interruption_tolerance_s,
        silent=latency is None or latency > ev.silence_threshold_s, text=reply.text,
        words=len(words), correct=correct, refused=refused)


def serve_items_oip(cfg: Config, folder: Path, model_version: str,
                    conversations: list[EvalConversation], progress: bool = True,
                    ) -> tuple[list[ReplyRecord], ServeStats]:
    """Serve the checkpoint ``folder`` with the predictor on loopback and ask every scored item
    as one OIP v2 turn (up to ``serving.max_streams`` at once); records in item order."""
    import httpx

    from components.evaluate.served import served_config
    from components.speech.tts import USER_VOICE, PiperSynthesizer
    from serving.client import infer_turn
    from serving.server import running_server

    t0 = time.monotonic()
    stats = ServeStats()
    tts = PiperSynthesizer(USER_VOICE, cfg.simulate.tts_cache_dir)
    prewarm_tts(tts, conversations)
    jobs = [(conv, item, spoken_prompt(tts, item)) for conv in conversations for item in conv.items]
    stats.tts_s = time.monotonic() - t0
    server_cfg = served_config(cfg, len(jobs))
    max_reply_s = max(cfg.serving.max_reply_s, cfg.evaluate.silence_threshold_s + 1.0)
    with running_server(server_cfg, str(folder), model_version=model_version) as server, \
            httpx.Client(timeout=300.0) as client:
        if server.model_version != model_version:
            raise RuntimeError(f"the server reports {server.model_version}, expected "
                               f"{model_version}")

        def ask(job: tuple[EvalConversation, EvalItem, np.ndarray]) -> ReplyRecord:
            conv, item, pcm = job
            reply = infer_turn(server.url, server.model_name, pcm, max_reply_s=max_reply_s,
                               client=client)
            record = record_of(cfg, conv, item, reply, len(pcm) / SAMPLE_RATE)
            if cfg.evaluate.answers == "audio":  # the reply channel on the record's timeline
                lead = np.zeros(int(np.ceil(len(pcm) / 1920)) * 1920, np.float32)
                stats.item_audio[item.id] = np.concatenate([lead, reply.audio])
            return record

        with ThreadPoolExecutor(server_cfg.serving.max_streams,
                                thread_name_prefix="evaluate-turn") as pool:
            records = list(pool.map(ask, jobs))
        batch = server.predictor.batcher.stats
        stats.steps, stats.lm_s, stats.encode_s = batch.steps, batch.lm_s, batch.codec_s
    if progress:
        print(f"[evaluate] {model_version}: {len(records)} OIP turns in "
              f"{time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
    stats.conversations = len(conversations)
    stats.frames = batch.slot_steps
    stats.seconds = time.monotonic() - t0
    return records, stats
