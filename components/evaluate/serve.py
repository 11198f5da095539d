"""Serve the evaluation conversations and label every scored reply.

Each conversation is live.py's reactive user (``ReactiveUser``: the same frame loop that serves
``simulate --policy``) with an evaluation script — an unscored small-talk warm-up, then the scored
items — against the model, several conversations at a time in lockstep waves (lockstep.py). The
replies are labelled by live.py's own labeller (``label_replies``), with the evaluation's
interruption and silence thresholds.

Evaluation user: the same as serving's, with two changes (both make the figures about the model,
not about the user): it never barges in (``rate_barge_in`` = 0; it still cuts a reply that runs
past ``policy.max_reply_s``), and the conversation's time cap is raised so that every scripted
request gets asked even if the model rambles to the cap every time.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from components.common.config import Config, PolicyConfig
from components.evaluate.behaviour import ReplyRecord
from components.evaluate.items import EvalConversation, EvalItem
from components.simulate import live as L
from components.simulate import world as W
from components.speech.textnorm import normalize, spoken_text

if TYPE_CHECKING:  # pragma: no cover
    from components.model.checkpoint import LoadedModel
    from components.speech.tts import Synthesizer

MAX_UTTERANCE_S = 6.0  # longer than any evaluation prompt or closing line as spoken


def evaluation_policy(policy: PolicyConfig, n_requests: int) -> PolicyConfig:
    """Serving's policy with no barge-ins and a time cap every request fits under: per exchange
    the user's turn, then the longest the user waits (a reply cut at max_reply_s, or two
    timeouts around a nudge), plus the turn gaps; the greeting and closing count as exchanges."""
    per_exchange = MAX_UTTERANCE_S + max(policy.max_reply_s, 2 * policy.wait_timeout_s +
                                         MAX_UTTERANCE_S) + 2.0
    cap = L.GREETING_WAIT_S + policy.max_reply_s + (n_requests + 1) * per_exchange
    return policy.model_copy(update={"rate_barge_in": 0.0,
                                     "max_duration_s": max(policy.max_duration_s, cap)})


def script_of(conv: EvalConversation) -> list[L.ScriptRequest]:
    return [L.ScriptRequest(item.request_kind, item.script_id, normalize(item.prompt))
            for item in conv.script]


def prewarm_tts(tts: "Synthesizer | Any", conversations: list[EvalConversation]) -> None:
    """Synthesise every line the users may say, once, before the threads start: the waves then
    only read the TTS cache (and a cold cache is paid for with a visible progress line)."""
    texts = {spoken_text(normalize(i.prompt)) for c in conversations for i in c.script}
    texts |= {spoken_text(normalize(t)) for t in W.USER_CLOSINGS + W.NUDGES}
    for text in sorted(texts):
        tts.speak(text)


@dataclass
class ServeStats:
    conversations: int = 0
    frames: int = 0  # conversation frames (80 ms each)
    steps: int = 0  # batched steps
    lm_s: float = 0.0
    encode_s: float = 0.0
    tts_s: float = 0.0
    seconds: float = 0.0
    ended_by: dict[str, int] = field(default_factory=dict)
    # conversation index → the model's 24 kHz channel, kept only when answers are read from the
    # audio (evaluate.answers = "audio")
    model_audio: dict[int, Any] = field(default_factory=dict)
    item_audio: dict[str, Any] = field(default_factory=dict)  # OIP turns: item id → its turn


def label_conversation(cfg: Config, model: "LoadedModel", conv: EvalConversation,
                       record: L.LiveRecord) -> list[ReplyRecord]:
    """live.py's labels of one served conversation, as one record per scored item."""
    from components.streams.interleave import words_from_text_stream

    tokens = record.tokens
    words = words_from_text_stream(tokens.text, model.tokenizer)
    user_turns, _ = L._user_turns(record, tokens.n_frames)
    model_turns = L.label_replies(user_turns, words,
                                  interruption_tolerance_s=cfg.evaluate.interruption_tolerance_s,
                                  silence_threshold_s=cfg.evaluate.silence_threshold_s)
    reply_to = {t.responds_to: t for t in model_turns if t.kind == "reply"}
    turns: dict[tuple[Any, Any], Any] = {(u.request_kind, u.item_id): u for u in user_turns
                                         if u.kind == "request"}
    out = []
    for item in conv.items:
        user = turns.get((item.request_kind, item.script_id))
        if user is None or user.index not in reply_to:
            out.append(ReplyRecord(conv.index, item.id, item.kind, item.world_id, asked=False))
            continue
        reply = reply_to[user.index]
        following = [u for u in user_turns if u.index > user.index and u.kind != "nudge"]
        out.append(ReplyRecord(
            conversation=conv.index, item_id=item.id, kind=item.kind, world_id=item.world_id,
            user_end=user.end, first_word_start=reply.words[0].start if reply.words else None,
            last_word_end=reply.words[-1].end if reply.words else None,
            latency_s=reply.latency_s, interrupted=bool(reply.interruption),
            silent=bool(reply.silence), nudged=reply.nudged,
            cut=bool(following and following[0].cut_reply), text=reply.text,
            words=len(reply.words),
            correct=_correct(item, reply),
            refused=reply.refused if item.request_kind in ("unsafe", "benign_edgy") else None))
    return out


def _correct(item: "EvalItem", reply: Any) -> bool | None:
    """QA items only: the world's fact answer (live.py's label), or a public set's gold answers
    (public.answer_matches); safety items of public sets are scored by the judge (refusal.py)."""
    if item.request_kind == "fact":
        return reply.answer_correct
    if item.kind == "public_qa":
        from components.evaluate.public import answer_matches

        return answer_matches(reply.text, item.answers)
    return None


def serve_conversations(cfg: Config, model: "LoadedModel", conversations: list[EvalConversation],
                        progress: bool = True) -> tuple[list[ReplyRecord], ServeStats]:
    """Serve every conversation (waves of ``cfg.evaluate.batch_size``); the scored records in
    conversation order."""
    from components.evaluate.lockstep import LockstepSessions, Wave
    from components.speech.tts import USER_VOICE, PiperSynthesizer

    t0 = time.monotonic()
    ev = cfg.evaluate
    stats = ServeStats()
    tts = PiperSynthesizer(USER_VOICE, cfg.simulate.tts_cache_dir)
    prewarm_tts(tts, conversations)
    stats.tts_s = time.monotonic() - t0
    records: list[ReplyRecord] = []
    waves = [conversations[i : i + ev.batch_size] for i in range(0, len(conversations), ev.batch_size)]
    for w, wave_convs in enumerate(waves):
        n_requests = max(len(c.script) for c in wave_convs)
        policy = evaluation_policy(cfg.policy, n_requests)

        def driver(conv: EvalConversation):
            rng = random.Random(f"evaluate-user:{ev.seed}:{conv.seed}")
            noise = np.random.default_rng(rng.getrandbits(63))

            def run(slot) -> L.LiveRecord:
                user = L.ReactiveUser(slot, model.tokenizer, policy, script_of(conv), tts, rng,
                                      noise, cfg.simulate.noise_floor_dbfs)
                return user.run()
            return run

        def tick(k: int) -> None:
            if progress and k % 125 == 0:  # every 10 s of conversation
                print(f"[evaluate] wave {w + 1}/{len(waves)}: {len(wave_convs)} conversations, "
                      f"{k / L.FRAME_RATE:.0f}s served ({time.monotonic() - t0:.0f}s)",
                      file=sys.stderr, flush=True)

        with LockstepSessions(model, policy, seed=ev.seed * 1000 + w,
                              batch=len(wave_convs)) as sessions:
            wave = Wave(sessions)
            lives = wave.run([driver(c) for c in wave_convs], on_frame=tick)
        stats.steps += sessions.frames
        stats.lm_s += sessions.lm_s
        stats.encode_s += sessions.encode_s
        for conv, live, slot in zip(wave_convs, lives, wave.slots):
            live.tokens = slot.tokens()
            stats.frames += live.tokens.n_frames
            stats.ended_by[live.ended_by] = stats.ended_by.get(live.ended_by, 0) + 1
            records += label_conversation(cfg, model, conv, live)
            if cfg.evaluate.answers == "audio":
                from serving.engine import decode_model_audio

                stats.model_audio[conv.index] = decode_model_audio(model, live.tokens)
        stats.conversations += len(wave_convs)
    stats.seconds = time.monotonic() - t0
    return records, stats

