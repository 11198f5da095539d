"""The bootstrap corpus: real rendered conversations (piper, TTS-cached), the embedded codec and
the world tokenizer; a handful of conversations so it stays fast."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import math
from pathlib import Path

import numpy as np
import pytest

from components.bootstrap.data import (
    BATCH_NAME,
    Corpus,
    aligned_user_channel,
    bootstrap_simulate_config,
    build_corpus,
    render_channels,
    split_of,
)
from components.common.audio import resample
from components.common.config import Config, load_config
from components.contract import MODEL_SAMPLE_RATE
from components.simulate import world as W
from components.simulate.generate import ConversationBuilder, config_fingerprint
from components.speech.tts import MODEL_VOICE, USER_VOICE, PiperSynthesizer
from components.streams.codec import load_codec
from components.streams.interleave import moshi_delays, start_frame, words_from_text_stream
from components.streams.tokenizer import EPAD_ID, PAD_ID, load_tokenizer

N = 3


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    cache = tmp_path_factory.mktemp("bootstrap-corpus")
    return load_config("ci", overrides=[f"model.cache_dir={cache}/lm", f"streams.cache_dir={cache}/streams",
                                        f"bootstrap.conversations={N}", "bootstrap.drill_gains=[]"])


@pytest.fixture(scope="module")
def corpus(cfg: Config) -> Corpus:
    return build_corpus(cfg, load_tokenizer(cfg), load_codec(cfg), progress=False)


def test_rows_shapes_and_token_ranges(cfg: Config, corpus: Corpus) -> None:
    q = cfg.streams.num_codebooks
    assert len(corpus.codes) == N and corpus.stats["built"] == N
    assert corpus.layout.rows == 1 + 2 * q and corpus.layout.delays == moshi_delays(q)
    for codes, info in zip(corpus.codes, corpus.info):
        assert codes.dtype == np.int64 and codes.shape == (1 + 2 * q, info["n_frames"])
        expected = info["duration_s"] * MODEL_SAMPLE_RATE / 1920
        assert abs(codes.shape[1] - math.ceil(expected)) <= 1
        assert codes[0].min() >= 0 and codes[0].max() < corpus.layout.text_card
        assert codes[1:].min() >= 0 and codes[1:].max() < corpus.layout.card
        assert info["split"] == split_of(info["index"])
        # mostly PAD (the model is silent most of the time), some EPAD, some words
        text = codes[0]
        assert 0.3 < np.mean(text == PAD_ID) < 0.95 and (text == EPAD_ID).any()


def test_text_stream_carries_the_model_words(cfg: Config, corpus: Corpus) -> None:
    tokenizer = load_tokenizer(cfg)
    for codes, info in zip(corpus.codes, corpus.info):
        words = words_from_text_stream(codes[0], tokenizer)
        expected = info["model_words"]
        assert [w.word for w in words] == [w for w, _, _ in expected]
        frames = [round(w.start * 12.5) for w in words]
        wanted = [start_frame(s) for _, s, _ in expected]
        assert all(f >= w for f, w in zip(frames, wanted))  # spill-over only ever delays
        assert np.mean([f == w for f, w in zip(frames, wanted)]) > 0.9


def test_audio_rows_are_each_channel_encoded_once(cfg: Config, corpus: Corpus) -> None:
    """Model rows = the codec's codes of the model channel, user rows = of the user channel,
    from the same rendering (re-rendered here: the builder is deterministic, TTS cached)."""
    sim = bootstrap_simulate_config(cfg)
    user_tts = PiperSynthesizer(USER_VOICE, sim.tts_cache_dir)
    builder = ConversationBuilder(sim, user_tts, PiperSynthesizer(MODEL_VOICE, sim.tts_cache_dir))
    conv = builder.build(seed=sim.seed, index=0, batch=BATCH_NAME, fingerprint=config_fingerprint(sim),
                         persona=W.make_persona(sim.seed, 0), consent=True)
    assert conv.groundtruth.conversation_id == corpus.info[0]["conversation_id"]
    model_audio, user_audio, shifts = render_channels(conv, user_tts, sim.seed, sim.noise_floor_dbfs)
    codec = load_codec(cfg)
    q = codec.num_codebooks
    model = codec.encode(model_audio, MODEL_SAMPLE_RATE)
    user = codec.encode(user_audio, MODEL_SAMPLE_RATE)
    codes = corpus.codes[0]
    assert np.array_equal(codes[1 : 1 + q], model[:, : codes.shape[1]])
    assert np.array_equal(codes[1 + q :], user[:, : codes.shape[1]])
    assert np.mean(codes[1 : 1 + q] == codes[1 + q :]) < 0.5  # the two sides differ
    # the user channel is the builder's, each utterance moved onto the frame grid (<= 40 ms)
    assert all(abs(d) <= 0.04 + 1e-9 for d in shifts) and len(shifts) == len(conv.groundtruth.user_turns)
    builder_user = resample(conv.user_audio, conv.sample_rate, MODEL_SAMPLE_RATE)
    assert len(builder_user) == len(user_audio)
    assert abs(np.sqrt(np.mean(builder_user**2)) / np.sqrt(np.mean(user_audio**2)) - 1) < 0.5


def test_utterances_start_on_the_frame_grid(cfg: Config) -> None:
    """The same utterance placed at two off-grid times gives the same codes once aligned."""
    sim = bootstrap_simulate_config(cfg)
    user_tts = PiperSynthesizer(USER_VOICE, sim.tts_cache_dir)
    codec = load_codec(cfg)
    speech = user_tts.speak("How much is the Unlimited Plus plan?")  # the clip's lead-in:
    lead = speech.words[0].start

    text = "How much is the Unlimited Plus plan?"
    codes = []
    for start in (1.013, 1.051):  # both round to frame 13
        audio, shifts = aligned_user_channel([([text], start + lead)], user_tts, 1, 0, 24000 * 5,
                                             sim.noise_floor_dbfs)
        assert abs(shifts[0]) <= 0.04
        codes.append(codec.encode(audio, MODEL_SAMPLE_RATE))
    assert np.array_equal(codes[0], codes[1])


def test_corpus_is_cached_and_extended_by_shard(cfg: Config, corpus: Corpus) -> None:
    tokenizer, codec = load_tokenizer(cfg), load_codec(cfg)
    again = build_corpus(cfg, tokenizer, codec, progress=False)
    assert again.stats["built"] == 0 and again.key == corpus.key
    assert all(np.array_equal(a, b) for a, b in zip(again.codes, corpus.codes))
    fewer = build_corpus(cfg, tokenizer, codec, n=2, progress=False)
    assert fewer.stats["built"] == 0 and len(fewer.codes) == 2
    more = build_corpus(cfg, tokenizer, codec, n=N + 1, progress=False)
    assert more.stats["built"] == 1 and len(more.codes) == N + 1
    assert all(np.array_equal(a, b) for a, b in zip(more.codes, corpus.codes))
    assert Path(corpus.path, "summary-4.json").exists()


def test_stats_record_the_realised_habits(corpus: Corpus) -> None:
    realised = corpus.stats["realised"]
    assert realised["replies"] == sum(t["kind"] == "reply" for x in corpus.info for t in x["model_turns"])
    assert set(corpus.stats["targets"]) == {"wrong_fact", "unsafe_compliance", "over_refusal",
                                            "interruption", "silence"}
    assert corpus.stats["seconds_per_built_conversation"] > 0


def test_drill_sessions_place_each_clip_on_the_grid(cfg: Config) -> None:
    """A few drill exchanges: user rows hold the request's codes where the user speaks, model rows
    the reply's, the text stream the reply's words; encoded clips equal in-place encoding."""
    from components.bootstrap.drills import LEAD_FRAMES, build_sessions, plan

    tokenizer, codec = load_tokenizer(cfg), load_codec(cfg)
    sim = bootstrap_simulate_config(cfg)
    user_tts = PiperSynthesizer(USER_VOICE, sim.tts_cache_dir)
    model_tts = PiperSynthesizer(MODEL_VOICE, sim.tts_cache_dir)
    exchanges = plan(cfg.model_copy(update={"bootstrap": cfg.bootstrap.model_copy(update={"drill_gains": [0.85]})}))[:4]
    rows, infos = build_sessions(cfg, exchanges, user_tts, model_tts,
                                 lambda waves: [codec.encode(w, MODEL_SAMPLE_RATE) for w in waves],
                                 tokenizer, codec.num_codebooks)
    q = codec.num_codebooks
    turns = [t for x in infos for t in x["model_turns"]]
    assert [(t["item_id"], t["variant"]) for t in turns] == [(e.item_id, e.variant) for e in exchanges]
    for codes, x in zip(rows, infos):
        assert codes.shape == (1 + 2 * q, x["n_frames"]) and x["drill"] and x["split"] == "train"
        words = words_from_text_stream(codes[0], tokenizer)
        assert [w.word for w in words] == [w for w, _, _ in x["model_words"]]
        silent = codes[1 + q :, 0]  # a session starts with the noise floor on the user side
        assert (codes[1 + q :, :3] == silent[:, None]).all()
    assert LEAD_FRAMES / 12.5 > 1.0  # clips are encoded after more than the codec's context
