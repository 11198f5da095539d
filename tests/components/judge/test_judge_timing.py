"""Timing detectors on hand-built transcripts: turns, replies, backchannels, events, bad input."""

from __future__ import annotations

import pytest

from components.common.config import load_config
from components.common.stagekit import ItemFailure
from components.contract import Transcript, WordStamp
from components.judge.timing import TimingSettings, check_transcript, segment

S = TimingSettings.from_config(load_config("ci").judge)  # tolerance 0.2, threshold 2.5, gap 1.5


def words(spec: str, start: float, step: float = 0.3, dur: float = 0.25) -> list[WordStamp]:
    """'a b c' said from `start`, one word every `step` seconds."""
    return [WordStamp(word=w, start=round(start + i * step, 3), end=round(start + i * step + dur, 3))
            for i, w in enumerate(spec.split())]


def transcript(user: list[WordStamp], model: list[WordStamp], duration: float = 30.0) -> Transcript:
    return Transcript(conversation_id="c1", redacted=True, asr_model="test", duration_s=duration,
                      user_words=user, model_words=model)


def seg(user: list[WordStamp], model: list[WordStamp], duration: float = 30.0):
    t = transcript(user, model, duration)
    check_transcript(t)
    return segment(t, S)


def kinds(s) -> list[tuple[str, int]]:
    return [(e.kind, e.user_turn) for e in s.events]


def test_clean_exchange_has_no_events_and_a_greeting():
    greeting = words("hi this is nova", 0.2)
    user = words("how much is flex", 2.0) + words("thanks bye", 8.0)  # ends 2.95 / 8.55
    model = words("thirty dollars a month", 3.4) + words("goodbye", 9.0)
    s = seg(user, greeting + model)
    assert [t.text for t in s.user_turns] == ["how much is flex", "thanks bye"]
    assert s.replies[0].user_turn is None and s.replies[0].text == "hi this is nova"
    assert s.replies[0].timing_scores is None and s.replies[0].events == []
    assert [r.text for r in s.replies[1:]] == ["thirty dollars a month", "goodbye"]
    assert s.events == []
    assert s.replies[1].timing_scores["interruption"].score == 5
    assert s.replies[1].timing_scores["unresponsiveness"].score == 5
    assert [t.text for t in s.model_turns] == ["hi this is nova", "thirty dollars a month", "goodbye"]
    assert s.replies[1].model_turn == 1


def test_interruption_beyond_tolerance_is_an_event_within_is_not():
    user = words("how much is the unlimited plan", 1.0)  # ends 1.0 + 5*0.3 + 0.25 = 2.75
    beyond = seg(user, words("it is sixty five", 2.3))  # starts 0.45 s before the end
    assert kinds(beyond) == [("interruption", 0)]
    ev = beyond.events[0]
    assert ev.seconds == pytest.approx(0.45) and ev.model_start == pytest.approx(2.3)
    assert ev.user_end == pytest.approx(2.75) and ev.reply == 0
    assert beyond.replies[0].timing_scores["interruption"].score == 2
    within = seg(user, words("it is sixty five", 2.65))  # 0.1 s early: within 0.2 s
    assert within.events == []
    assert within.replies[0].timing_scores["interruption"].score == 4
    severe = seg(user, words("it is sixty five", 1.3))  # 1.45 s of overlap
    assert kinds(severe) == [("interruption", 0)]
    assert severe.replies[0].timing_scores["interruption"].score == 1


def test_backchannel_during_user_speech_is_an_exception():
    user = words("so i was wondering um how much", 1.0) + words("the flex plan costs", 3.6)
    # "Mm-hm." in the user's pause (2.9..3.6 is < gap 1.5: the same turn), then a proper reply.
    model = [WordStamp(word="Mm-hm.", start=3.0, end=3.3)] + words("thirty dollars", 5.2)
    s = seg(user, model)
    assert len(s.user_turns) == 1
    assert s.events == []
    assert s.replies[0].text == "thirty dollars"
    assert len(s.replies[0].backchannels) == 1 and s.backchannel_turns == s.replies[0].backchannels
    assert s.model_turns[s.backchannel_turns[0]].text == "Mm-hm."
    # multiword, case- and punctuation-insensitive
    model2 = [WordStamp(word="I", start=3.0, end=3.1), WordStamp(word="See.", start=3.1, end=3.3)]
    s2 = seg(user, model2 + words("thirty dollars", 5.2))
    assert s2.events == [] and s2.replies[0].text == "thirty dollars"


def test_backchannel_running_into_an_answer_is_the_reply_start():
    user = words("how much is the unlimited plan", 1.0)  # ends 2.75
    model = [WordStamp(word="Yes,", start=2.3, end=2.5)] + words("sixty five dollars", 2.55)
    s = seg(user, model)
    assert kinds(s) == [("interruption", 0)]
    assert s.replies[0].text.startswith("Yes,")
    assert s.events[0].model_start == pytest.approx(2.3)


def test_non_backchannel_word_during_user_speech_is_an_interruption():
    user = words("so i was wondering um how much", 1.0) + words("the flex plan costs", 3.6)
    model = [WordStamp(word="banana", start=3.0, end=3.3)] + words("thirty dollars", 5.2)
    s = seg(user, model)
    assert kinds(s) == [("interruption", 0)]
    assert s.events[0].model_start == pytest.approx(3.0)


def test_unanswered_turn_is_unresponsive():
    user = words("how much is flex", 1.0) + words("hello are you there", 6.0)  # ends 2.15
    s = seg(user, words("thirty dollars", 6.0 + 1.2))
    assert kinds(s) == [("unresponsiveness", 0)]
    ev = s.events[0]
    assert ev.model_start is None and ev.reply == 0
    assert ev.seconds == pytest.approx(6.0 - 2.15)
    r = s.replies[0]
    assert r.text == "" and r.model_turn is None and r.latency is None
    assert r.start == pytest.approx(2.15) and r.timing_scores["unresponsiveness"].score == 1
    assert s.replies[1].events == []  # the nudge got an answer


def test_late_reply_is_unresponsive():
    user = words("how much is flex", 1.0)  # ends 2.15
    s = seg(user, words("thirty dollars", 5.0))
    assert kinds(s) == [("unresponsiveness", 0)]
    assert s.events[0].seconds == pytest.approx(2.85) and s.events[0].model_start == 5.0
    assert s.replies[0].timing_scores["unresponsiveness"].score == 2
    slowish = seg(user, words("thirty dollars", 3.6))  # 1.45 s: slow, not a problem
    assert slowish.events == [] and slowish.replies[0].timing_scores["unresponsiveness"].score == 4


def test_no_event_when_the_user_goes_on_or_the_conversation_ends_within_the_threshold():
    # The user speaks again 1.75 s after its end (a new turn: gap > 1.5): no chance to answer.
    user = words("how much is flex", 1.0) + words("and essentials", 3.9)
    s = seg(user, words("forty five", 5.0))
    assert s.events == []
    assert s.replies[0].text == "" and s.replies[0].timing_scores["unresponsiveness"].score == 5
    # The conversation ends 1 s after the user's last word.
    ending = seg(words("okay bye", 1.0), [], duration=2.55)
    assert ending.events == []
    # ... but 4 s of silence before the end is unresponsive.
    ended_late = seg(words("okay bye", 1.0), [], duration=5.6)
    assert kinds(ended_late) == [("unresponsiveness", 0)]


def test_barge_in_makes_the_continuing_reply_an_interruption_of_the_next_turn():
    user = words("how much is flex", 1.0) + words("wait and essentials", 4.0)  # 2nd ends 4.85; 1st 2.15
    model = words("thirty dollars a month with twelve gigs of data", 2.2)  # runs to ~4.85
    s = seg(user, model)
    assert s.replies[0].text == "thirty dollars a month with twelve"
    assert s.replies[1].text == "gigs of data"
    assert kinds(s) == [("interruption", 1)]


def test_quick_short_answer_splits_user_turns_with_a_short_gap():
    # Gap 1.2 s (< 1.5) between the user's questions, but the model answered inside it.
    user = words("how much is flex", 1.0) + words("and essentials", 3.15)  # 2.15 .. 3.15
    s = seg(user, words("thirty", 2.2), duration=5.0)
    assert len(s.user_turns) == 2 and s.events == []
    # A backchannel in the same gap does not split the turn.
    s2 = seg(user, [WordStamp(word="mm", start=2.2, end=2.4)], duration=5.0)
    assert len(s2.user_turns) == 1


def test_turn_segmentation_by_gap():
    user = words("a b", 0.0) + words("c d", 2.1) + words("e", 2.9)
    s = seg(user, [])
    assert [t.text for t in s.user_turns] == ["a b", "c d e"]
    assert [(t.first_word, t.last_word) for t in s.user_turns] == [(0, 2), (2, 5)]


@pytest.mark.parametrize("user,model,duration,code", [
    ([], words("hello", 0.0), 10.0, "empty-transcript"),
    (words("a b", 1.0)[::-1], [], 10.0, "bad-timestamps"),  # goes back in time
    ([WordStamp(word="a", start=1.0, end=2.0), WordStamp(word="b", start=1.5, end=2.5)], [], 10.0,
     "bad-timestamps"),  # overlap
    (words("a b", 1.0), [WordStamp(word="x", start=3.0, end=4.0),
                         WordStamp(word="y", start=3.5, end=4.5)], 10.0, "bad-timestamps"),
    (words("a b", 1.0), words("x y", 9.9), 10.0, "audio-shorter-than-alignments"),
    (words("a b", 11.0), [], 10.0, "audio-shorter-than-alignments"),
])
def test_bad_input_codes(user, model, duration, code):
    with pytest.raises(ItemFailure) as exc:
        check_transcript(transcript(user, model, duration))
    assert exc.value.code == code


def test_audio_duration_limits_too():
    t = transcript(words("a b", 1.0), words("x", 5.0), duration=10.0)
    check_transcript(t, audio_duration_s=5.3)  # within the slack
    with pytest.raises(ItemFailure) as exc:
        check_transcript(t, audio_duration_s=4.0)
    assert exc.value.code == "audio-shorter-than-alignments"


def test_touching_words_are_not_overlaps():
    user = [WordStamp(word="a", start=1.0, end=1.3), WordStamp(word="b", start=1.29, end=1.6)]
    check_transcript(transcript(user, []))
