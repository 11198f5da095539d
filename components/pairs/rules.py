"""The pair rules: which type a selected reply makes, and where the chosen reply goes.

Pure functions on a ConversationJudgement's ReplyJudgement and the reply's logged words, so the
rules are testable without a store. Precedence (a reply can be flagged on several axes):

1. unresponsiveness -> C silence. The chosen reply is composed (as for A: it also fixes any
   content axis a late reply was flagged on) and placed at user_end + silence_gap_s; the rejected
   side is the late reply as logged, or an empty side over the chosen span when the model said
   nothing.
2. any content axis -> A content. The chosen reply is composed; it starts where the original
   started, or, when the original also interrupted, at max(original start, user_end +
   interruption_gap_s) — the rewrite fixes the timing too.
3. interruption only -> B interruption: the same words, every word shifted by the same offset so
   the reply starts at user_end + interruption_gap_s.
4. anything else (nothing flagged) -> no pair.

Chosen word times are PLANNED (`speaking_rate_wps`, words back to back); resynthesize replaces
them with the synthesised speech's measured times. A chosen reply should end before the next
user turn: the composer gets the time as a word budget (and says a shorter clause when the
sentence does not fit), then the text is cut at whole sentences; it is never cut mid-sentence
(a fragment is worse training text than a tail the tokenizer cuts at the user's next turn), so
a reply that still runs past the next turn says so in provenance `chosen_overrun_s`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from components.contract import CONTENT_AXES, PairSide, ReplyJudgement, WordStamp, canonical_json
from components.pairs.compose import split_sentences, words_of

MIN_WORDS = 3  # the smallest time budget a composer is given, in words
EPS = 1e-6


PairKind = Literal["content", "interruption", "silence"]


def pair_type(problems: Sequence[str]) -> PairKind | None:
    """The paper's A/B/C for a reply's flagged axes (precedence in the module docstring)."""
    flagged = set(problems)
    if "unresponsiveness" in flagged:
        return "silence"
    if flagged & set(CONTENT_AXES):
        return "content"
    if "interruption" in flagged:
        return "interruption"
    return None


def pair_id(conversation_id: str, reply: int, kind: str, judge_version: str) -> str:
    body = canonical_json([conversation_id, reply, kind, judge_version])
    return hashlib.sha256(body.encode()).hexdigest()[:24]


def planned_words(text: str, start: float, rate_wps: float) -> list[WordStamp]:
    """Back-to-back word times at the planned speaking rate."""
    step = 1.0 / rate_wps
    return [WordStamp(word=w, start=round(start + i * step, 3),
                      end=round(start + (i + 1) * step, 3))
            for i, w in enumerate(words_of(text))]


def fit_text(text: str, start: float, limit: float | None, rate_wps: float) -> str:
    """`text` cut at a SENTENCE end so its planned speech ends by `limit`; whole when not even
    its first sentence fits. Never a word cut: "within 30." teaches a fragment on every scored
    token, while an overrun's tail lies after the next user turn, where tokenize cuts the
    scored window anyway (the overrun is recorded in the pair's provenance)."""
    if limit is None:
        return text
    fits = int((limit - start) * rate_wps + EPS)
    if fits >= len(words_of(text)):
        return text
    kept: list[str] = []
    for sentence in split_sentences(text):
        if len(words_of(" ".join(kept + [sentence]))) > fits:
            break
        kept.append(sentence)
    return " ".join(kept) if kept else text


def fit_words(words: list[WordStamp], limit: float | None) -> list[WordStamp]:
    """Timed words cut at the last SENTENCE end that ends by `limit`; all of them when none does
    (same reason as fit_text)."""
    if limit is None or not words or words[-1].end <= limit + EPS:
        return words
    ends = [i + 1 for i, w in enumerate(words) if w.word[-1:] in ".!?" and w.end <= limit + EPS]
    return words[:ends[-1]] if ends else words


def overrun(side: PairSide, next_user_start: float | None) -> float:
    return 0.0 if next_user_start is None else round(max(0.0, side.end - next_user_start), 3)


@dataclass(frozen=True)
class Placement:
    start: float  # where the chosen reply starts
    limit: float | None  # it should end by then (the next user turn)


def word_budget(place: "Placement", rate_wps: float) -> int | None:
    """Words that fit between the chosen start and the next user turn (at least MIN_WORDS);
    None when nothing follows."""
    if place.limit is None:
        return None
    return max(MIN_WORDS, int((place.limit - place.start) * rate_wps + EPS))


def placement(kind: str, reply: ReplyJudgement, rejected_start: float, interruption_gap_s: float,
              silence_gap_s: float) -> Placement:
    user_end = reply.user_end
    if kind == "silence":
        start = (user_end if user_end is not None else reply.start) + silence_gap_s
    elif kind == "interruption" or (kind == "content" and "interruption" in reply.problems):
        start = rejected_start if user_end is None else max(rejected_start,
                                                             user_end + interruption_gap_s)
    else:
        start = rejected_start
    return Placement(round(start, 3), reply.next_user_start)


def rejected_side(reply: ReplyJudgement, words: list[WordStamp]) -> PairSide | None:
    """The original as logged; None when the model said nothing (the caller builds the empty side
    over the chosen span)."""
    if not words:
        return None
    return PairSide(text=" ".join(w.word for w in words), start=words[0].start,
                    end=words[-1].end, words=words, source="logged")


def empty_side(chosen: PairSide) -> PairSide:
    return PairSide(text="", start=chosen.start, end=chosen.end, words=[], source="none")


def moved_side(words: list[WordStamp], start: float, limit: float | None) -> PairSide:
    """B: the same words shifted by one offset, cut before the next user turn."""
    offset = start - words[0].start
    moved = [WordStamp(word=w.word, start=round(w.start + offset, 3), end=round(w.end + offset, 3),
                       confidence=w.confidence) for w in words]
    moved = fit_words(moved, limit)
    return PairSide(text=" ".join(w.word for w in moved), start=moved[0].start, end=moved[-1].end,
                    words=moved, source="moved")


def composed_side(text: str, start: float, limit: float | None, rate_wps: float,
                  source: Literal["composed", "rewritten"]) -> PairSide:
    text = fit_text(text, start, limit, rate_wps)
    words = planned_words(text, start, rate_wps)
    return PairSide(text=text, start=start, end=words[-1].end if words else start, words=words,
                    source=source)


__all__ = ["pair_type", "pair_id", "planned_words", "fit_text", "fit_words", "placement",
           "rejected_side", "empty_side", "moved_side", "composed_side", "overrun", "word_budget",
           "MIN_WORDS"]
