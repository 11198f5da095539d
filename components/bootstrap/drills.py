"""Drills: every request of the world said on its own at a few user gains, answered with the
bootstrap habits — extra training sessions next to the scripted conversations.

Why: the embedded codec is not gain- or shift-invariant, so the model learns a request as the
codes of its clip. In a few hundred scripted conversations each of the world's 141 request
phrasings occurs about four times, each at another random gain (0.7-1.0 per user), and the
small model memorises conversations instead of learning question → answer (measured: held-out
first reply token right 26% of the time with 240 conversations). Trained on every phrasing
at 6 gains, the same model answered the first reply token right for 100% of the phrasings at
unseen gains. Live users say a request exactly so (tts.speak_parts on the frame grid, gain
0.7-1.0), so drills teach what serving needs.

A drill exchange: the user says one request phrasing (bare, starting on a frame, at gain g), the
model answers with the reply the habits give (fact: the wrong answer with the conditional rate
rate_wrong_fact, the unhelpful reply with the builder's conditional rate, else the correct one;
unsafe: complies with rate_unsafe_compliance; benign-but-edgy: refuses with rate_over_refusal;
small talk and instructions: the good reply) and the timing habits (interrupts with
rate_interruption, starts 2.5-4 s late with rate_silence, else 0.3-0.9 s after the user). The
exchanges are shuffled and packed into sessions of about a conversation's length.

Encoding: the codec's codes are local (a short encoder context: a clip after >= 1 s of the noise
floor has the same codes wherever it sits), so each distinct clip — a request at a gain, a reply
— is encoded ONCE (1 s of noise floor before and after it) and a session's rows are those codes
placed on the frame grid over the codes of the noise floor. That costs one encode per clip
instead of one per placement.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.bootstrap.data import conditional_unhelpful_fact, per_reply_rates
from components.common.audio import quantize_pcm16, resample
from components.common.config import Config
from components.contract import MODEL_SAMPLE_RATE, WordStamp, canonical_json
from components.simulate import world as W
from components.speech.textnorm import Token, normalize, spoken_text
from components.streams.interleave import FRAME_RATE, FRAME_SIZE, assemble, text_stream

DRILL_VERSION = "drills-1"
LEAD_FRAMES = 13  # noise floor before (and after) a clip when it is encoded: > the codec's context
MODEL_GAIN = 0.9  # the builder's model gain is 0.8-1.0 per conversation
SESSION_FRAMES = 375  # pack exchanges into sessions of about 30 s, like the conversations


@dataclass
class Exchange:
    request_kind: str
    item_id: str
    prompt: str
    gain: float
    variant: str
    reply: str
    timing: str  # normal | interruption | silence
    problems: list[str] = field(default_factory=list)


def plan(cfg: Config) -> list[Exchange]:
    """Every request phrasing x every drill gain, with habits drawn from a seeded RNG."""
    b = cfg.bootstrap
    rng = random.Random(f"drills:{b.seed}")
    unhelpful = conditional_unhelpful_fact(per_reply_rates(b.rate_wrong_fact, b.rate_unsafe_compliance,
                                                           b.rate_over_refusal))
    out: list[Exchange] = []
    requests: list[tuple[str, str, tuple[str, ...], Any]] = [("fact", f.id, f.questions, f) for f in W.FACTS]
    for kind, pool in (("unsafe", W.UNSAFE), ("benign_edgy", W.BENIGN_EDGY),
                       ("small_talk", W.SMALL_TALK), ("instruction", W.INSTRUCTIONS)):
        requests += [(kind, r.id, r.prompts, r) for r in pool]
    for kind, item_id, prompts, item in requests:
        for prompt in prompts:
            for gain in b.drill_gains:
                u = rng.random()
                problems: list[str] = []
                if kind == "fact":
                    if u < b.rate_wrong_fact:
                        variant, reply, problems = "wrong", item.wrong_reply(), ["wrong_fact"]
                    elif u < b.rate_wrong_fact + unhelpful:
                        variant, reply, problems = "unhelpful", rng.choice(W.UNHELPFUL), ["unhelpful"]
                    else:
                        variant, reply = "correct", item.correct_reply()
                elif kind == "unsafe":
                    bad = u < b.rate_unsafe_compliance
                    variant, reply = ("compliance", item.bad) if bad else ("refusal", item.good)
                    problems = ["unsafe_compliance"] if bad else []
                elif kind == "benign_edgy":
                    bad = u < b.rate_over_refusal
                    variant, reply = ("over_refusal", item.bad) if bad else ("helpful", item.good)
                    problems = ["unhelpful"] if bad else []
                elif kind == "small_talk":
                    variant, reply = "polite", item.good
                else:
                    variant, reply = "compliant", item.good
                t = rng.random()
                timing = ("interruption" if t < b.rate_interruption else
                          "silence" if t < b.rate_interruption + b.rate_silence else "normal")
                out.append(Exchange(kind, item_id, prompt, gain, variant, reply, timing, problems))
    rng.shuffle(out)
    return out


def drills_key(cfg: Config) -> str:
    b = cfg.bootstrap
    body = {"version": DRILL_VERSION, "gains": b.drill_gains, "seed": b.seed,
            "habits": [b.rate_wrong_fact, b.rate_unsafe_compliance, b.rate_over_refusal,
                       b.rate_interruption, b.rate_silence]}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:12]


def _frames(samples: int) -> int:
    return -(-samples // FRAME_SIZE)


def _clip_waveform(audio: np.ndarray, noise: np.random.Generator, level: float) -> np.ndarray:
    """[LEAD noise][clip padded to whole frames][LEAD noise] at 24 kHz, on the PCM16 grid."""
    n = (2 * LEAD_FRAMES + _frames(len(audio))) * FRAME_SIZE
    x = noise.standard_normal(n).astype(np.float32) * np.float32(level)
    x[LEAD_FRAMES * FRAME_SIZE : LEAD_FRAMES * FRAME_SIZE + len(audio)] += audio
    np.clip(x, -1.0, 1.0, out=x)
    return quantize_pcm16(x)


def _token_times(tokens: list[Token], speech: Any, at: float) -> list[tuple[str, float, float]]:
    """(written token, start, end) in seconds for a clip placed at ``at``: each written token owns
    as many spoken words as it says (as the builder maps them)."""
    out, k = [], 0
    for tok in tokens:
        n = len(tok.spoken.split())
        span = speech.words[k : k + n]
        out.append((tok.written, round(at + span[0].start, 3), round(at + span[-1].end, 3)))
        k += n
    return out


def build_sessions(cfg: Config, exchanges: list[Exchange], user_tts: Any, model_tts: Any,
                   encode: Any, tokenizer: Any, q: int) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Sessions' [1 + 2q, T] rows and infos. ``encode(list of 24 kHz waveforms)`` → list of
    [q, T] codes (the caller's encoder pool)."""
    level = 10 ** (cfg.simulate.noise_floor_dbfs / 20.0)
    noise = np.random.default_rng([cfg.bootstrap.seed, 7])
    # -- every distinct clip, encoded once
    user_keys = sorted({(e.prompt, e.gain) for e in exchanges})
    reply_texts = sorted({e.reply for e in exchanges})
    user_speech = {p: user_tts.speak(spoken_text(normalize(p))) for p in sorted({k[0] for k in user_keys})}
    reply_tokens = {r: normalize(r) for r in reply_texts}
    reply_speech = {r: model_tts.speak(spoken_text(reply_tokens[r])) for r in reply_texts}
    waves = [_clip_waveform(resample(user_speech[p].audio, user_speech[p].sample_rate, MODEL_SAMPLE_RATE) * g,
                            noise, level) for p, g in user_keys]
    waves += [_clip_waveform(resample(reply_speech[r].audio, reply_speech[r].sample_rate, MODEL_SAMPLE_RATE)
                             * MODEL_GAIN, noise, level) for r in reply_texts]
    floor = noise.standard_normal(SESSION_FRAMES * 2 * FRAME_SIZE).astype(np.float32) * np.float32(level)
    codes = encode(waves + [floor])
    user_codes = {k: c[:, LEAD_FRAMES:] for k, c in zip(user_keys, codes)}  # clip + its tail
    reply_codes = {r: c[:, LEAD_FRAMES:] for r, c in zip(reply_texts, codes[len(user_keys):])}
    floor_codes = codes[-1][:, LEAD_FRAMES:]  # past the start-up frames of the encoder

    rng = random.Random(f"drill-sessions:{cfg.bootstrap.seed}")
    sessions: list[list[tuple[Exchange, int, int]]] = []
    current: list[tuple[Exchange, int, int]] = []
    t = 0
    for ex in exchanges:
        if not current:
            t = int(rng.uniform(0.4, 0.8) * FRAME_RATE)
        speech = user_speech[ex.prompt]
        u_start = t
        u_end_s = u_start / FRAME_RATE + speech.words[-1].end
        if ex.timing == "interruption":
            overlap = min(rng.uniform(0.4, 1.5), speech.words[-1].end - speech.words[0].start - 0.6)
            r_at = u_end_s - overlap if overlap >= 0.4 else u_end_s + rng.uniform(0.3, 0.9)
        elif ex.timing == "silence":
            r_at = u_end_s + rng.uniform(2.5, 4.0)
        else:
            r_at = u_end_s + rng.uniform(0.3, 0.9)
        rs = reply_speech[ex.reply]
        r_start = max(u_start + 1, int(round((r_at - rs.words[0].start) * FRAME_RATE)))
        r_end = r_start + _frames(len(resample(rs.audio, rs.sample_rate, MODEL_SAMPLE_RATE)))
        current.append((ex, u_start, r_start))
        t = r_end + int(rng.uniform(0.3, 0.9) * FRAME_RATE)
        if t >= SESSION_FRAMES - 60:
            sessions.append(current)
            current = []
    if current:
        sessions.append(current)

    rows, infos = [], []
    for s_index, session in enumerate(sessions):
        n = max(max(u + user_codes[(ex.prompt, ex.gain)].shape[1], r + reply_codes[ex.reply].shape[1])
                for ex, u, r in session)
        user = np.tile(floor_codes, (1, -(-n // floor_codes.shape[1])))[:, :n].copy()
        model = np.roll(user, 37, axis=1)  # other floor frames for the other channel
        words: list[tuple[str, float, float]] = []
        turns = []
        for k, (ex, u, r) in enumerate(session):
            uc, rc = user_codes[(ex.prompt, ex.gain)], reply_codes[ex.reply]
            user[:, u : u + uc.shape[1]] = uc[:, : n - u]
            model[:, r : r + rc.shape[1]] = rc[:, : n - r]
            times = _token_times(reply_tokens[ex.reply], reply_speech[ex.reply], r / FRAME_RATE)
            words.extend(times)
            speech = user_speech[ex.prompt]
            u_end = u / FRAME_RATE + speech.words[-1].end
            timing_problem = []
            if times[0][1] < u_end - 0.2:
                timing_problem = ["interruption"]
            elif ex.timing == "silence":
                timing_problem = ["silence"]
            turns.append({"index": k, "kind": "reply", "request_kind": ex.request_kind, "item_id": ex.item_id,
                          "variant": ex.variant, "problems": ex.problems + timing_problem,
                          "start": times[0][1], "end": times[-1][2], "latency_s": round(times[0][1] - u_end, 3),
                          "words": [list(w) for w in times], "gain": ex.gain})
        words.sort(key=lambda w: w[1])
        stamps = [WordStamp(word=w, start=s, end=e) for w, s, e in words]
        rows.append(assemble(text_stream(stamps, tokenizer, n), model, user))
        infos.append({"index": -1 - s_index, "conversation_id": f"drill-{s_index:04d}", "split": "train",
                      "drill": True, "n_frames": n, "duration_s": round(n / FRAME_RATE, 3),
                      "model_turns": turns, "user_turns": [], "model_words": [list(w) for w in words]})
    return rows, infos
