"""One pair's resynthesis on real speech (piper), without the store: fitting, placement, tracks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from components.common.config import Config
from components.common.stagekit import ItemFailure
from components.contract import MODEL_SAMPLE_RATE as RATE
from components.resynthesize.fakes import FakeValues
from components.resynthesize.logic import MUTE_TAIL_S, PairAudio, PairInputs, resynthesize_pair
from components.resynthesize.timeline import fit_to_span
from components.speech.backends import TtsBackend, make_tts
from tests.components.resynthesize.conftest import CID, Conversation, planned, side

FIT_TOLERANCE = 0.15


@pytest.fixture(scope="module")
def cfg() -> Config:
    return Config()


@pytest.fixture(scope="module")
def voices(cfg: Config) -> tuple[TtsBackend, TtsBackend]:
    return make_tts(cfg, "user"), make_tts(cfg, "model")


@pytest.fixture(scope="module")
def results(cfg: Config, conversation: Conversation, voices) -> dict[str, PairAudio]:
    inputs = PairInputs(conversation.transcript, conversation.judgement, conversation.model_audio)
    return {k: resynthesize_pair(cfg, pair, inputs, *voices) for k, pair in conversation.pairs.items()}


def _rms(track: np.ndarray, start: float, end: float) -> float:
    part = track[int(start * RATE):int(end * RATE)]
    return float(np.sqrt(np.mean(part ** 2))) if len(part) else 0.0


def test_a_fitted_turn_lands_on_its_original_span(voices) -> None:
    user, _ = voices
    tokens = [(w, w) for w in "How much does the Travel Pass cost in Europe?".split()]
    natural = fit_to_span(user, tokens, 5.0, 5.0, rate=RATE, fit=False)
    span = natural.end - natural.start
    for stretch in (0.8, 1.0, 1.3):  # originals faster and slower than the voice
        clip = fit_to_span(user, tokens, 5.0, 5.0 + stretch * span, rate=RATE)
        assert clip.start == pytest.approx(5.0, abs=1e-3)
        assert clip.end == pytest.approx(5.0 + stretch * span, abs=FIT_TOLERANCE)
    assert fit_to_span(user, tokens, 5.0, 5.0 + 1.3 * span, rate=RATE).length_scale > 1.0


def test_every_user_turn_is_fitted_within_tolerance(results: dict[str, PairAudio]) -> None:
    record = results["C"].record  # its horizon covers all three user turns
    assert [t["turn"] for t in record.user_turns] == [0, 1, 2]
    for turn in record.user_turns:
        assert turn["fitted_start"] == pytest.approx(turn["start"], abs=1e-3)
        assert turn["fitted_end"] == pytest.approx(turn["end"], abs=FIT_TOLERANCE), turn
    assert max(results["C"].fit_errors) <= FIT_TOLERANCE


def test_user_track_is_tts_speech_on_the_original_spans(conversation: Conversation,
                                                        results: dict[str, PairAudio]) -> None:
    user = results["C"].user
    for turn in conversation.judgement.user_turns:
        assert _rms(user, turn.start + 0.1, turn.end - 0.1) > 0.03
    gap = (conversation.judgement.user_turns[0].end + 0.3, conversation.judgement.user_turns[1].start - 0.3)
    assert _rms(user, *gap) < 1e-4  # silence where nobody on the user side spoke


def test_chosen_starts_after_the_measured_user_end(conversation: Conversation,
                                                   results: dict[str, PairAudio]) -> None:
    for kind, result in results.items():
        pair = conversation.pairs[kind]
        placed = result.pair.chosen
        gap = max(0.0, pair.chosen.start - pair.user_end)
        assert placed.start >= pair.chosen.start - 1e-6, kind
        assert placed.start >= result.record.user_speech_end + gap - 1e-3, kind
        fitted = next(t for t in result.record.user_turns if t["turn"] == pair.user_turn)
        assert result.record.user_speech_end == pytest.approx(fitted["fitted_end"])
        assert result.record.chosen == placed
        assert placed.words[0].start == pytest.approx(placed.start)
        assert all(a.start <= b.start for a, b in zip(placed.words, placed.words[1:]))


def test_interruption_pair_moves_the_models_own_audio(conversation: Conversation,
                                                      results: dict[str, PairAudio]) -> None:
    pair, result = conversation.pairs["B"], results["B"]
    assert [w.word for w in result.pair.chosen.words] == [w.word for w in pair.rejected.words]
    shift = result.pair.chosen.start - pair.rejected.start
    assert shift > 0.9  # after the user's end, not over it
    logged = conversation.model_audio
    # chosen track: the reply's audio at its new place, silence where it was (before it moved)
    assert _rms(result.chosen_model, pair.rejected.start, result.pair.chosen.start - 0.05) < 1e-4
    a = int(round((pair.rejected.start + 0.2) * RATE))
    b = a + int(0.5 * RATE)
    moved = result.chosen_model[a + int(round(shift * RATE)) - 2:b + int(round(shift * RATE)) + 2]
    best = max(float(np.dot(moved[k:k + b - a], logged[a:b])) for k in range(5))
    assert best == pytest.approx(float(np.dot(logged[a:b], logged[a:b])), rel=1e-3)
    # rejected track: the logged channel as is
    assert np.array_equal(result.rejected_model[:len(logged)], logged[:len(result.rejected_model)])
    # the moved reply runs past the next user turn: said so, not hidden
    assert result.pair.provenance["resynthesis"]["chosen_overrun_s"] > 0


def test_content_pair_speaks_fake_values_never_placeholders(conversation: Conversation,
                                                            results: dict[str, PairAudio]) -> None:
    result = results["A"]
    for side in (result.pair.chosen, result.pair.rejected):
        assert "[" not in side.text and all("[" not in w.word for w in side.words)
    fakes = FakeValues(Config().resynthesize.seed, CID)
    words = conversation.transcript.user_words[:conversation.judgement.user_turns[0].last_word]
    said = {t[0].rstrip(".,") for group in fakes.tokens([w.word for w in words], "user", 0)
            for t in group}
    # the model's echo and the rewrite say the number / name the user said
    assert any(w.word.rstrip(".,") in said and w.word[0].isdigit() for w in result.pair.chosen.words)
    assert any(w.word in said and w.word[0].isdigit() for w in result.pair.rejected.words)
    assert result.record.fake_values["[PHONE]"] >= 3 and result.record.fake_values["[PERSON]"] >= 2
    # the rejected reply's logged span is silent on the chosen side, the rewrite is heard
    pair = conversation.pairs["A"]
    placed = result.pair.chosen
    assert _rms(result.chosen_model, max(placed.end, pair.rejected.start) + 0.2,
                pair.rejected.end) < 1e-4 or placed.end >= pair.rejected.end
    assert _rms(result.chosen_model, placed.start, placed.end) > 0.03


def test_silence_pair_keeps_an_empty_rejected_side(conversation: Conversation,
                                                  results: dict[str, PairAudio]) -> None:
    result = results["C"]
    placed, rejected = result.pair.chosen, result.pair.rejected
    assert rejected.words == [] and rejected.text == "" and rejected.source == "none"
    assert (rejected.start, rejected.end) == (placed.start, placed.end)
    assert np.array_equal(result.rejected_model[:len(conversation.model_audio)],
                          conversation.model_audio[:len(result.rejected_model)])
    n = int(round(result.record.duration_s * RATE))
    assert len(result.user) == len(result.chosen_model) == len(result.rejected_model) == n
    assert round(result.record.duration_s / 0.08, 6) == int(round(result.record.duration_s / 0.08))


def test_a_reply_past_the_conversation_end_extends_the_timeline(
        cfg: Config, conversation: Conversation, voices) -> None:
    pair = conversation.pairs["C"]
    late = conversation.transcript.duration_s - 0.3
    chosen = side(planned(pair.chosen.text, late), "composed")
    pair = pair.model_copy(update={"chosen": chosen, "rejected": pair.rejected.model_copy(
        update={"start": chosen.start, "end": chosen.end})})
    inputs = PairInputs(conversation.transcript, conversation.judgement, conversation.model_audio)
    result = resynthesize_pair(cfg, pair, inputs, *voices)
    assert result.pair.chosen.start == pytest.approx(late)
    assert result.record.duration_s >= result.pair.chosen.end + MUTE_TAIL_S - 1e-6
    assert result.record.duration_s > conversation.transcript.duration_s + 1.0  # extended
    assert _rms(result.chosen_model, late, result.pair.chosen.end) > 0.03


def test_horizon_leaves_later_turns_out(results: dict[str, PairAudio]) -> None:
    # pair A ends in the middle of the conversation: the last user turn is not synthesised
    assert [t["turn"] for t in results["A"].record.user_turns] == [0, 1]


def test_rerun_is_identical(cfg: Config, conversation: Conversation, voices,
                            results: dict[str, PairAudio]) -> None:
    inputs = PairInputs(conversation.transcript, conversation.judgement, conversation.model_audio)
    again = resynthesize_pair(cfg, conversation.pairs["A"], inputs, *voices)
    assert np.array_equal(again.user, results["A"].user)
    assert np.array_equal(again.chosen_model, results["A"].chosen_model)
    assert again.record == results["A"].record


def test_rejected_side_resynthesized_control(conversation: Conversation, voices) -> None:
    cfg = Config()
    cfg.resynthesize.rejected_audio = "resynthesized"
    inputs = PairInputs(conversation.transcript, conversation.judgement, conversation.model_audio)
    pair = conversation.pairs["A"]
    result = resynthesize_pair(cfg, pair, inputs, *voices)
    rejected = result.pair.rejected
    assert result.record.rejected_audio == "resynthesized"
    assert rejected.start == pytest.approx(pair.rejected.start, abs=1e-3)
    assert rejected.end == pytest.approx(pair.rejected.end, abs=FIT_TOLERANCE)
    span = slice(int(pair.rejected.start * RATE), int(pair.rejected.end * RATE))
    assert not np.allclose(result.rejected_model[span], conversation.model_audio[span])
    assert _rms(result.rejected_model, pair.rejected.start, pair.rejected.end) > 0.03
    assert "[" not in rejected.text


def test_bad_inputs_are_clear_item_errors(cfg: Config, conversation: Conversation, voices) -> None:
    short = PairInputs(conversation.transcript, conversation.judgement,
                       conversation.model_audio[: int(10.0 * RATE)])
    with pytest.raises(ItemFailure) as err:
        resynthesize_pair(cfg, conversation.pairs["A"], short, *voices)
    assert err.value.code == "audio-shorter-than-alignments"

    turns = [t.model_copy(update={"last_word": 999}) if t.index == 1 else t
             for t in conversation.judgement.user_turns]
    broken = PairInputs(conversation.transcript,
                        conversation.judgement.model_copy(update={"user_turns": turns}),
                        conversation.model_audio)
    with pytest.raises(ItemFailure) as err:
        resynthesize_pair(cfg, conversation.pairs["A"], broken, *voices)
    assert err.value.code == "bad-judgement"


def test_turns_before_the_kept_context_are_not_spoken(conversation: Conversation, voices) -> None:
    cfg = Config()
    cfg.tokenize.context_frames = 16  # 1.28 s: + the 10-s margin, turn 0 (ends at ~7.4 s) is out
    inputs = PairInputs(conversation.transcript, conversation.judgement, conversation.model_audio)
    result = resynthesize_pair(cfg, conversation.pairs["C"], inputs, *voices)
    assert [t["turn"] for t in result.record.user_turns] == [1, 2]
    turn0 = conversation.judgement.user_turns[0]
    assert _rms(result.user, turn0.start, turn0.end) == 0.0


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="Debian's espeak-ng is not installed (make system-deps)")
def test_the_espeak_fallback_resynthesizes_a_pair(conversation: Conversation) -> None:
    cfg = Config()
    cfg.resynthesize.user_tts = cfg.resynthesize.model_tts = "espeak"
    inputs = PairInputs(conversation.transcript, conversation.judgement, conversation.model_audio)
    result = resynthesize_pair(cfg, conversation.pairs["A"], inputs,
                               make_tts(cfg, "user"), make_tts(cfg, "model"))
    assert result.record.tts_user.startswith("espeak:") and result.record.tts_model.startswith("espeak:")
    for turn in result.record.user_turns:
        assert turn["fitted_end"] == pytest.approx(turn["end"], abs=FIT_TOLERANCE)
    assert result.pair.chosen.start >= result.record.user_speech_end
    assert _rms(result.chosen_model, result.pair.chosen.start, result.pair.chosen.end) > 0.03
