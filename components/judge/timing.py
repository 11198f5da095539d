"""Turns, replies and timing events from word timestamps — deterministic, no model involved.

Input: the redacted transcript (`contract.Transcript`): the user's words from Whisper and the
model's words from its own text stream. Definitions (the judge's, documented in README.md):

* **User turns**: user words in time order; a new turn starts when the silence between two
  words is longer than ``judge.user_turn_gap_s``, or longer than half of it when the model took
  the floor in that silence (said non-backchannel words that start after the earlier word ends
  and end before the later one starts: a quick short answer followed by the user's next
  question must not merge the two questions into one turn).
* **Reply windows**: the reply to user turn *i* is made of the model words that START in
  [start of turn *i*, start of turn *i+1*) (the last window is open-ended). Model words before
  the first user turn are a greeting (window ``user_turn=None``, never judged).
* **Backchannels**: at the start of a window, a phrase of ``judge.backchannels`` (matched on
  lower-cased alphanumerics, so "Mm-hm." = "mm-hm" and multiword phrases like "i see" work)
  whose first word starts while the user is still speaking (before the user's end of turn) and
  after which the model pauses at least ``judge.backchannel_pause_s`` is an exception: it is
  neither an interruption nor part of the reply. A "Yes," that runs straight on into an answer
  is not a backchannel: it is the start of the reply.
* **Reply**: the window's words after its backchannels. Its start is its first word.
* **Model turns**: greeting, backchannel and reply words, split at window boundaries, around
  each backchannel, and where the model is silent longer than ``judge.user_turn_gap_s``.
* **Interruption event**: the reply starts more than ``judge.interruption_tolerance_s`` before
  the user's end of turn (``seconds`` = how long before).
* **Unresponsiveness event**: the reply starts more than ``judge.unresponsive_after_s`` after
  the user's end of turn (``seconds`` = that latency), or there is no reply and the user went
  on (next user turn) or the conversation ended more than ``unresponsive_after_s`` after the
  user's end (``seconds`` = that wait). If the user speaks again, or the conversation ends,
  within the threshold, the model had no chance to answer: no event.

Timing axis scores (1..5, higher is better; problems are scores <= judge.thresholds[axis]):

* interruption: overlap = user's end − reply start; overlap > SEVERE_OVERLAP_S -> 1,
  > tolerance -> 2 (the event), > 0 -> 4 (within tolerance), else (or no reply) 5;
* unresponsiveness: no reply with an event -> 1; a reply later than the threshold (the event)
  -> 2; latency > half the threshold -> 4; else, or no reply without an event, 5.

Bad input raises `ItemFailure`: "empty-transcript" (no user words), "bad-timestamps" (words of
one side that go back in time or overlap by more than TIMESTAMP_SLACK_S), and
"audio-shorter-than-alignments" (a word ending more than AUDIO_SLACK_S after the audio ends). A
reply with no words is not an error: it is an unanswered turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from components.common.stagekit import ItemFailure
from components.contract import AxisScore, TimingEvent, Transcript, Turn, WordStamp

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import JudgeConfig

# Rounding of timestamps (ms) and word-boundary jitter of aligners: overlaps this small are not
# errors. Whisper's word ends and a 12.5 Hz text stream both stay well inside it.
TIMESTAMP_SLACK_S = 0.02
# A word may end this long after the audio without it being an error (resampling, frame rounding).
AUDIO_SLACK_S = 0.25
# Talking over the user for longer than this is a severe interruption (score 1, not 2).
SEVERE_OVERLAP_S = 1.0

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def norm_token(word: str) -> str:
    """Comparable form of one word: lower case, letters and digits only ("Mm-hm." -> "mmhm")."""
    return _NON_ALNUM.sub("", word.lower())


@dataclass(frozen=True)
class TimingSettings:
    """The detector settings (from JudgeConfig); part of the judge key."""

    user_turn_gap_s: float = 1.5
    interruption_tolerance_s: float = 0.2
    unresponsive_after_s: float = 2.5
    backchannel_pause_s: float = 0.4
    backchannels: tuple[str, ...] = ("mm-hm", "mhm", "mm", "uh-huh", "hmm", "okay", "ok",
                                     "right", "yeah", "yes", "i see", "got it", "sure")

    @classmethod
    def from_config(cls, judge: "JudgeConfig") -> "TimingSettings":
        return cls(user_turn_gap_s=judge.user_turn_gap_s,
                   interruption_tolerance_s=judge.interruption_tolerance_s,
                   unresponsive_after_s=judge.unresponsive_after_s,
                   backchannel_pause_s=judge.backchannel_pause_s,
                   backchannels=tuple(judge.backchannels))

    def phrases(self) -> list[tuple[str, ...]]:
        """Backchannel phrases as token tuples, longest first (so "i see" wins over "i")."""
        out = {tuple(t for t in (norm_token(w) for w in p.split()) if t) for p in self.backchannels}
        return sorted((p for p in out if p), key=len, reverse=True)


@dataclass
class ReplySpan:
    """One reply window's timing facts (the judge adds content scores on top)."""

    index: int  # position in the conversation's replies (greeting first, when there is one)
    user_turn: int | None  # None: the greeting
    model_turn: int | None  # first model turn of the reply; None when the model said nothing
    request: str
    words: list[int]  # indices into transcript.model_words of the reply (no backchannels)
    backchannels: list[int]  # model turn indices of the window's backchannels
    text: str
    start: float
    end: float
    user_start: float | None
    user_end: float | None
    next_user_start: float | None
    latency: float | None  # reply start − user's end (negative: overlap); None: no reply
    events: list[TimingEvent] = field(default_factory=list)
    timing_scores: dict[str, AxisScore] | None = None  # None for the greeting

    @property
    def has_words(self) -> bool:
        return bool(self.words)


@dataclass
class Segmentation:
    user_turns: list[Turn]
    model_turns: list[Turn]
    backchannel_turns: list[int]  # model turn indices that are backchannels
    replies: list[ReplySpan]
    events: list[TimingEvent]
    duration_s: float


# ----------------------------------------------------------------------------- validation


def _check_side(words: list[WordStamp], side: str) -> None:
    for i, (a, b) in enumerate(zip(words, words[1:]), start=1):
        if b.start < a.start:
            raise ItemFailure("bad-timestamps", f"{side} word {i} ({b.word!r}) starts at "
                              f"{b.start:.3f}s, before the previous word ({a.start:.3f}s)")
        if b.start < a.end - TIMESTAMP_SLACK_S:
            raise ItemFailure("bad-timestamps", f"{side} words {i - 1} and {i} overlap: "
                              f"{a.word!r} ends at {a.end:.3f}s, "
                              f"{b.word!r} starts at {b.start:.3f}s")


def check_transcript(transcript: Transcript, audio_duration_s: float | None = None) -> None:
    """Raise ItemFailure for a transcript the detectors cannot trust (codes: module docstring).

    The audio limit is the shorter of the transcript's recorded duration and, when given, the
    duration of the audio that goes with it (the scrubbed model channel)."""
    if not any(norm_token(w.word) or w.word.strip() for w in transcript.user_words):
        raise ItemFailure("empty-transcript", "the transcript has no user words")
    _check_side(transcript.user_words, "user")
    _check_side(transcript.model_words, "model")
    limits = [transcript.duration_s] + ([audio_duration_s] if audio_duration_s is not None else [])
    limit = min(limits)
    for side, words in (("user", transcript.user_words), ("model", transcript.model_words)):
        if words and max(w.end for w in words) > limit + AUDIO_SLACK_S:
            last = max(words, key=lambda w: w.end)
            raise ItemFailure("audio-shorter-than-alignments",
                              f"{side} word {last.word!r} ends at {last.end:.3f}s but the audio "
                              f"is {limit:.3f}s long")


# ----------------------------------------------------------------------------- segmentation


def _match_phrase(tokens: list[str], i: int, phrases: list[tuple[str, ...]]) -> int:
    """Number of words from position i that form a backchannel phrase (0: none)."""
    for phrase in phrases:
        n = len(phrase)
        if tuple(tokens[i : i + n]) == phrase:
            return n
    return 0


def _all_backchannel(tokens: list[str], phrases: list[tuple[str, ...]]) -> bool:
    i = 0
    toks = [t for t in tokens if t]
    while i < len(toks):
        n = _match_phrase(toks, i, phrases)
        if not n:
            return False
        i += n
    return bool(toks)


def _user_turn_bounds(user: list[WordStamp], model: list[WordStamp], tokens: list[str],
                      s: TimingSettings, phrases: list[tuple[str, ...]]) -> list[tuple[int, int]]:
    """[first, last) user word ranges of the turns (rules: module docstring)."""
    bounds: list[tuple[int, int]] = []
    first = 0
    for i in range(1, len(user)):
        a, b = user[i - 1], user[i]
        gap = b.start - a.end
        split = gap > s.user_turn_gap_s
        if not split and gap > s.user_turn_gap_s / 2:
            inside = [k for k, w in enumerate(model)
                      if w.start >= a.end and w.end <= b.start + TIMESTAMP_SLACK_S]
            split = bool(inside) and not _all_backchannel([tokens[k] for k in inside], phrases)
        if split:
            bounds.append((first, i))
            first = i
    if user:
        bounds.append((first, len(user)))
    return bounds


def _join(words: list[WordStamp], idx: list[int]) -> str:
    return " ".join(words[k].word for k in idx)


def _split_by_gap(words: list[WordStamp], idx: list[int], gap_s: float) -> list[list[int]]:
    runs: list[list[int]] = []
    for k in idx:
        if runs and words[k].start - words[runs[-1][-1]].end <= gap_s:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def segment(transcript: Transcript, settings: TimingSettings) -> Segmentation:
    """Turns, reply windows, backchannels, timing events and timing scores (call
    `check_transcript` first: this assumes ordered, non-overlapping words)."""
    s = settings
    phrases = s.phrases()
    user, model = transcript.user_words, transcript.model_words
    tokens = [norm_token(w.word) for w in model]
    duration = transcript.duration_s

    user_turns = [Turn(side="user", index=n, start=user[a].start, end=user[b - 1].end,
                       text=_join(user, list(range(a, b))), first_word=a, last_word=b)
                  for n, (a, b) in enumerate(_user_turn_bounds(user, model, tokens, s, phrases))]

    # Reply windows: model words by the user turn whose window they start in (-1 = greeting).
    starts = [t.start for t in user_turns]
    windows: dict[int, list[int]] = {n: [] for n in range(-1, len(user_turns))}
    n = -1
    for k, w in enumerate(model):
        while n + 1 < len(starts) and w.start >= starts[n + 1]:
            n += 1
        windows[n].append(k)

    model_turns: list[Turn] = []
    backchannel_turns: list[int] = []

    def add_model_turn(idx: list[int], backchannel: bool) -> int:
        t = Turn(side="model", index=len(model_turns), start=model[idx[0]].start,
                 end=model[idx[-1]].end, text=_join(model, idx), first_word=idx[0],
                 last_word=idx[-1] + 1)
        model_turns.append(t)
        if backchannel:
            backchannel_turns.append(t.index)
        return t.index

    replies: list[ReplySpan] = []
    events: list[TimingEvent] = []

    greeting = windows[-1]
    if greeting:
        runs = _split_by_gap(model, greeting, s.user_turn_gap_s)
        first_turn = [add_model_turn(r, False) for r in runs][0]
        replies.append(ReplySpan(index=0, user_turn=None, model_turn=first_turn, request="",
                                 words=list(greeting), backchannels=[],
                                 text=_join(model, greeting), start=model[greeting[0]].start,
                                 end=model[greeting[-1]].end, user_start=None, user_end=None,
                                 next_user_start=starts[0] if starts else None, latency=None))

    for n, turn in enumerate(user_turns):
        idx = windows[n]
        nxt = starts[n + 1] if n + 1 < len(starts) else None
        # Backchannels: only at the window's start, while the user speaks, followed by a pause.
        bcs: list[int] = []
        pos = 0
        while pos < len(idx) and model[idx[pos]].start < turn.end:
            m = _match_phrase([tokens[k] for k in idx], pos, phrases)
            if not m:
                break
            last = idx[pos + m - 1]
            after = last + 1  # the model's next word anywhere (it may lie in a later window)
            if after < len(model) and model[after].start - model[last].end < s.backchannel_pause_s:
                break
            bcs.append(add_model_turn(idx[pos : pos + m], True))
            pos += m
        reply = idx[pos:]
        runs = _split_by_gap(model, reply, s.user_turn_gap_s)
        reply_turns = [add_model_turn(r, False) for r in runs]
        span = ReplySpan(index=len(replies), user_turn=n,
                         model_turn=reply_turns[0] if reply_turns else None, request=turn.text,
                         words=reply, backchannels=bcs, text=_join(model, reply),
                         start=model[reply[0]].start if reply else turn.end,
                         end=model[reply[-1]].end if reply else turn.end,
                         user_start=turn.start, user_end=turn.end, next_user_start=nxt,
                         latency=(model[reply[0]].start - turn.end) if reply else None)
        span.events = detect(span, s, conversation_end=duration)
        span.timing_scores = timing_scores(span, s, conversation_end=duration)
        events.extend(span.events)
        replies.append(span)
    return Segmentation(user_turns=user_turns, model_turns=model_turns,
                        backchannel_turns=backchannel_turns, replies=replies, events=events,
                        duration_s=duration)


# ----------------------------------------------------------------------------- detectors


def _waited(span: ReplySpan, conversation_end: float) -> float:
    """For a turn left unanswered: how long the model had before the user went on / it ended."""
    bound = span.next_user_start if span.next_user_start is not None else conversation_end
    return max(0.0, bound - (span.user_end or 0.0))


def detect(span: ReplySpan, s: TimingSettings, *, conversation_end: float) -> list[TimingEvent]:
    """The timing events of one reply window (definitions: module docstring)."""
    if span.user_turn is None or span.user_end is None or span.user_start is None:
        return []
    common: dict[str, Any] = dict(user_turn=span.user_turn, reply=span.index,
                                  user_start=span.user_start, user_end=span.user_end)
    if span.latency is None:
        waited = _waited(span, conversation_end)
        if waited > s.unresponsive_after_s:
            return [TimingEvent(kind="unresponsiveness", model_start=None,
                                seconds=round(waited, 3), **common)]
        return []
    if span.latency < -s.interruption_tolerance_s:
        return [TimingEvent(kind="interruption", model_start=span.start,
                            seconds=round(-span.latency, 3), **common)]
    if span.latency > s.unresponsive_after_s:
        return [TimingEvent(kind="unresponsiveness", model_start=span.start,
                            seconds=round(span.latency, 3), **common)]
    return []


def timing_scores(span: ReplySpan, s: TimingSettings, *,
                  conversation_end: float) -> dict[str, AxisScore] | None:
    """Scores of the two timing axes (mapping: module docstring); None for the greeting."""
    if span.user_turn is None or span.user_end is None:
        return None
    tol, thr = s.interruption_tolerance_s, s.unresponsive_after_s
    if span.latency is None:
        waited = _waited(span, conversation_end)
        went_on = "the user spoke again" if span.next_user_start is not None else \
            "the conversation ended"
        interruption = AxisScore(score=5, rationale="the model did not speak over the user")
        if waited > thr:
            unresp = AxisScore(score=1, rationale=f"no reply: {went_on} {waited:.2f} s after the "
                                                  f"user's end of turn (threshold {thr:.2f} s)")
        else:
            unresp = AxisScore(score=5, rationale=f"no reply, but {went_on} after only "
                                                  f"{waited:.2f} s (threshold {thr:.2f} s)")
        return {"interruption": interruption, "unresponsiveness": unresp}
    overlap = -span.latency
    if overlap > SEVERE_OVERLAP_S:
        i_score, i_why = 1, f"started {overlap:.2f} s before the user finished (severe)"
    elif overlap > tol:
        i_score, i_why = 2, (f"started {overlap:.2f} s before the user finished "
                             f"(tolerance {tol:.2f} s)")
    elif overlap > 0:
        i_score, i_why = 4, f"started {overlap:.2f} s before the user finished, within tolerance"
    else:
        i_score, i_why = 5, "started after the user finished"
    latency = span.latency
    if latency > thr:
        u_score, u_why = 2, (f"reply came {latency:.2f} s after the user's end "
                             f"(threshold {thr:.2f} s)")
    elif latency > thr / 2:
        u_score, u_why = 4, f"reply came {latency:.2f} s after the user's end"
    else:
        u_score, u_why = 5, f"reply came {max(latency, 0.0):.2f} s after the user's end"
    return {"interruption": AxisScore(score=i_score, rationale=i_why),
            "unresponsiveness": AxisScore(score=u_score, rationale=u_why)}
