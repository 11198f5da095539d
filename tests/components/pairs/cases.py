"""Hand-built judged conversations for the pair tests: a transcript, its judgement and the
JudgedItem, with exchanges described by text and times (no judge run needed)."""

from __future__ import annotations

from dataclasses import dataclass, field

from components.contract import (
    JUDGE_AXES,
    AxisScore,
    ConversationJudgement,
    JudgedItem,
    Keys,
    ObjectRef,
    Passage,
    ReplyJudgement,
    Transcript,
    Turn,
    WordStamp,
)

WPS = 3.0  # the hand-built speech rate (words per second)


def timed(text: str, start: float, wps: float = WPS) -> list[WordStamp]:
    step = 1.0 / wps
    return [WordStamp(word=w, start=round(start + i * step, 3),
                      end=round(start + i * step + 0.8 * step, 3))
            for i, w in enumerate(text.split())]


@dataclass
class Exchange:
    user: str
    user_start: float
    reply: str = ""  # "" = the model said nothing
    reply_start: float | None = None
    problems: list[str] = field(default_factory=list)
    passages: list[Passage] = field(default_factory=list)
    selected: bool = True


def build(conversation_id: str, exchanges: list[Exchange], duration_s: float = 60.0,
          backend_version: str = "judge-v1",
          ) -> tuple[JudgedItem, ConversationJudgement, Transcript]:
    user_words: list[WordStamp] = []
    model_words: list[WordStamp] = []
    user_turns: list[Turn] = []
    model_turns: list[Turn] = []
    spans = []
    for n, ex in enumerate(exchanges):
        uw = timed(ex.user, ex.user_start)
        user_turns.append(Turn(side="user", index=n, start=uw[0].start, end=uw[-1].end,
                               text=ex.user, first_word=len(user_words),
                               last_word=len(user_words) + len(uw)))
        user_words += uw
        mw = timed(ex.reply, ex.reply_start) if ex.reply else []
        turn = None
        if mw:
            turn = len(model_turns)
            model_turns.append(Turn(side="model", index=turn, start=mw[0].start, end=mw[-1].end,
                                    text=ex.reply, first_word=len(model_words),
                                    last_word=len(model_words) + len(mw)))
            model_words += mw
        spans.append((uw, mw, turn))
    replies = []
    for n, (ex, (uw, mw, turn)) in enumerate(zip(exchanges, spans)):
        nxt = exchanges[n + 1].user_start if n + 1 < len(exchanges) else None
        scores = {axis: AxisScore(score=1.5 if axis in ex.problems else 4.5, rationale="test")
                  for axis in JUDGE_AXES}
        replies.append(ReplyJudgement(
            index=n, user_turn=n, model_turn=turn, request=ex.user, text=ex.reply,
            start=mw[0].start if mw else uw[-1].end, end=mw[-1].end if mw else uw[-1].end,
            user_end=uw[-1].end, next_user_start=nxt, scores=scores, problems=ex.problems,
            passages=ex.passages, judged=True, selected=ex.selected and bool(ex.problems)))
    transcript = Transcript(conversation_id=conversation_id, redacted=True, asr_model="test",
                            duration_s=duration_s, user_words=user_words, model_words=model_words)
    judgement = ConversationJudgement(
        conversation_id=conversation_id, model_version="moshi-test/1", backend="test-judge",
        backend_version=backend_version, user_turns=user_turns, model_turns=model_turns,
        replies=replies, events=[])
    item = JudgedItem(
        conversation_id=conversation_id, user_pseudonym="pseudo-1", model_version="moshi-test/1",
        started_at="2026-01-01T00:00:00Z", duration_s=duration_s,
        transcript=ObjectRef(key=Keys.transcript(conversation_id)),
        model_audio=ObjectRef(key=Keys.conversation_audio(conversation_id)),
        metadata=ObjectRef(key=Keys.conversation_metadata(conversation_id)),
        model_tokens=ObjectRef(key=Keys.conversation_tokens(conversation_id)),
        redactions={}, judgement=ObjectRef(key=Keys.judgement(conversation_id, backend_version)),
        replies=len(replies), problems={},
        selected=[r.index for r in replies if r.selected], judge_failures=0)
    return item, judgement, transcript
