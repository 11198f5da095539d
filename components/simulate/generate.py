"""Simulate logged user conversations with the scripted assistant — the platform's data source.

`simulate_conversations` writes N conversations into the data bucket exactly as the serving side
logs them (``raw/<batch>/<conversation_id>/``: metadata.json, audio as one stereo audio.wav or
model.wav + user.wav, model_text.json), their ground truth into the SEPARATE ground-truth bucket,
every user's consent into the consent registry (by pseudonym), publishes the knowledge base to
``kb/`` and seals a raw manifest.

Resumable and content-addressed:

* a conversation's id is ``conv-`` + a hash of (seed, index, config fingerprint) — the fingerprint
  covers the world version, the TTS voices and every simulate knob except the count, so changing
  a rate never reuses ids for different content;
* everything is drawn from RNGs seeded by (seed, index), and TTS is deterministic and cached, so
  a conversation's objects are byte-identical on every run;
* the ground-truth object is written LAST and is the completion marker: a conversation whose
  ground truth and raw objects exist is skipped; an object whose stored etag equals the MD5 of
  the bytes to write is not rewritten (no new version). Killed midway, a rerun finishes the rest
  and writes the same manifest.

Timing model per exchange (user turn → model reply): the user starts 0.3–0.9 s after the model
stops; the model normally answers 0.3–0.9 s after the user stops. Planted timing problems:
INTERRUPTION (the model starts 0.4–1.5 s before the user ends) and SILENCE (the model starts
2.5–4 s after the user ends, or says nothing until the user asks "hello, are you there?").
A short model backchannel ("mm-hm") sometimes falls in a pause of a long user turn (not a
problem). Content problems (wrong fact, unsafe compliance, unhelpful, off-tone, instruction
missed) are drawn per reply at the configured rates, and the request kind is then chosen to fit
(e.g. a wrong fact answers a fact question); rates are per exchange reply (greetings and
closings are always fine).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from components.common.audio import encode_wav, resample
from components.common.config import Config, SimulateConfig
from components.common.rawlog import json_bytes, object_ref, put_if_changed
from components.contract import (
    USER_AUDIO_METADATA,
    ConversationMetadata,
    Keys,
    ObjectRef,
    RawItem,
    WordStamp,
    audio_objects,
    canonical_json,
    model_alignments_payload,
)
from components.simulate import world as W
from components.simulate.groundtruth import (
    Backchannel,
    GroundTruth,
    GtWord,
    ModelTurn,
    PlantedPii,
    UserTurn,
)
from components.speech.textnorm import Token, normalize, spoken_text, written_text
from components.speech.tts import (
    ENGINE_VERSION,
    MODEL_VOICE,
    USER_VOICE,
    PiperSynthesizer,
    Speech,
    Synthesizer,
    speak_parts,
)

# Bump when the same knobs render different audio (2: a user turn's sentences are synthesised
# separately, tts.speak_parts), so conversation ids never name two different renderings.
RENDER_VERSION = 2
MODEL_AUDIO_METADATA = {"duplexalign-content": "model-audio"}
SAMPLE_RATES = [(24000, 0.7), (16000, 0.1), (44100, 0.1), (48000, 0.1)]
STARTED_BASE = datetime(2026, 10, 1, 8, 0, tzinfo=timezone.utc)
CONSENT_AT = STARTED_BASE - timedelta(days=30)
# Fine-variant request mix when no content problem is planted.
MIN_DURATION_S = 20.0  # conversations are extended (up to turns_max exchanges) to about this
REQUEST_MIX = [("fact", 0.45), ("unsafe", 0.15), ("benign_edgy", 0.15), ("small_talk", 0.1),
               ("instruction", 0.15)]


# ----------------------------------------------------------------------------- ids and users


def config_fingerprint(sim: SimulateConfig) -> str:
    knobs = sim.model_dump(exclude={"conversations", "tts_cache_dir"})
    body = {"world": W.WORLD_VERSION, "tts": ENGINE_VERSION, "render": RENDER_VERSION, "voices": [asdict(USER_VOICE), asdict(MODEL_VOICE)],
            "simulate": knobs}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def conversation_id(seed: int, index: int, fingerprint: str, batch: str) -> str:
    """Unique per batch: the same world content logged again in another batch is a new
    conversation, not a duplicate of the first."""
    return "conv-" + hashlib.sha256(f"{seed}:{fingerprint}:{batch}:{index}".encode()).hexdigest()[:16]


def default_batch(sim: SimulateConfig) -> str:
    return f"sim-seed{sim.seed}"


def assign_users(seed: int, n: int, rate_repeat: float) -> list[int]:
    """User index of each conversation. Prefix-stable: conversation i's user depends only on
    conversations < i, so simulating more conversations never changes the earlier ones."""
    users: list[int] = []
    next_user = 0
    for i in range(n):
        rng = random.Random(f"user-assign:{seed}:{i}")
        if i >= 2 and rng.random() < rate_repeat:
            users.append(users[rng.randrange(i)])  # frequent users recur more often
        else:
            users.append(next_user)
            next_user += 1
    return users


def user_consents(seed: int, user_index: int, rate_no_consent: float) -> bool:
    """Whether a simulated user consented. User #1 never consents when the rate is > 0, so even
    a three-conversation corpus exercises the no-consent path; the rest are drawn at the rate."""
    if rate_no_consent > 0 and user_index == 1:
        return False
    return random.Random(f"consent:{seed}:{user_index}").random() >= rate_no_consent


# ----------------------------------------------------------------------------- rendering


@dataclass
class _Clip:
    speaker: str  # "user" | "model"
    speech: Speech
    start: float  # when the first word starts

    @property
    def offset(self) -> float:  # when the clip itself starts
        return self.start - self.speech.words[0].start if self.speech.words else self.start

    @property
    def end(self) -> float:
        return self.start + (self.speech.words[-1].end - self.speech.words[0].start)


@dataclass
class RenderedConversation:
    groundtruth: GroundTruth
    model_audio: np.ndarray
    user_audio: np.ndarray
    sample_rate: int
    model_words: list[WordStamp]
    metadata: ConversationMetadata


def _token_times(tokens: list[Token], speech: Speech, start: float) -> list[tuple[str, float, float]]:
    """Absolute (written token, start, end): each token owns as many spoken words as it says."""
    base = start - speech.words[0].start
    out = []
    k = 0
    for tok in tokens:
        n = len(tok.spoken.split())
        span = speech.words[k : k + n]
        if len(span) != n:
            raise RuntimeError(f"TTS returned {len(speech.words)} words for {spoken_text(tokens)!r}")
        out.append((tok.written, round(base + span[0].start, 3), round(base + span[-1].end, 3)))
        k += n
    return out


def _spoken_words(speech: Speech, start: float) -> list[GtWord]:
    base = start - speech.words[0].start
    return [GtWord(word=w.word, start=round(base + w.start, 3), end=round(base + w.end, 3))
            for w in speech.words]


def _weighted(rng: random.Random, pairs: list[tuple[Any, float]]) -> Any:
    total = sum(w for _, w in pairs)
    u = rng.random() * total
    for value, weight in pairs:
        u -= weight
        if u <= 0:
            return value
    return pairs[-1][0]


def _lower_first(tok: Token) -> Token:
    if tok.written in ("I", "I'm", "I'll") or tok.written[:1].islower():
        return tok
    return Token(tok.written[:1].lower() + tok.written[1:], tok.spoken[:1].lower() + tok.spoken[1:])


@dataclass
class _Reply:
    request_kind: str
    item_id: str
    prompt: str
    text: str
    good_text: str
    variant: str
    problems: list[str] = field(default_factory=list)


def _choose_content_problem(rng: random.Random, sim: SimulateConfig) -> str | None:
    rates = [("wrong_fact", sim.rate_wrong_fact), ("unsafe_compliance", sim.rate_unsafe_compliance),
             ("unhelpful", sim.rate_unhelpful), ("off_tone", sim.rate_off_tone),
             ("instruction_missed", sim.rate_instruction_missed)]
    total = sum(r for _, r in rates)
    scale = 1.0 / total if total > 1.0 else 1.0
    u = rng.random()
    for name, rate in rates:
        u -= rate * scale
        if u < 0:
            return name
    return None


def _pick(rng: random.Random, items: list, used: set[str]) -> Any:
    fresh = [x for x in items if x.id not in used]
    choice = rng.choice(fresh or items)
    used.add(choice.id)
    return choice


def _make_reply(rng: random.Random, problem: str | None, used: set[str]) -> _Reply:
    if problem == "wrong_fact":
        kind = "fact"
    elif problem == "unsafe_compliance":
        kind = "unsafe"
    elif problem == "instruction_missed":
        kind = "instruction"
    elif problem == "unhelpful":
        kind = _weighted(rng, [("fact", 0.6), ("benign_edgy", 0.4)])
    elif problem == "off_tone":
        kind = _weighted(rng, [("fact", 0.4), ("small_talk", 0.3), ("benign_edgy", 0.15), ("instruction", 0.15)])
    else:
        kind = _weighted(rng, REQUEST_MIX)

    if kind == "fact":
        fact = _pick(rng, W.FACTS, used)
        prompt, good = rng.choice(fact.questions), fact.correct_reply()
        if problem == "wrong_fact":
            return _Reply(kind, fact.id, prompt, fact.wrong_reply(), good, "wrong", ["wrong_fact"])
        if problem == "unhelpful":
            return _Reply(kind, fact.id, prompt, rng.choice(W.UNHELPFUL), good, "unhelpful", ["unhelpful"])
        if problem == "off_tone":
            return _Reply(kind, fact.id, prompt, rng.choice(W.OFF_TONE).format(reply=good), good,
                          "off_tone", ["off_tone"])
        return _Reply(kind, fact.id, prompt, good, good, "correct")
    pool = {"unsafe": W.UNSAFE, "benign_edgy": W.BENIGN_EDGY, "small_talk": W.SMALL_TALK,
            "instruction": W.INSTRUCTIONS}[kind]
    req = _pick(rng, pool, used)
    prompt, good = rng.choice(req.prompts), req.good
    if kind == "unsafe":
        if problem == "unsafe_compliance":
            return _Reply(kind, req.id, prompt, req.bad, good, "compliance", ["unsafe_compliance"])
        return _Reply(kind, req.id, prompt, good, good, "refusal")
    if kind == "benign_edgy":
        if problem == "unhelpful":
            return _Reply(kind, req.id, prompt, req.bad, good, "over_refusal", ["unhelpful"])
        if problem == "off_tone":
            return _Reply(kind, req.id, prompt, rng.choice(W.OFF_TONE).format(reply=good), good,
                          "off_tone", ["off_tone"])
        return _Reply(kind, req.id, prompt, good, good, "helpful")
    if kind == "small_talk":
        if problem == "off_tone":
            return _Reply(kind, req.id, prompt, req.bad, good, "rude", ["off_tone"])
        return _Reply(kind, req.id, prompt, good, good, "polite")
    # instruction
    if problem == "instruction_missed":
        return _Reply(kind, req.id, prompt, req.bad, good, "missed", ["instruction_missed"])
    if problem == "off_tone":
        return _Reply(kind, req.id, prompt, rng.choice(W.OFF_TONE).format(reply=good), good,
                      "off_tone", ["off_tone"])
    return _Reply(kind, req.id, prompt, good, good, "compliant")


class ConversationBuilder:
    """Draws and renders one conversation (pure: no storage; TTS through the synthesizers)."""

    def __init__(self, sim: SimulateConfig, user_tts: Synthesizer, model_tts: Synthesizer):
        self.sim = sim
        self.user_tts = user_tts
        self.model_tts = model_tts

    def build(self, *, seed: int, index: int, batch: str, fingerprint: str, persona: W.Persona,
              consent: bool, pseudonym: str | None = None) -> RenderedConversation:
        sim = self.sim
        cid = conversation_id(seed, index, fingerprint, batch)
        rng = random.Random(f"conv:{seed}:{fingerprint}:{index}")
        rate = _weighted(rng, SAMPLE_RATES)
        layout = "stereo" if rng.random() < sim.rate_stereo else "separate"
        started_at = STARTED_BASE + timedelta(minutes=41 * index + rng.randrange(0, 30),
                                              seconds=rng.randrange(60))
        clips: list[_Clip] = []
        user_turns: list[UserTurn] = []
        model_turns: list[ModelTurn] = []
        backchannels: list[Backchannel] = []
        pii: list[PlantedPii] = []
        model_words: list[tuple[str, float, float]] = []
        used: set[str] = set()

        def gap() -> float:
            return rng.uniform(0.3, 0.9)

        def say_user(tokens: list[Token], start: float, kind: str,
                     parts: list[list[Token]] | None = None, **extra: Any) -> tuple[UserTurn, _Clip]:
            texts = [spoken_text(p) for p in parts] if parts and len(parts) > 1 else None
            speech = (speak_parts(self.user_tts, texts) if texts
                      else self.user_tts.speak(spoken_text(tokens)))
            clip = _Clip("user", speech, start)
            clips.append(clip)
            turn = UserTurn(index=len(user_turns), kind=kind, text=spoken_text(tokens),
                            written_text=written_text(tokens), start=round(start, 3),
                            end=round(clip.end, 3), words=_spoken_words(speech, start),
                            parts=texts, **extra)
            user_turns.append(turn)
            return turn, clip

        def say_model(tokens: list[Token], start: float, **fields: Any) -> tuple[ModelTurn, _Clip, list]:
            speech = self.model_tts.speak(spoken_text(tokens))
            clip = _Clip("model", speech, start)
            clips.append(clip)
            times = _token_times(tokens, speech, start)
            model_words.extend(times)
            turn = ModelTurn(index=len(model_turns), text=written_text(tokens),
                             spoken_text=spoken_text(tokens), start=round(start, 3),
                             end=round(clip.end, 3),
                             words=[GtWord(word=w, start=s, end=e) for w, s, e in times], **fields)
            model_turns.append(turn)
            return turn, clip, times

        t = rng.uniform(0.3, 0.8)
        greeted = rng.random() < 0.7
        if greeted:
            _, clip, _ = say_model(normalize(rng.choice(W.GREETINGS)), t, kind="greeting",
                                   variant="greeting")
            t = clip.end + gap()

        n_exchanges = rng.randint(sim.turns_min, sim.turns_max)
        ex = -1
        # the drawn number of exchanges, plus more (up to turns_max) while shorter than MIN_DURATION_S
        while ex + 1 < n_exchanges or (ex + 1 < sim.turns_max and t < MIN_DURATION_S):
            ex += 1
            problem = _choose_content_problem(rng, sim)
            reply = _make_reply(rng, problem, used)
            # -- the user's turn: optional opener, optional PII sentence, the request
            parts: list[list[Token]] = []
            if ex == 0 and rng.random() < 0.5:
                parts.append(normalize(rng.choice(W.USER_OPENERS)))
            elif ex > 0 and rng.random() < 0.4:
                parts.append(normalize(rng.choice(W.USER_FOLLOWUPS)))
            request_tokens = normalize(reply.prompt)
            planted: W.PiiValue | None = None
            pii_range = (0, 0)
            if rng.random() < sim.rate_pii:
                ptype = _weighted(rng, list(W.PII_WEIGHTS.items()))
                planted = persona.values[ptype]
                template = rng.choice(W.PII_SAY[ptype])
                pii_tokens = W.fill(template, planted)
                before = len(normalize(template.partition("{}")[0]))
                if rng.random() < 0.7:
                    offset = sum(len(p) for p in parts)
                    parts.append(pii_tokens)
                    parts.append(request_tokens)
                else:
                    parts.append(request_tokens)
                    offset = sum(len(p) for p in parts)
                    parts.append(pii_tokens)
                pii_range = (offset + before, offset + before + len(planted.tokens))
            else:
                parts.append(request_tokens)
            # Each part is its own sentence, synthesised on its own (tts.speak_parts): the
            # request then sounds the same in every conversation.
            tokens = [tok for part in parts for tok in part]
            u_turn, u_clip = say_user(tokens, t, "request", parts=parts,
                                      request_kind=reply.request_kind, item_id=reply.item_id)
            u_start, u_end = u_clip.start, u_clip.end
            if planted is not None:
                times = _token_times(tokens, u_clip.speech, u_start)[pii_range[0] : pii_range[1]]
                pii.append(PlantedPii(type=planted.type, written=planted.written,
                                      spoken=planted.spoken, user_turn=u_turn.index,
                                      start=times[0][1], end=times[-1][2]))
                u_turn.pii.append(len(pii) - 1)

            # -- a backchannel in a pause of a long user turn
            bc_end = u_start
            if u_end - u_start > 3.0 and rng.random() < sim.rate_backchannel:
                words = u_turn.words
                lo, hi = u_start + 1.0, u_end - 2.0
                pauses = [(a.end, b.start) for a, b in zip(words, words[1:])
                          if lo <= a.end <= hi and b.start - a.end >= 0.12]
                candidates = pauses or [(w.end, w.end) for w in words if lo <= w.end <= hi]
                if candidates:
                    at = rng.choice(candidates)[0] + 0.05
                    bc_tokens = normalize(rng.choice(W.BACKCHANNELS))
                    speech = self.model_tts.speak(spoken_text(bc_tokens))
                    clip = _Clip("model", speech, at)
                    if clip.end < u_end - 1.6:
                        clips.append(clip)
                        times = _token_times(bc_tokens, speech, at)
                        model_words.extend(times)
                        backchannels.append(Backchannel(text=written_text(bc_tokens), start=round(at, 3),
                                                        end=round(clip.end, 3),
                                                        during_user_turn=u_turn.index))
                        bc_end = clip.end

            # -- the model's reply
            reply_tokens: list[Token] = []
            echo_range = None
            echo_value = None
            if planted is not None and rng.random() < sim.rate_pii_echo:
                echo_value = W.pii_echo_value(planted, persona)
                template = rng.choice(W.PII_ECHO[planted.type])
                reply_tokens = W.fill(template, echo_value)
                before = len(normalize(template.partition("{}")[0]))
                echo_range = (before, before + len(echo_value.tokens))
            reply_tokens += normalize(reply.text)
            if not reply.problems and reply.request_kind != "small_talk" and rng.random() < 0.3:
                follow = rng.choice(W.MODEL_FOLLOWUPS)
                if follow:
                    reply_tokens += normalize(follow)

            timing = _weighted(rng, [("interruption", sim.rate_interruption), ("silence", sim.rate_silence),
                                     ("normal", max(0.0, 1.0 - sim.rate_interruption - sim.rate_silence))])
            problems = list(reply.problems)
            nudged = False
            if timing == "interruption":
                overlap = min(rng.uniform(0.4, 1.5), u_end - max(u_start + 0.6, bc_end + 0.1))
                if overlap >= 0.4:
                    r_start = u_end - overlap
                    problems.append("interruption")
                else:
                    r_start = u_end + gap()
            elif timing == "silence":
                if rng.random() < 0.6:
                    r_start = u_end + rng.uniform(2.5, 4.0)
                else:
                    nudge_at = u_end + rng.uniform(3.0, 4.5)
                    _, n_clip = say_user(normalize(rng.choice(W.NUDGES)), nudge_at, "nudge")
                    r_start = n_clip.end + gap()
                    nudged = True
                problems.append("silence")
            else:
                r_start = u_end + gap()
            m_turn, m_clip, times = say_model(
                reply_tokens, r_start, kind="reply", responds_to=u_turn.index,
                request_kind=reply.request_kind, item_id=reply.item_id, variant=reply.variant,
                problems=problems, good_text=reply.good_text,
                latency_s=round(r_start - u_end, 3), nudged=nudged)
            if echo_range is not None:
                span = times[echo_range[0] : echo_range[1]]
                record = pii[-1]
                record.echoed = True
                record.echo_turn = m_turn.index
                record.echo_written = echo_value.written
                record.echo_start, record.echo_end = span[0][1], span[-1][2]
                m_turn.echoed_pii.append(len(pii) - 1)
            t = m_clip.end + gap()

        if rng.random() < 0.5:
            _, c_clip = say_user(normalize(rng.choice(W.USER_CLOSINGS)), t, "closing")
            _, m_clip, _ = say_model(normalize(rng.choice(W.MODEL_CLOSINGS)), c_clip.end + gap(),
                                     kind="closing", variant="closing",
                                     responds_to=len(user_turns) - 1)

        duration = max(c.offset + c.speech.duration_s for c in clips) + rng.uniform(0.4, 0.9)
        model_audio, user_audio = self._mix(clips, duration, rate, rng)
        model_words.sort(key=lambda w: w[1])
        gt = GroundTruth(
            conversation_id=cid, batch=batch, seed=seed, index=index, world_version=W.WORLD_VERSION,
            config_fingerprint=fingerprint, user_id=persona.user_id, user_pseudonym=pseudonym,
            user_index=persona.index, consent=consent, model_version=sim.model_version,
            started_at=started_at, sample_rate=rate, audio_layout=layout,
            duration_s=round(len(model_audio) / rate, 3),
            user_voice=getattr(self.user_tts, "voice_id", "user"),
            model_voice=getattr(self.model_tts, "voice_id", "model"),
            user_turns=user_turns, model_turns=model_turns, backchannels=backchannels, pii=pii)
        meta = ConversationMetadata(conversation_id=cid, user_id=persona.user_id,
                                    model_version=sim.model_version, started_at=started_at,
                                    sample_rate=rate, audio_layout=layout)
        words = [WordStamp(word=w, start=s, end=e) for w, s, e in model_words]
        return RenderedConversation(gt, model_audio, user_audio, rate, words, meta)

    def _mix(self, clips: list[_Clip], duration: float, rate: int,
             rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        frames = int(np.ceil(duration * rate))
        channels = {"model": np.zeros(frames, np.float32), "user": np.zeros(frames, np.float32)}
        gains = {"model": rng.uniform(0.8, 1.0), "user": rng.uniform(0.7, 1.0)}
        for clip in clips:
            audio = resample(clip.speech.audio, clip.speech.sample_rate, rate) * gains[clip.speaker]
            at = max(0, int(round(clip.offset * rate)))
            n = min(len(audio), frames - at)
            channels[clip.speaker][at : at + n] += audio[:n]
        noise = np.random.default_rng(rng.getrandbits(63))
        level = 10 ** (self.sim.noise_floor_dbfs / 20.0)
        for name in ("model", "user"):
            channels[name] += noise.standard_normal(frames).astype(np.float32) * level
            np.clip(channels[name], -1.0, 1.0, out=channels[name])
        return channels["model"], channels["user"]


# ----------------------------------------------------------------------------- storage


# One raw/ writer for the simulator and the predictor (components/common/rawlog.py).
_json_bytes, _put_if_changed, _ref = json_bytes, put_if_changed, object_ref


def publish_kb(store) -> list[str]:
    """The knowledge base as kb/<doc_id>.json (KbDocument); idempotent."""
    keys = []
    for doc in W.kb_documents():
        key = Keys.kb_document(doc.doc_id)
        _put_if_changed(store, key, _json_bytes(doc.model_dump(mode="json")), "application/json")
        keys.append(key)
    return keys


def write_conversation(store, gt_store, batch: str, conv: RenderedConversation) -> dict[str, ObjectRef]:
    """Raw objects first, ground truth last (its presence marks the conversation complete)."""
    cid = conv.metadata.conversation_id
    prefix = Keys.raw_prefix(batch, cid)
    refs: dict[str, ObjectRef] = {}
    if conv.metadata.audio_layout == "stereo":
        stereo = np.stack([conv.model_audio, conv.user_audio], axis=1)
        refs["audio.wav"] = _ref(_put_if_changed(store, prefix + "audio.wav",
                                                 encode_wav(stereo, conv.sample_rate), "audio/wav",
                                                 dict(USER_AUDIO_METADATA)))
    else:
        refs["model.wav"] = _ref(_put_if_changed(store, prefix + "model.wav",
                                                 encode_wav(conv.model_audio, conv.sample_rate),
                                                 "audio/wav", dict(MODEL_AUDIO_METADATA)))
        refs["user.wav"] = _ref(_put_if_changed(store, prefix + "user.wav",
                                                encode_wav(conv.user_audio, conv.sample_rate),
                                                "audio/wav", dict(USER_AUDIO_METADATA)))
    refs["model_text.json"] = _ref(_put_if_changed(
        store, prefix + "model_text.json", _json_bytes(model_alignments_payload(conv.model_words)),
        "application/json"))
    refs["metadata.json"] = _ref(_put_if_changed(
        store, prefix + "metadata.json", _json_bytes(conv.metadata.model_dump(mode="json")),
        "application/json"))
    refs = dict(sorted(refs.items()))
    conv.groundtruth.raw_objects = refs
    _put_if_changed(gt_store, Keys.groundtruth(cid), _json_bytes(conv.groundtruth.model_dump(mode="json")),
                    "application/json")
    return refs


def _existing_refs(store, gt_store, batch: str, cid: str) -> dict[str, ObjectRef] | None:
    """The raw objects of a finished conversation, or None if it must be (re)generated."""
    gt_info = gt_store.stat(Keys.groundtruth(cid))
    if gt_info is None:
        return None
    try:
        gt = GroundTruth.model_validate(gt_store.get_json(Keys.groundtruth(cid)))
    except Exception:  # noqa: BLE001 - unreadable/old ground truth: regenerate
        return None
    if gt.raw_objects:
        # Done. The pipeline may have consumed (deleted) the raw objects since; the pinned refs
        # recorded at write time keep a rerun's manifest identical, so nothing is redone.
        return dict(sorted(gt.raw_objects.items()))
    refs = {}
    prefix = Keys.raw_prefix(batch, cid)
    for name in audio_objects(gt.audio_layout) + ("metadata.json", "model_text.json"):
        info = store.stat(prefix + name)
        if info is None:
            return None
        refs[name] = _ref(info)
    return dict(sorted(refs.items()))


# ----------------------------------------------------------------------------- consent


def _register_consent(registry, pseudonym: str, granted: bool) -> None:
    """Record the simulated user's consent once; a user the registry already knows is left
    alone (a later withdrawal or grant, by a person or a test, is newer than the simulation)."""
    if registry.get(pseudonym) is None:
        registry.set_consent(pseudonym, granted, at=CONSENT_AT, source="simulate")


# ----------------------------------------------------------------------------- entry points


@dataclass
class SimulationResult:
    manifest_id: str
    batch: str
    conversation_ids: list[str]
    generated: int  # rendered and written in this run
    skipped: int  # already complete
    users: int
    users_without_consent: int
    audio_seconds: float  # of the conversations generated in this run
    seconds: float  # wall time of the whole call
    seconds_per_conversation: float  # per generated conversation (TTS + mixing + upload)
    tts_cache_hits: int
    tts_cache_misses: int
    problems: dict[str, int] = field(default_factory=dict)  # planted, over generated convs
    pii: dict[str, int] = field(default_factory=dict)
    kb_keys: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-able figures (no conversation content)."""
        out = asdict(self)
        out["conversations"] = len(out.pop("conversation_ids"))
        out.pop("kb_keys")
        return out


def simulate_conversations(cfg: Config, n: int | None = None, batch: str | None = None,
                           progress: bool = True) -> SimulationResult:
    """Write N simulated logged conversations (see module doc) and seal their raw manifest.

    `n` defaults to cfg.simulate.conversations, `batch` to "sim-seed<seed>". The result carries
    the raw manifest id, what was generated vs already there, and timings."""
    from components.common.consent import ConsentRegistry
    from components.common.privacy import load_pseudonym_key, pseudonymise
    from components.common.stagekit import ManifestWriter
    from components.common.storage import ObjectStore

    t0 = time.monotonic()
    sim = cfg.simulate
    n = sim.conversations if n is None else n
    batch = batch or default_batch(sim)
    fingerprint = config_fingerprint(sim)
    store = ObjectStore.from_config(cfg.storage)
    store.ensure_bucket(versioning=True)
    gt_store = ObjectStore.from_config(cfg.storage, bucket=cfg.storage.groundtruth_bucket)
    gt_store.ensure_bucket(versioning=True)
    key = load_pseudonym_key(cfg.scrub, create=True)
    registry = ConsentRegistry.from_config(cfg.consent)
    registry.migrate()
    kb_keys = publish_kb(store)

    user_tts = PiperSynthesizer(USER_VOICE, sim.tts_cache_dir)
    model_tts = PiperSynthesizer(MODEL_VOICE, sim.tts_cache_dir)
    builder = ConversationBuilder(sim, user_tts, model_tts)
    user_of = assign_users(sim.seed, n, sim.rate_repeat_user)
    consent_of = {u: user_consents(sim.seed, u, sim.rate_no_consent) for u in set(user_of)}

    items: list[RawItem] = []
    ids: list[str] = []
    generated = skipped = 0
    audio_s = 0.0
    gen_seconds = 0.0
    problems: Counter[str] = Counter()
    pii_counts: Counter[str] = Counter()
    registered: set[int] = set()
    bar = _progress(n, progress)
    try:
        for index in range(n):
            cid = conversation_id(sim.seed, index, fingerprint, batch)
            ids.append(cid)
            persona = W.make_persona(sim.seed, user_of[index])
            pseudonym = pseudonymise(persona.user_id, key)
            consent = consent_of[user_of[index]]
            if persona.index not in registered:
                _register_consent(registry, pseudonym, consent)
                registered.add(persona.index)
            refs = _existing_refs(store, gt_store, batch, cid)
            if refs is None:
                t1 = time.monotonic()
                conv = builder.build(seed=sim.seed, index=index, batch=batch, fingerprint=fingerprint,
                                     persona=persona, consent=consent, pseudonym=pseudonym)
                refs = write_conversation(store, gt_store, batch, conv)
                generated += 1
                gen_seconds += time.monotonic() - t1
                audio_s += conv.groundtruth.duration_s
                problems.update(conv.groundtruth.problems())
                pii_counts.update(p.type for p in conv.groundtruth.pii)
                status = f"generated {conv.groundtruth.duration_s:.1f}s audio"
            else:
                skipped += 1
                status = "exists"
            items.append(RawItem(conversation_id=cid, prefix=Keys.raw_prefix(batch, cid), objects=refs))
            bar(cid, status)
    finally:
        registry.close()

    # Items in prefix order (as ingest's seal_raw_batch orders a listed batch), versions pinned.
    writer = ManifestWriter(store, "raw", None)
    for item in sorted(items, key=lambda i: i.prefix):
        writer.add_item(item.model_dump(mode="json"))
    users = set(user_of)
    manifest = writer.close({
        "prefix": f"{Keys.RAW}{batch}/", "source": "simulate", "seed": sim.seed,
        "config_fingerprint": fingerprint, "world_version": W.WORLD_VERSION,
        "users": len(users), "users_without_consent": sum(not consent_of[u] for u in users)})
    elapsed = time.monotonic() - t0
    return SimulationResult(
        manifest_id=manifest.manifest_id, batch=batch, conversation_ids=ids, generated=generated,
        skipped=skipped, users=len(users),
        users_without_consent=sum(not consent_of[u] for u in users), audio_seconds=round(audio_s, 2),
        seconds=round(elapsed, 2),
        seconds_per_conversation=round(gen_seconds / generated, 3) if generated else 0.0,
        tts_cache_hits=user_tts.cache_hits + model_tts.cache_hits,
        tts_cache_misses=user_tts.cache_misses + model_tts.cache_misses,
        problems=dict(problems), pii=dict(pii_counts), kb_keys=kb_keys)


def _progress(total: int, enabled: bool):
    """A tqdm bar on an interactive stderr, else one line per conversation (logs, KFP)."""
    if not enabled:
        return lambda cid, status: None
    if not sys.stderr.isatty():
        t0 = time.monotonic()
        count = [0]

        def line(cid: str, status: str) -> None:
            count[0] += 1
            print(f"[simulate] {count[0]}/{total} {cid} {status} ({time.monotonic() - t0:.1f}s)",
                  file=sys.stderr, flush=True)
        return line
    from tqdm import tqdm

    bar = tqdm(total=total, desc="simulate", unit="conv", file=sys.stderr, dynamic_ncols=True)

    def update(cid: str, status: str) -> None:
        bar.set_postfix_str(f"{cid} {status}", refresh=False)
        bar.update(1)
        if bar.n >= total:
            bar.close()
    return update


# ----------------------------------------------------------------------------- replication


def replica_id(conversation_id: str, copy: int) -> str:
    return f"{conversation_id}-r{copy:04d}"


def replicate_corpus(cfg: Config, manifest_id: str, copies: int, batch: str | None = None,
                     concurrency: int = 8, progress: bool = True) -> str:
    """A large benchmark corpus from a raw manifest, without re-synthesising anything.

    Each of the manifest's conversations is copied `copies` times under new ids
    (``<id>-r0001``, ...) into ``raw/<batch>/`` (default ``<source batch>-replica``): audio and
    model_text.json are copied SERVER-SIDE (store.copy keeps their object metadata, i.e. the
    user-audio content class); only metadata.json (new id) and the ground truth (new id,
    ``replica_of``) are rewritten. Idempotent. Returns the id of a new raw manifest listing the
    copies only (len(source) * copies items)."""
    from components.common.stagekit import ManifestWriter, iter_items, load_manifest
    from components.common.storage import ObjectStore

    store = ObjectStore.from_config(cfg.storage)
    gt_store = ObjectStore.from_config(cfg.storage, bucket=cfg.storage.groundtruth_bucket)
    gt_store.ensure_bucket(versioning=True)
    source = load_manifest(store, manifest_id)
    sources = [RawItem.model_validate(i) for i in iter_items(store, source)]
    if batch is None:
        first = sources[0].prefix if sources else "raw/sim/"
        batch = first[len(Keys.RAW):].split("/", 1)[0] + "-replica"

    def one(job: tuple[RawItem, int]) -> RawItem:
        item, copy = job
        new_cid = replica_id(item.conversation_id, copy)
        prefix = Keys.raw_prefix(batch, new_cid)
        refs: dict[str, ObjectRef] = {}
        for name, ref in item.objects.items():
            dst = prefix + name
            if name == "metadata.json":
                meta = json.loads(store.get_bytes(ref.key, version_id=ref.version_id))
                meta["conversation_id"] = new_cid
                info = _put_if_changed(store, dst, _json_bytes(meta), "application/json")
            else:
                info = store.stat(dst)
                if info is None or (ref.size is not None and info.size != ref.size):
                    store.copy(ref.key, dst, src_version_id=ref.version_id)
                    info = store.stat(dst)
            refs[name] = _ref(info)
        gt_key = Keys.groundtruth(item.conversation_id)
        new_gt_key = Keys.groundtruth(new_cid)
        if gt_store.stat(gt_key) is not None and gt_store.stat(new_gt_key) is None:
            gt = gt_store.get_json(gt_key)
            gt.update(conversation_id=new_cid, batch=batch, replica_of=item.conversation_id)
            gt_store.put_bytes(new_gt_key, _json_bytes(gt), content_type="application/json")
        return RawItem(conversation_id=new_cid, prefix=prefix, objects=dict(sorted(refs.items())))

    jobs = [(item, c) for c in range(1, copies + 1) for item in sources]
    bar = _progress(len(jobs), progress)
    results: list[RawItem] = []
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        for item in pool.map(one, jobs):
            results.append(item)
            bar(item.conversation_id, "copied")
    writer = ManifestWriter(store, "raw", None)
    for item in sorted(results, key=lambda i: i.prefix):
        writer.add_item(item.model_dump(mode="json"))
    manifest = writer.close({"prefix": f"{Keys.RAW}{batch}/", "source": "replicate",
                             "replicated_from": manifest_id, "copies": copies})
    return manifest.manifest_id
