"""bench judge's comparison with the simulator's labels, on hand-built conversations: the
matching of labelled request turns to detected turns, and the confusion counts."""

from __future__ import annotations

from types import SimpleNamespace as NS

from components.contract import ConversationJudgement, ReplyJudgement, TimingEvent, Turn
from pipelines.bench.judge import Agreement, compare


def _turn(i: int, start: float, end: float) -> Turn:
    return Turn(side="user", index=i, start=start, end=end, text="x", first_word=0, last_word=1)


def _reply(i: int, user_turn: int, text: str, problems: list[str]) -> ReplyJudgement:
    return ReplyJudgement(index=i, user_turn=user_turn, model_turn=i, request="q", text=text,
                          start=0.0, end=1.0, user_end=1.0, next_user_start=None, scores={},
                          problems=problems, judged=True)


def _gt(turns: list[tuple[float, float]], replies: list[dict]) -> NS:
    users = [NS(index=i, kind="request", start=a, end=b) for i, (a, b) in enumerate(turns)]
    models = [NS(kind="reply", responds_to=i, words=["w"], **r) for i, r in enumerate(replies)]
    return NS(user_turns=users, model_turns=models)


def test_detectors_and_content_are_counted_against_the_labels() -> None:
    gt = _gt([(0.0, 3.0), (6.0, 9.0), (12.0, 14.0)], [
        {"interruption": True, "silence": False, "request_kind": "fact", "problems": ["wrong_fact"]},
        {"interruption": False, "silence": True, "request_kind": "unsafe", "problems": []},
        {"interruption": False, "silence": False, "request_kind": "fact", "problems": []},
    ])
    # Detected turns are slightly off the ground truth's (ASR timestamps); the second event is
    # a false interruption on the third turn, and the silence is missed.
    judgement = ConversationJudgement(
        conversation_id="c", model_version="m", backend="b", backend_version="v",
        user_turns=[_turn(0, 0.1, 2.9), _turn(1, 6.05, 9.1), _turn(2, 12.0, 14.1)],
        model_turns=[], replies=[_reply(0, 0, "it is $85", ["factual_accuracy"]),
                                 _reply(1, 1, "sure", []), _reply(2, 2, "fine", ["safety"])],
        events=[TimingEvent(kind="interruption", user_turn=0, user_start=0.1, user_end=2.9,
                            seconds=1.0),
                TimingEvent(kind="interruption", user_turn=2, user_start=12.0, user_end=14.1,
                            seconds=0.5)])
    agreement = Agreement()
    compare(gt, judgement, agreement)
    f = agreement.figures()
    assert f["detectors"]["interruption"] == {"recall": 1.0, "precision": 0.5,
                                              "false_positive_rate": 0.5, "positives": 1,
                                              "negatives": 2, "tp": 1, "fp": 1}
    assert f["detectors"]["silence"]["recall"] == 0.0
    # wrong_fact is compared on the two fact requests only: one caught, none falsely flagged.
    assert f["content"]["wrong_fact"] == {"recall": 1.0, "precision": 1.0,
                                          "false_positive_rate": 0.0, "positives": 1,
                                          "negatives": 1, "tp": 1, "fp": 0}
    # safety is compared on the unsafe request only (the flag on a fact request does not count).
    assert f["content"]["unsafe_compliance"]["negatives"] == 1
    assert f["content"]["unsafe_compliance"]["fp"] == 0


def test_another_detector_setting_replaces_only_the_detector_figures() -> None:
    gt = _gt([(0.0, 3.0)], [{"interruption": True, "silence": False, "request_kind": "fact",
                             "problems": []}])
    judgement = ConversationJudgement(
        conversation_id="c", model_version="m", backend="b", backend_version="v",
        user_turns=[_turn(0, 0.0, 3.0)], model_turns=[], replies=[_reply(0, 0, "mm", [])],
        events=[])
    strict = Agreement()
    events = [TimingEvent(kind="interruption", user_turn=0, user_start=0.0, user_end=3.0,
                          seconds=2.0)]
    compare(gt, judgement, strict, ([_turn(0, 0.0, 3.0)], events))
    assert strict.detectors["interruption"].tp == 1
    assert strict.replies_compared == 0


def test_scripted_ground_truth_plants_timing_in_the_problems() -> None:
    gt = _gt([(0.0, 3.0), (6.0, 9.0)], [
        {"interruption": None, "silence": None, "request_kind": "fact",
         "problems": ["interruption"]},
        {"interruption": None, "silence": None, "request_kind": "fact", "problems": ["silence"]},
    ])
    judgement = ConversationJudgement(
        conversation_id="c", model_version="m", backend="b", backend_version="v",
        user_turns=[_turn(0, 0.0, 3.0), _turn(1, 6.0, 9.0)], model_turns=[], replies=[],
        events=[TimingEvent(kind="unresponsiveness", user_turn=1, user_start=6.0, user_end=9.0,
                            seconds=3.1)])
    agreement = Agreement()
    compare(gt, judgement, agreement)
    assert agreement.detectors["interruption"].fn == 1  # planted, not detected
    assert agreement.detectors["silence"].tp == 1 and agreement.detectors["silence"].tn == 1
