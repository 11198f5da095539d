"""resynthesize: each preference pair's audio — TTS user side, chosen reply placed, model channels.

Per PreferencePair (item id = pair_id), from the refs in its provenance (the redacted transcript,
the ConversationJudgement, the scrubbed model audio, the model tokens):

1. PII placeholders become typed fake values (fakes.py) in every text that is spoken or goes
   into a text stream: user turns, the chosen reply, the rejected reply's words.
2. User side: every user turn that starts before the pair's horizon is said by the user TTS (a
   voice that is no user's) and fitted to its original span (timeline.py), first word on the
   original's first word. The measured end of the turn the reply answers is `user_speech_end`.
3. Chosen side, on the model channel: the logged (scrubbed) model audio with the rejected reply's
   span silenced, plus the chosen reply placed at max(chosen.start, user_speech_end + gap), gap =
   chosen.start - user_end as the pair planned it (never < 0: a chosen reply never starts before
   the measured end of the user's speech). Composed / rewritten replies are said by the model TTS
   (the voice the model speaks with); a MOVED reply (interruption pairs) is the rejected side's
   own audio, moved — the two sides then differ in timing only, which is what such a pair
   teaches. Its words get the times of the speech as placed.
4. Rejected side: the logged model channel as is (default; the logged model tokens stay the
   rejected side's tokens), or (resynthesize.rejected_audio = "resynthesized", the control for the
   audio-source confound) the rejected reply said by the model TTS, fitted to its logged span, in
   place of the logged reply — then the logged tokens no longer match and `model_tokens` is None
   (tokenize re-encodes).
5. Writes pairs/<pair_id>/{user.wav, chosen_model.wav, rejected_model.wav} (24 kHz mono, all the
   same length) and resynthesis.json (ResynthesisRecord); returns a ResynthesizedPair.

The timeline: from 0 to the pair's horizon = the later side's end + TAIL_MARGIN_S, capped at the
conversation's duration — what tokenize scores (reply windows cut at the next user turn, K
trailing PAD frames) lies inside it, and nothing after it is synthesised. User turns that end
more than CONTEXT_MARGIN_S before the context tokenize keeps (tokenize.context_frames, else
model.context, counted back from the horizon) are left silent: the model never sees them, and a
long conversation's early turns would otherwise cost most of the TTS time. A chosen reply that the
placement pushes past the conversation's end EXTENDS the timeline (silence on the other tracks)
rather than failing: the pair stays usable; the record's duration_s says how long it is, and
provenance.resynthesis.chosen_overrun_s how far it runs past the next user turn.

Idempotent: outputs are deterministic (seeded fakes, deterministic TTS, cached on disk); an
object whose bytes are already stored (same MD5 etag) is not rewritten; completion markers make
a rerun skip finished pairs. Per-item errors (code: reason): missing-input, bad-input,
bad-provenance, bad-judgement, bad-model-audio, audio-shorter-than-alignments.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.common.audio import AudioFormatError, decode_wav, encode_wav, resample
from components.common.config import Config
from components.common.stagekit import ItemFailure, StageRun, iter_items, load_manifest, run_items
from components.common.storage import ObjectStore, StorageError
from components.contract import (
    MODEL_SAMPLE_RATE,
    SYNTHETIC_SPEECH_METADATA,
    ConversationJudgement,
    Keys,
    ObjectRef,
    PairSide,
    PreferencePair,
    ResynthesisRecord,
    ResynthesizedPair,
    Transcript,
    Turn,
    WordStamp,
)
from components.resynthesize.fakes import FakeValues, Token
from components.resynthesize.timeline import Clip, cut, fit_to_span, mute, place, render
from components.speech.backends import TtsBackend, describe, make_tts, speak_written
from components.speech.tts import TimedWord

STAGE = "resynthesize"
RATE = MODEL_SAMPLE_RATE
TAIL_MARGIN_S = 1.0  # timeline kept after the later side's end
MUTE_LEAD_S = 0.04  # a logged reply's audio starts a little before its first word ...
MUTE_TAIL_S = 0.12  # ... and decays a little after its last
AUDIO_TOLERANCE_S = 0.1  # model audio may end this much before its last word's end
FRAME_S = 0.08  # timelines are whole 80 ms frames (12.5 Hz), what tokenize encodes
# User turns ending more than this before tokenize's context starts are not spoken (silence):
# the margin covers the codec encoder's look-back, so the kept frames' codes are unaffected.
CONTEXT_MARGIN_S = 10.0
PROVENANCE_KEYS = ("transcript", "judgement", "model_audio")


# ----------------------------------------------------------------------------- inputs


@dataclass
class PairInputs:
    transcript: Transcript
    judgement: ConversationJudgement
    model_audio: np.ndarray  # mono float32 at RATE


def _ref(pair: PreferencePair, name: str) -> ObjectRef:
    value = pair.provenance.get(name)
    if not isinstance(value, dict):
        raise ItemFailure("bad-provenance", f"pair provenance has no {name} ref")
    try:
        return ObjectRef.model_validate(value)
    except ValueError as exc:
        raise ItemFailure("bad-provenance", f"provenance.{name} is not an object ref: {exc}") from None


def _get(store: ObjectStore, ref: ObjectRef, what: str) -> bytes:
    try:
        if store.stat(ref.key, version_id=ref.version_id) is None:
            raise ItemFailure("missing-input", f"{what} {ref.key} (version {ref.version_id}) is gone")
        return store.get_bytes(ref.key, version_id=ref.version_id)
    except StorageError as exc:
        raise ItemFailure("missing-input", f"{what} {ref.key}: {exc}") from None


def read_inputs(store: ObjectStore, pair: PreferencePair) -> PairInputs:
    refs = {name: _ref(pair, name) for name in PROVENANCE_KEYS}
    try:
        transcript = Transcript.model_validate_json(_get(store, refs["transcript"], "transcript"))
        judgement = ConversationJudgement.model_validate_json(
            _get(store, refs["judgement"], "judgement"))
    except ValueError as exc:
        raise ItemFailure("bad-input", f"unreadable transcript or judgement: {exc}") from None
    try:
        audio, rate = decode_wav(_get(store, refs["model_audio"], "model audio"))
    except AudioFormatError as exc:
        raise ItemFailure("bad-model-audio", str(exc)) from None
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    return PairInputs(transcript, judgement, resample(mono.astype(np.float32), rate, RATE))


def validate(pair: PreferencePair, inputs: PairInputs) -> None:
    t, j = inputs.transcript, inputs.judgement
    if t.conversation_id != pair.conversation_id or j.conversation_id != pair.conversation_id:
        raise ItemFailure("bad-input", f"transcript/judgement are of another conversation than "
                                       f"{pair.conversation_id}")
    if not t.redacted:
        raise ItemFailure("bad-input", "the transcript is not redacted")
    for turn in j.user_turns:
        if not 0 <= turn.first_word < turn.last_word <= len(t.user_words):
            raise ItemFailure("bad-judgement", f"user turn {turn.index} [{turn.first_word}, "
                                               f"{turn.last_word}) does not index the "
                                               f"{len(t.user_words)} user words")
    if pair.user_turn is not None and not any(u.index == pair.user_turn for u in j.user_turns):
        raise ItemFailure("bad-judgement", f"the pair answers user turn {pair.user_turn}, which "
                                           "the judgement does not have")
    audio_s = len(inputs.model_audio) / RATE
    last_word = max((w.end for w in t.model_words), default=0.0)
    last_word = max([last_word] + [w.end for w in pair.rejected.words])
    if audio_s + AUDIO_TOLERANCE_S < last_word:
        raise ItemFailure("audio-shorter-than-alignments",
                          f"model audio lasts {audio_s:.2f}s but its words run to {last_word:.2f}s")


# ----------------------------------------------------------------------------- the pair


@dataclass
class PairAudio:
    user: np.ndarray
    chosen_model: np.ndarray
    rejected_model: np.ndarray
    record: ResynthesisRecord
    pair: PreferencePair  # chosen as placed, rejected with fake values (or resynthesised)
    fit_errors: list[float] = field(default_factory=list)  # |fitted end - original end| per turn


def _flat(tokens: list[list[Token]]) -> list[Token]:
    return [t for group in tokens for t in group]


def _fake_words(words: list[WordStamp], tokens: list[list[Token]]) -> list[WordStamp]:
    """Logged words with placeholders replaced: a placeholder's span is shared evenly by the
    fake value's written tokens (the audio there was muted by scrub anyway)."""
    out: list[WordStamp] = []
    for word, group in zip(words, tokens):
        n = len(group)
        step = (word.end - word.start) / n
        for k, (written, _) in enumerate(group):
            out.append(WordStamp(word=written, start=round(word.start + k * step, 4),
                                 end=round(word.start + (k + 1) * step, 4)))
    return out


def _stamps(words: list[TimedWord]) -> list[WordStamp]:
    return [WordStamp(word=w.word, start=max(0.0, w.start), end=max(0.0, w.end)) for w in words]


def _side(words: list[WordStamp], source: str) -> PairSide:
    return PairSide(text=" ".join(w.word for w in words), start=words[0].start,
                    end=max(w.end for w in words), words=words, source=source)  # type: ignore[arg-type]


def context_seconds(cfg: Config) -> float:
    """The context tokenize keeps (left truncation), in seconds."""
    return (cfg.tokenize.context_frames or cfg.model.context) * FRAME_S


def _horizon(pair: PreferencePair, duration_s: float) -> float:
    end = max(pair.chosen.end, pair.rejected.end)
    return min(duration_s, end + TAIL_MARGIN_S) if duration_s > 0 else end + TAIL_MARGIN_S


def resynthesize_pair(cfg: Config, pair: PreferencePair, inputs: PairInputs,
                      user_tts: TtsBackend, model_tts: TtsBackend) -> PairAudio:
    """Everything but the store: the three tracks, the record and the placed pair."""
    r = cfg.resynthesize
    validate(pair, inputs)
    if not pair.chosen.text.split():
        raise ItemFailure("bad-input", "the chosen reply has no words")
    transcript, judgement = inputs.transcript, inputs.judgement
    fakes = FakeValues(r.seed, pair.conversation_id)
    fit: dict[str, Any] = dict(rate=RATE, fit=r.fit_to_span, scale_min=r.length_scale_min,
                               scale_max=r.length_scale_max)
    horizon = _horizon(pair, max(transcript.duration_s, len(inputs.model_audio) / RATE))

    # Fake values in time order, so a model reply echoing a placeholder reuses what the user said
    # BEFORE it; the model's texts are substituted once the user turns before the reply are done.
    reply_at = min(pair.rejected.start, pair.chosen.start)
    turns: list[tuple[Turn, list[Token]]] = []
    model_tokens: dict[str, list[list[Token]]] = {}

    def model_side_tokens() -> None:
        model_tokens["rejected"] = fakes.tokens([w.word for w in pair.rejected.words], "model", pair.reply)
        model_tokens["chosen"] = fakes.tokens(pair.chosen.text.split(), "chosen", pair.reply)

    earliest = horizon - context_seconds(cfg) - CONTEXT_MARGIN_S
    for turn in sorted(judgement.user_turns, key=lambda u: u.start):
        if turn.start >= horizon:
            break
        if turn.end < earliest:
            continue  # before the context tokenize keeps: never seen by the model, not spoken
        if turn.start > reply_at and not model_tokens:
            model_side_tokens()
        words = transcript.user_words[turn.first_word:turn.last_word]
        turns.append((turn, _flat(fakes.tokens([w.word for w in words], "user", turn.index))))
    if not model_tokens:
        model_side_tokens()

    # 1. user side
    user_clips: list[Clip] = []
    user_records: list[dict[str, Any]] = []
    fit_errors: list[float] = []
    measured_end: dict[int, float] = {}
    for turn, tokens in turns:
        if not any(spoken.split() for _, spoken in tokens):
            continue  # nothing sayable (punctuation-only ASR output): silence, as logged
        words = transcript.user_words[turn.first_word:turn.last_word]
        start, end = words[0].start, max(w.end for w in words)
        clip = fit_to_span(user_tts, tokens, start, end, **fit)
        user_clips.append(clip)
        measured_end[turn.index] = clip.end
        fit_errors.append(abs(clip.end - end))
        user_records.append({"turn": turn.index, "start": round(start, 4), "end": round(end, 4),
                             "fitted_start": round(clip.start, 4), "fitted_end": round(clip.end, 4),
                             "length_scale": clip.length_scale})

    # 2. rejected side
    logged = inputs.model_audio
    rejected_words = _fake_words(pair.rejected.words, model_tokens["rejected"])
    rejected_track = logged.copy()
    if pair.rejected.words:
        mute_from, mute_to = pair.rejected.start - MUTE_LEAD_S, pair.rejected.end + MUTE_TAIL_S
        if r.rejected_audio == "resynthesized":
            rejected_clip = fit_to_span(model_tts, _flat(model_tokens["rejected"]),
                                        pair.rejected.start, pair.rejected.end, **fit)
            mute(rejected_track, RATE, mute_from, mute_to)
            rejected_track = render(len(rejected_track) / RATE, RATE, [rejected_clip], rejected_track)
            rejected_words = _stamps(rejected_clip.words)

    # 3. chosen side
    user_speech_end = (measured_end.get(pair.user_turn, pair.user_end or 0.0)
                       if pair.user_turn is not None else (pair.user_end or 0.0))
    start = pair.chosen.start
    if pair.user_turn is not None and pair.user_end is not None:
        gap = max(0.0, pair.chosen.start - pair.user_end)
        start = max(pair.chosen.start, user_speech_end + gap)
    if pair.chosen.source == "moved" and pair.rejected.words:
        chosen_clip = _moved(pair, rejected_track, rejected_words, start)
    else:
        chosen_clip = place(speak_written(model_tts, _flat(model_tokens["chosen"])), start, RATE)
    chosen = _side(_stamps(chosen_clip.words), pair.chosen.source)
    # an empty rejected side (the model said nothing) spans what the chosen reply spans
    rejected = (_side(rejected_words, pair.rejected.source) if rejected_words else
                pair.rejected.model_copy(update={"start": chosen.start, "end": chosen.end}))

    # 4. tracks
    duration = max(horizon, chosen.end + MUTE_TAIL_S, rejected.end + MUTE_TAIL_S)
    duration = float(np.ceil(round(duration / FRAME_S, 6)) * FRAME_S)
    chosen_base = logged.copy()
    if pair.rejected.words:
        mute(chosen_base, RATE, pair.rejected.start - MUTE_LEAD_S, pair.rejected.end + MUTE_TAIL_S)
    tracks = (render(duration, RATE, user_clips), render(duration, RATE, [chosen_clip], chosen_base),
              render(duration, RATE, [], rejected_track))

    overrun = (max(0.0, chosen.end - pair.next_user_start)
               if pair.next_user_start is not None else 0.0)
    placed = pair.model_copy(update={
        "chosen": chosen, "rejected": rejected,
        "provenance": {**pair.provenance, "resynthesis": {
            "chosen_shift_s": round(chosen.start - pair.chosen.start, 4),
            "chosen_overrun_s": round(overrun, 4),
            "user_speech_end": round(user_speech_end, 4)}}})
    record = ResynthesisRecord(
        pair_id=pair.pair_id, tts_user=describe(user_tts),
        tts_model=describe(model_tts), user_turns=user_records,
        user_speech_end=round(user_speech_end, 4), chosen=chosen, rejected=rejected,
        rejected_audio=r.rejected_audio, fake_values=dict(sorted(fakes.counts.items())),
        duration_s=round(duration, 4))
    return PairAudio(*tracks, record=record, pair=placed, fit_errors=fit_errors)


def _moved(pair: PreferencePair, rejected_track: np.ndarray, rejected_words: list[WordStamp],
           start: float) -> Clip:
    """The rejected reply's own audio (its first len(chosen.words) words: the pair may have cut
    the moved reply before the next user turn), moved so its first word starts at `start`."""
    n = max(1, min(len(pair.chosen.words) or len(rejected_words), len(rejected_words)))
    first, last = rejected_words[0], rejected_words[n - 1]
    tail_to = last.end + MUTE_TAIL_S
    if n < len(rejected_words):
        tail_to = min(tail_to, rejected_words[n].start)
    audio = cut(rejected_track, RATE, first.start - MUTE_LEAD_S, tail_to)
    shift = start - first.start
    words = [TimedWord(w.word, round(w.start + shift, 4), round(w.end + shift, 4))
             for w in rejected_words[:n]]
    return Clip(audio=audio, offset=start - MUTE_LEAD_S, words=words)


# ----------------------------------------------------------------------------- the stage


def _put(store: ObjectStore, key: str, data: bytes, content_type: str,
         metadata: dict[str, str] | None = None) -> ObjectRef:
    """Store `data` unless the same bytes are already there (deterministic outputs: a rerun
    rewrites nothing). Single-part uploads have the MD5 of their bytes as etag."""
    info = store.stat(key)
    if info is not None and (info.etag or "").strip('"') == hashlib.md5(data).hexdigest():
        version = info.version_id
    else:
        version = store.put_bytes(key, data, content_type=content_type, metadata=metadata)
    # the same ref either way, so a redone item's manifest entry is byte-identical
    return ObjectRef(key=key, version_id=version, size=len(data))


def write_outputs(store: ObjectStore, result: PairAudio, model_tokens: ObjectRef | None) -> ResynthesizedPair:
    pid = result.pair.pair_id
    user = _put(store, Keys.pair_object(pid, "user.wav"), encode_wav(result.user, RATE),
                "audio/wav", dict(SYNTHETIC_SPEECH_METADATA))
    chosen = _put(store, Keys.pair_object(pid, "chosen_model.wav"),
                  encode_wav(result.chosen_model, RATE), "audio/wav")
    rejected = _put(store, Keys.pair_object(pid, "rejected_model.wav"),
                    encode_wav(result.rejected_model, RATE), "audio/wav")
    record = _put(store, Keys.pair_object(pid, "resynthesis.json"),
                  result.record.model_dump_json(indent=1).encode(), "application/json")
    return ResynthesizedPair(pair=result.pair, user_audio=user, chosen_model_audio=chosen,
                             rejected_model_audio=rejected, record=record, model_tokens=model_tokens)


def resynthesize(cfg: Config, pairs_manifest_id: str) -> StageRun:
    store = ObjectStore.from_config(cfg.storage)
    manifest = load_manifest(store, pairs_manifest_id)
    r = cfg.resynthesize
    if r.length_scale_min > r.length_scale_max:
        raise ValueError("resynthesize.length_scale_min is above length_scale_max")
    user_tts, model_tts = make_tts(cfg, "user"), make_tts(cfg, "model")
    user_tts.check()  # a backend that cannot run fails the run once, here, not every item
    model_tts.check()
    fit_errors: list[float] = []
    fakes: dict[str, int] = {}

    # Completion markers are per (stage, input, item): the control variant (rejected side
    # resynthesised) marks its items apart, so the two variants of one pairs manifest are two
    # runs with two output manifests. Both write the same object keys; each manifest pins the
    # versions it wrote.
    marker_suffix = "" if r.rejected_audio == "logged" else ".rejected-resynthesized"

    def items() -> Iterator[tuple[str, PreferencePair]]:
        for raw in iter_items(store, manifest):
            pair = PreferencePair.model_validate(raw)
            yield pair.pair_id + marker_suffix, pair

    def process(pair: PreferencePair) -> dict:
        result = resynthesize_pair(cfg, pair, read_inputs(store, pair), user_tts, model_tts)
        fit_errors.extend(result.fit_errors)
        for name, count in result.record.fake_values.items():
            fakes[name] = fakes.get(name, 0) + count
        tokens = None
        if r.rejected_audio == "logged" and pair.provenance.get("model_tokens"):
            tokens = _ref(pair, "model_tokens")
        return write_outputs(store, result, tokens).model_dump(mode="json")

    def stats() -> dict[str, Any]:
        out: dict[str, Any] = {"tts_user": describe(user_tts), "tts_model": describe(model_tts),
                               "rejected_audio": r.rejected_audio, "fake_values": fakes}
        if fit_errors:  # of the pairs processed in this run
            out["fit_error_s"] = {"turns": len(fit_errors),
                                  "median": round(statistics.median(fit_errors), 4),
                                  "max": round(max(fit_errors), 4)}
        return out

    return run_items(store, STAGE, pairs_manifest_id, items(), process,
                     total=manifest.counts.get("items"), extra_stats=stats)
