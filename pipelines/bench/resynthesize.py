"""``duplexalign bench resynthesize``: TTS real-time factor and how well resynthesis keeps timing.

Inputs: ``--conversations`` (default 6) small conversations built from the simulated world's
texts — a user turn (an opener, sometimes a PII sentence in its redacted form, "My number is
[PHONE].", then a fact question) and the model's reply (the fact's correct reply). The
"original" user speech is the simulator's user voice saying the turn at a speaker's tempo
(x0.85, x1.0, x1.2 of the voice's natural rate, in turn), which gives the spans to fit.

Figures:

* ``rtf`` — TTS seconds / seconds of audio produced, per backend and side, with the disk cache
  OFF (every call synthesises; the piper engine is loaded and warmed up before timing): piper
  (user: the resynthesis voice, model: the model's voice) and espeak-ng when installed. ``rtf``
  of piper with the disk cache warm (what a rerun pays) as ``piper_cached``.
* ``fit`` — |fitted end - original end| over the user turns (median, p90, max), the resynthesis
  voice fitted to each original span as the stage does (piper, cache off), against the baseline
  of no fitting (the turn said at its natural rate from the original start); renders per turn
  (1 = the natural-rate render was already within tolerance).
* ``pair_s`` — seconds per pair of ``resynthesize_pair`` (the stage's work without S3 I/O) with a
  cold TTS cache and with a warm one.

Nothing is written to the object store: the bench needs no services (``run_bench`` starts them
anyway, as for every bench). Temporary TTS caches live in a temp folder, removed at the end.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.common.config import Config
from components.contract import (
    MODEL_SAMPLE_RATE,
    ConversationJudgement,
    PairSide,
    PreferencePair,
    Transcript,
    Turn,
    WordStamp,
)
from components.resynthesize.fakes import FakeValues
from components.resynthesize.logic import PairInputs, resynthesize_pair
from components.resynthesize.timeline import FIT_TOLERANCE_S, fit_to_span, render
from components.speech.backends import RESYNTH_USER_VOICE, speak_written
from components.speech.tts import MODEL_VOICE, USER_VOICE, PiperSynthesizer, Speech
from pipelines.bench.common import emit, fmt, say, table

DEFAULT_CONVERSATIONS = 6
TEMPOS = (0.85, 1.0, 1.2)  # original speakers' tempo relative to the voice (x duration)


@dataclass
class Sample:
    user_text: str  # redacted: placeholders as scrub leaves them
    reply_text: str
    tempo: float


def samples(n: int, seed: int = 7) -> list[Sample]:
    from components.simulate import world as W

    rng = random.Random(seed)
    out = []
    for i in range(n):
        fact = W.FACTS[(i * 7) % len(W.FACTS)]
        parts = [rng.choice(W.USER_OPENERS)]
        if i % 2 == 0:
            kind = rng.choice(["phone", "name", "email"])
            placeholder = {"phone": "[PHONE]", "name": "[PERSON]", "email": "[EMAIL]"}[kind]
            parts.append(rng.choice(W.PII_SAY[kind]).format(placeholder))
        parts.append(rng.choice(fact.questions))
        out.append(Sample(" ".join(parts), fact.correct_reply(), TEMPOS[i % len(TEMPOS)]))
    return out


class Counting:
    """A TTS proxy counting renders and the seconds spent in them."""

    def __init__(self, tts: Any):
        self.tts, self.calls, self.seconds, self.audio_s = tts, 0, 0.0, 0.0
        self.backend, self.voice_id = tts.backend, tts.voice_id

    def check(self) -> None:
        self.tts.check()

    def speak(self, text: str, length_scale: float = 1.0) -> Speech:
        t0 = time.perf_counter()
        speech = self.tts.speak(text, length_scale=length_scale)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.audio_s += speech.duration_s
        return speech


def _tokens(fakes: FakeValues, text: str, side: str, turn: int) -> list[tuple[str, str]]:
    return [t for group in fakes.tokens(text.split(), side, turn) for t in group]


def _rtf(tts: Any, texts: list[str]) -> dict[str, float]:
    counting = Counting(tts)
    for text in texts:
        counting.speak(text)
    return {"rtf": round(counting.seconds / max(counting.audio_s, 1e-9), 4),
            "audio_s": round(counting.audio_s, 2), "tts_s": round(counting.seconds, 2)}


def _conversation(sample: Sample, index: int, original: PiperSynthesizer, model: PiperSynthesizer,
                  fakes: FakeValues) -> tuple[PreferencePair, PairInputs]:
    """One logged conversation (user turn, model reply at +0.6 s) and its content pair."""
    said = speak_written(original, _tokens(fakes, sample.user_text, "user", 0),
                         length_scale=sample.tempo)
    user_words = [WordStamp(word=w, start=round(0.5 + s.start, 4), end=round(0.5 + s.end, 4))
                  for w, s in zip(sample.user_text.split(), _regroup(said, sample.user_text))]
    reply = model.speak(sample.reply_text)
    at = user_words[-1].end + 0.6
    model_words = [WordStamp(word=w.word, start=round(at + w.start, 4), end=round(at + w.end, 4))
                   for w in reply.words]
    duration = model_words[-1].end + 2.0
    from components.resynthesize.timeline import place

    model_audio = render(duration, MODEL_SAMPLE_RATE, [place(reply, at + reply.words[0].start,
                                                             MODEL_SAMPLE_RATE)])
    cid = f"bench-resynth-{index}"
    user_turn = Turn(side="user", index=0, start=user_words[0].start, end=user_words[-1].end,
                     text=sample.user_text, first_word=0, last_word=len(user_words))
    model_turn = Turn(side="model", index=0, start=model_words[0].start, end=model_words[-1].end,
                      text=sample.reply_text, first_word=0, last_word=len(model_words))
    transcript = Transcript(conversation_id=cid, redacted=True, asr_model="bench",
                            duration_s=round(duration, 3), user_words=user_words,
                            model_words=model_words)
    judgement = ConversationJudgement(conversation_id=cid, model_version="bench",
                                      backend="bench", backend_version="bench",
                                      user_turns=[user_turn], model_turns=[model_turn],
                                      replies=[], events=[])
    rejected = PairSide(text=sample.reply_text, start=model_words[0].start,
                        end=model_words[-1].end, words=model_words, source="logged")
    words = ("Sorry, let me correct that. " + sample.reply_text).split()
    planned = [WordStamp(word=w, start=round(rejected.start + k / 2.6, 4),
                         end=round(rejected.start + (k + 1) / 2.6, 4)) for k, w in enumerate(words)]
    chosen = PairSide(text=" ".join(words), start=planned[0].start, end=planned[-1].end,
                      words=planned, source="rewritten")
    pair = PreferencePair(pair_id=f"bench{index:019d}", conversation_id=cid,
                          user_pseudonym="bench", type="content", reply=0, user_turn=0,
                          user_end=user_turn.end, next_user_start=None, rejected=rejected,
                          chosen=chosen, scores={}, problems=["helpfulness"], judge_backend="bench",
                          judge_version="bench", serving_model_version="bench", composer="bench",
                          provenance={})
    return pair, PairInputs(transcript, judgement, model_audio)


def _regroup(speech: Speech, redacted: str) -> list[Any]:
    """Word times per REDACTED word: a placeholder covers the words of its fake value."""
    fakes = FakeValues(0, "regroup")
    sizes = [len(g) for g in fakes.tokens(redacted.split(), "user", 0)]
    out, at = [], 0
    for n in sizes:
        group = speech.words[at:at + n]
        at += n
        out.append(type(group[0])(group[0].word, group[0].start, group[-1].end))
    return out


def main(cfg: Config, args: argparse.Namespace | None = None) -> int:
    n = getattr(args, "conversations", None) or DEFAULT_CONVERSATIONS
    tmp = tempfile.mkdtemp(prefix="bench-resynth-")
    try:
        return _run(cfg, n, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(cfg: Config, n: int, tmp: str) -> int:
    items = samples(n)
    fakes = FakeValues(cfg.resynthesize.seed, "bench")
    user_texts = [" ".join(w for w, _ in _tokens(fakes, s.user_text, "user", i)) for i, s in enumerate(items)]
    spoken_user = [" ".join(sp for _, sp in _tokens(fakes, s.user_text, "user", i)) for i, s in enumerate(items)]
    replies = [s.reply_text for s in items]
    say(f"{n} conversations: {sum(len(t.split()) for t in user_texts)} user words, "
        f"{sum(len(t.split()) for t in replies)} reply words")

    # -- RTF
    figures: dict[str, Any] = {"conversations": n, "rtf": {}}
    rows = []
    piper_user, piper_model = PiperSynthesizer(RESYNTH_USER_VOICE, None), PiperSynthesizer(MODEL_VOICE, None)
    say("loading piper and warming up")
    piper_user.speak("Warming up the voice.")
    piper_model.speak("Warming up the voice.")
    backends: list[tuple[str, Any, Any]] = [("piper", piper_user, piper_model)]
    if shutil.which("espeak-ng"):
        from components.speech.espeak import ESPEAK_MODEL_VOICE, ESPEAK_USER_VOICE, EspeakSynthesizer

        backends.append(("espeak", EspeakSynthesizer(ESPEAK_USER_VOICE), EspeakSynthesizer(ESPEAK_MODEL_VOICE)))
    else:
        say("espeak-ng is not installed: its RTF is not measured (make system-deps)")
    for name, user, model in backends:
        say(f"RTF of {name}")
        figures["rtf"][f"{name}_user"] = _rtf(user, spoken_user)
        figures["rtf"][f"{name}_model"] = _rtf(model, replies)
    cached = PiperSynthesizer(MODEL_VOICE, f"{tmp}/cache-rtf")
    for text in replies:
        cached.speak(text)
    figures["rtf"]["piper_cached"] = _rtf(cached, replies)
    for key, value in figures["rtf"].items():
        rows.append([key, fmt(value["rtf"], ".4f"), fmt(value["audio_s"], ".1f"), fmt(value["tts_s"], ".2f")])
    rtf_table = table(["tts (side)", "RTF", "audio s", "tts s"], rows)

    # -- fitting
    say("fitting user turns to their original spans")
    original = PiperSynthesizer(USER_VOICE, f"{tmp}/cache-original")
    fit_user = Counting(piper_user)
    fitted, unfitted, renders, fit_s = [], [], [], []
    for i, s in enumerate(items):
        tokens = _tokens(fakes, s.user_text, "user", i)
        orig = speak_written(original, tokens, length_scale=s.tempo)
        start, end = orig.words[0].start + 1.0, max(w.end for w in orig.words) + 1.0
        calls, t0 = fit_user.calls, time.perf_counter()
        clip = fit_to_span(fit_user, tokens, start, end, rate=MODEL_SAMPLE_RATE,
                           scale_min=cfg.resynthesize.length_scale_min,
                           scale_max=cfg.resynthesize.length_scale_max)
        fit_s.append(time.perf_counter() - t0)
        renders.append(fit_user.calls - calls)
        fitted.append(abs(clip.end - end))
        natural = fit_to_span(piper_user, tokens, start, end, rate=MODEL_SAMPLE_RATE, fit=False)
        unfitted.append(abs(natural.end - end))

    def dist(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {"median": round(statistics.median(ordered), 4),
                "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 4),
                "max": round(ordered[-1], 4)}

    figures["fit"] = {"fitted_end_error_s": dist(fitted), "unfitted_end_error_s": dist(unfitted),
                      "renders_per_turn": round(statistics.mean(renders), 2),
                      "seconds_per_turn": round(statistics.mean(fit_s), 3),
                      "tolerance_s": FIT_TOLERANCE_S,
                      "within_0_15_s": round(sum(e <= 0.15 for e in fitted) / len(fitted), 3)}
    fit_table = table(["end error (s)", "median", "p90", "max"], [
        ["fitted (stage)"] + [fmt(figures["fit"]["fitted_end_error_s"][k], ".3f") for k in ("median", "p90", "max")],
        ["not fitted (baseline)"] + [fmt(figures["fit"]["unfitted_end_error_s"][k], ".3f") for k in ("median", "p90", "max")],
    ])

    # -- per pair
    say("resynthesize_pair per pair, cold and warm TTS cache")
    pair_cfg = cfg.model_copy(deep=True)
    pair_cfg.resynthesize.cache_dir = f"{tmp}/cache-pairs"
    original_model = PiperSynthesizer(MODEL_VOICE, f"{tmp}/cache-original")
    convs = [_conversation(s, i, original, original_model, FakeValues(99, f"orig-{i}"))
             for i, s in enumerate(items)]
    from components.speech.backends import make_tts

    user_tts, model_tts = make_tts(pair_cfg, "user"), make_tts(pair_cfg, "model")
    timings: dict[str, float] = {}
    audio_s = 0.0
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        for pair, inputs in convs:
            result = resynthesize_pair(pair_cfg, pair, inputs, user_tts, model_tts)
            audio_s += result.record.duration_s if label == "cold" else 0.0
        timings[label] = (time.perf_counter() - t0) / len(convs)
    figures["pair_s"] = {k: round(v, 3) for k, v in timings.items()}
    figures["pair_timeline_s"] = round(audio_s / len(convs), 2)
    pair_table = table(["resynthesize_pair", "s / pair", "timeline s / pair"], [
        [k, fmt(v, ".3f"), fmt(figures["pair_timeline_s"], ".1f")] for k, v in timings.items()])

    text = "\n\n".join([
        f"resynthesize bench — {n} conversations (simulated world texts), 2 cores shared",
        "TTS real-time factor (cache off unless 'cached'):\n" + rtf_table,
        f"Fitting user turns to their original spans (renders/turn "
        f"{figures['fit']['renders_per_turn']}, {figures['fit']['seconds_per_turn']} s/turn, "
        f"{figures['fit']['within_0_15_s']:.0%} within 0.15 s):\n" + fit_table,
        pair_table,
    ])
    emit(text, figures)
    return 0


__all__ = ["main", "samples"]
