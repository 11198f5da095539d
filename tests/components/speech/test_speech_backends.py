"""The TTS backends behind one interface: piper's length scale, espeak-ng, Kyutai's clear failure."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from components.common.config import Config
from components.speech.backends import (
    RESYNTH_USER_VOICE,
    describe,
    make_tts,
    speak_written,
)
from components.speech.espeak import EspeakSynthesizer, estimate_word_times, parse_streamed_wav
from components.speech.kyutai import KyutaiSynthesizer, checkpoint_info
from components.speech.tts import (
    MODEL_VOICE,
    USER_VOICE,
    PiperSynthesizer,
    TtsUnavailable,
)

TEXT = "Hi, I would like to know how much the Travel Pass costs in Europe."


def _span(speech) -> float:
    return speech.words[-1].end - speech.words[0].start


@pytest.fixture(scope="module")
def piper_user(tmp_path_factory) -> PiperSynthesizer:
    cfg = Config()
    cfg.resynthesize.cache_dir = str(tmp_path_factory.mktemp("tts"))
    return make_tts(cfg, "user")  # type: ignore[return-value]


def test_make_tts_picks_the_configured_backends() -> None:
    cfg = Config()
    user, model = make_tts(cfg, "user"), make_tts(cfg, "model")
    assert isinstance(user, PiperSynthesizer) and isinstance(model, PiperSynthesizer)
    # the user side speaks with a voice that is no user's: not the simulator's user voice
    assert user.settings == RESYNTH_USER_VOICE and user.settings != USER_VOICE
    assert model.settings == MODEL_VOICE  # the voice the embedded model speaks with
    assert describe(user).startswith("piper:") and describe(user) != describe(model)
    cfg.resynthesize.user_tts, cfg.resynthesize.model_tts = "espeak", "kyutai"
    assert isinstance(make_tts(cfg, "user"), EspeakSynthesizer)
    assert isinstance(make_tts(cfg, "model"), KyutaiSynthesizer)


def test_piper_length_scale_changes_duration_monotonically(piper_user: PiperSynthesizer) -> None:
    spans = {scale: _span(piper_user.speak(TEXT, length_scale=scale)) for scale in (0.7, 1.0, 1.4, 1.8)}
    assert spans[0.7] < spans[1.0] < spans[1.4] < spans[1.8]
    # measured: x0.7 -> ~x0.73, x1.8 -> ~x1.48 (not linear: pauses do not stretch)
    assert 0.65 < spans[0.7] / spans[1.0] < 0.85
    assert 1.3 < spans[1.8] / spans[1.0] < 1.65
    # every word keeps a time and the words stay in order
    speech = piper_user.speak(TEXT, length_scale=1.4)
    assert [w.word for w in speech.words] == TEXT.split()
    assert all(a.start <= b.start for a, b in zip(speech.words, speech.words[1:]))


def test_piper_scale_one_keeps_the_simulators_cache_keys(tmp_path) -> None:
    """The move out of the simulator and the new length_scale argument change no cached audio."""
    synth = PiperSynthesizer(USER_VOICE, tmp_path)
    assert synth.with_length_scale(1.0) is synth
    assert synth.with_length_scale(1.25).cache_key(TEXT) != synth.cache_key(TEXT)
    assert synth.with_length_scale(1.25).settings.length_scale == pytest.approx(1.25)
    assert synth.with_length_scale(1.25).settings.noise_seed == USER_VOICE.noise_seed


def test_speak_written_maps_spoken_words_back_to_written_tokens(piper_user: PiperSynthesizer) -> None:
    tokens = [("Call", "Call"), ("808-555-0137", "eight oh eight, five five five, oh one three seven"),
              ("today.", "today.")]
    speech = speak_written(piper_user, tokens)
    assert [w.word for w in speech.words] == ["Call", "808-555-0137", "today."]
    call, number, today = speech.words
    assert call.end <= number.start + 1e-6 and number.end <= today.start + 1e-6
    assert number.end - number.start > 1.5  # ten digits said, not one word


def test_espeak_stream_wav_parser_and_word_estimates() -> None:
    rate = 22050
    pcm = (np.sin(np.arange(rate) / 10) * 8000).astype("<i2")
    header = (b"RIFF" + b"\xff\xff\xff\x7f" + b"WAVE" + b"fmt " + (16).to_bytes(4, "little")
              + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
              + (2 * rate).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
              + b"data" + b"\xff\xff\xff\x7f")
    audio, got_rate = parse_streamed_wav(header + pcm.tobytes())
    assert got_rate == rate and len(audio) == rate
    with pytest.raises(ValueError):
        parse_streamed_wav(b"not a wav")
    # two voiced stretches with a pause: "one" gets the first, "three" (heavier) the second
    track = np.zeros(3 * rate, np.float32)
    track[rate // 10: rate // 2] = 0.5
    track[rate: 2 * rate] = 0.5
    spans = estimate_word_times(track, rate, ["one", "three"])
    assert spans[0][0] == pytest.approx(0.1, abs=0.02) and spans[1][1] == pytest.approx(2.0, abs=0.02)
    assert spans[0][1] <= spans[1][0]


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="Debian's espeak-ng is not installed (make system-deps)")
def test_espeak_speaks_with_word_times_and_length_scale() -> None:
    cfg = Config()
    cfg.resynthesize.user_tts = "espeak"
    tts = make_tts(cfg, "user")
    tts.check()
    speech = tts.speak(TEXT)
    assert speech.sample_rate == 22050 and speech.duration_s > 2.0
    assert float(np.abs(speech.audio).max()) == pytest.approx(0.8, abs=0.01)
    assert [w.word for w in speech.words] == TEXT.split()
    assert all(a.end <= b.start + 1e-6 for a, b in zip(speech.words, speech.words[1:]))
    slow = tts.speak(TEXT, length_scale=1.5)
    assert _span(slow) > 1.3 * _span(speech)
    assert np.array_equal(tts.speak(TEXT).audio, speech.audio)  # deterministic
    assert describe(tts).startswith("espeak:espeak-ng-")


def test_espeak_missing_binary_is_a_clear_error() -> None:
    tts = EspeakSynthesizer(binary="espeak-ng-not-installed")
    with pytest.raises(TtsUnavailable, match="not installed"):
        tts.speak("hello")


def test_kyutai_without_weights_fails_clearly(tmp_path) -> None:
    with pytest.raises(TtsUnavailable, match="not a folder, an s3:// URI or a hub id"):
        checkpoint_info("/nonexistent/kyutai-tts")
    with pytest.raises(TtsUnavailable, match="no config.json"):
        checkpoint_info(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"moshi_name": "lm.safetensors"}))
    with pytest.raises(TtsUnavailable, match="lacks .*lm.safetensors"):
        checkpoint_info(str(tmp_path))
    cfg = Config()
    cfg.resynthesize.model_tts = "kyutai"
    with pytest.raises(TtsUnavailable, match="kyutai_voice is empty"):
        make_tts(cfg, "model").check()


def test_kyutai_hub_weights_absent_offline(monkeypatch) -> None:
    """The default source (a hub id) on a machine without the weights: one clear error (the hub
    is made offline so the test does not wait for network retries)."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    cfg = Config()
    cfg.resynthesize.model_tts = "kyutai"
    cfg.resynthesize.kyutai_voice = "voices/served-model.safetensors"
    tts = make_tts(cfg, "model")
    with pytest.raises(TtsUnavailable, match="kyutai/tts-1.6b-en_fr.*not available here"):
        tts.check()
