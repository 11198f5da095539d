"""A logged, scrubbed conversation made of REAL speech (piper), and the pairs the pairs stage would
make from it: what the resynthesize tests run on.

Timeline (seconds; the user spoke in the simulator's user voice, the model in its own):

    user 0   "Hello, my name is [PERSON] and my number is [PHONE]."  (said: Maria Lopez, 415-555-0142)
    model 0  "Thanks, I have noted your number [PHONE]."              reply 0 -> content pair (A)
    user 1   "How much does the Travel Pass cost in Europe?"
    model 1  "Travel Pass costs ten dollars per day."                 reply 1 starts 0.9 s before the
                                                                       user's end -> interruption (B)
    user 2   "Okay, thank you."
    (model silent)                                                    reply 2 -> silence pair (C)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from components.contract import (
    MODEL_SAMPLE_RATE,
    ConversationJudgement,
    PairSide,
    PreferencePair,
    Transcript,
    Turn,
    WordStamp,
)
from tests.support.speech import shifted, spoken, timeline

RATE = MODEL_SAMPLE_RATE
CID = "conv-resynth-1"
WPS = 2.6


@dataclass
class Conversation:
    transcript: Transcript
    judgement: ConversationJudgement
    model_audio: np.ndarray  # 24 kHz mono, PII echo muted as scrub does
    pairs: dict[str, PreferencePair]  # "A", "B", "C"


def _stamps(words: list[tuple[str, float, float]]) -> list[WordStamp]:
    return [WordStamp(word=w, start=round(s, 4), end=round(e, 4)) for w, s, e in words]


def _redact(words: list[WordStamp], first: int, last: int, placeholder: str) -> list[WordStamp]:
    span = WordStamp(word=placeholder, start=words[first].start, end=words[last - 1].end)
    return words[:first] + [span] + words[last:]


def _turn(side: str, index: int, words: list[WordStamp], first: int, last: int) -> Turn:
    part = words[first:last]
    return Turn(side=side, index=index, start=part[0].start, end=part[-1].end,  # type: ignore[arg-type]
                text=" ".join(w.word for w in part), first_word=first, last_word=last)


def planned(text: str, start: float) -> list[WordStamp]:
    """Word times as the pairs stage plans them (speaking_rate_wps, back to back)."""
    return [WordStamp(word=w, start=round(start + i / WPS, 4), end=round(start + (i + 1) / WPS, 4))
            for i, w in enumerate(text.split())]


def side(words: list[WordStamp], source: str) -> PairSide:
    return PairSide(text=" ".join(w.word for w in words), start=words[0].start,
                    end=words[-1].end, words=words, source=source)  # type: ignore[arg-type]


def _pair(kind: str, reply: int, user_turn: Turn, next_user: Turn | None, rejected: PairSide,
          chosen: PairSide, problems: list[str], provenance: dict) -> PreferencePair:
    return PreferencePair(
        pair_id=f"pair{kind}{reply:02d}" + "0" * 18, conversation_id=CID,
        user_pseudonym="pseudo-1", type={"A": "content", "B": "interruption", "C": "silence"}[kind],
        reply=reply, user_turn=user_turn.index, user_end=user_turn.end,
        next_user_start=next_user.start if next_user else None, rejected=rejected, chosen=chosen,
        scores={"helpfulness": 2.0}, problems=problems, judge_backend="test-judge",
        judge_version="jv1", serving_model_version="model-v1", passages=[],
        composer="moved" if kind == "B" else "test-composer", provenance=provenance)


def build_conversation() -> Conversation:
    u0_audio, u0 = spoken("Hello, my name is Maria Lopez and my number is 415-555-0142.", RATE, "user")
    m0_audio, m0 = spoken("Thanks, I have noted your number 415-555-0142.", RATE, "model")
    u1_audio, u1 = spoken("How much does the Travel Pass cost in Europe?", RATE, "user")
    m1_audio, m1 = spoken("Travel Pass costs ten dollars per day.", RATE, "model")
    u2_audio, u2 = spoken("Okay, thank you.", RATE, "user")

    t_u0 = 0.4
    u0 = shifted(u0, t_u0)
    t_m0 = u0[-1][2] + 0.7
    m0 = shifted(m0, t_m0)
    t_u1 = m0[-1][2] + 0.8
    u1 = shifted(u1, t_u1)
    t_m1 = u1[-1][2] - 0.9  # the model talks over the end of the question
    m1 = shifted(m1, t_m1)
    t_u2 = max(m1[-1][2], u1[-1][2]) + 1.0
    u2 = shifted(u2, t_u2)
    duration = u2[-1][2] + 3.0

    # scrub: one placeholder per PII span (names: 2 words, phone: 1 token), model echo muted
    user_words = _stamps(u0 + u1 + u2)
    user_words = _redact(user_words, 10, 11, "[PHONE]")
    user_words = _redact(user_words, 4, 6, "[PERSON]")
    model_words = _stamps(m0 + m1)
    echo = model_words[6]
    model_words = _redact(model_words, 6, 7, "[PHONE]")
    model = timeline(duration, RATE, [(t_m0 - 0.05, m0_audio), (t_m1 - 0.05, m1_audio)])
    model[int((echo.start - 0.05) * RATE):int((echo.end + 0.05) * RATE)] = 0.0

    transcript = Transcript(conversation_id=CID, redacted=True, asr_model="test-asr",
                            duration_s=round(duration, 3), user_words=user_words,
                            model_words=model_words)
    n0 = next(i for i, w in enumerate(user_words) if w.word == "[PHONE]") + 1
    n1 = n0 + len(u1)
    user_turns = [_turn("user", 0, user_words, 0, n0), _turn("user", 1, user_words, n0, n1),
                  _turn("user", 2, user_words, n1, len(user_words))]
    k0 = next(i for i, w in enumerate(model_words) if w.word == "[PHONE]") + 1
    model_turns = [_turn("model", 0, model_words, 0, k0),
                   _turn("model", 1, model_words, k0, len(model_words))]
    judgement = ConversationJudgement(conversation_id=CID, model_version="model-v1",
                                      backend="test-judge", backend_version="jv1",
                                      user_turns=user_turns, model_turns=model_turns, replies=[],
                                      events=[])
    provenance = {"judge_manifest_id": "judge-test", "transcript": {"key": "transcripts/x.json"},
                  "judgement": {"key": "judgements/x.json"},
                  "model_audio": {"key": "conversations/x/model.wav"}, "model_tokens": None}

    ut = user_turns
    rejected_a = side(model_words[:k0], "logged")
    chosen_a = side(planned("Thank you [PERSON], I saved [PHONE] as your number.", rejected_a.start),
                    "rewritten")
    rejected_b = side(model_words[k0:], "logged")
    gap_b = 0.3
    moved = [WordStamp(word=w.word, start=round(w.start + ut[1].end + gap_b - rejected_b.start, 4),
                       end=round(w.end + ut[1].end + gap_b - rejected_b.start, 4))
             for w in rejected_b.words]
    chosen_b = side(moved, "moved")
    chosen_c = side(planned("You are welcome, have a great day.", ut[2].end + 0.5), "composed")
    rejected_c = PairSide(text="", start=chosen_c.start, end=chosen_c.end, words=[], source="none")
    pairs = {
        "A": _pair("A", 0, ut[0], ut[1], rejected_a, chosen_a, ["helpfulness"], provenance),
        "B": _pair("B", 1, ut[1], ut[2], rejected_b, chosen_b, ["interruption"], provenance),
        "C": _pair("C", 2, ut[2], None, rejected_c, chosen_c, ["unresponsiveness"], provenance),
    }
    return Conversation(transcript, judgement, model, pairs)


@pytest.fixture(scope="session")
def conversation() -> Conversation:
    return build_conversation()
