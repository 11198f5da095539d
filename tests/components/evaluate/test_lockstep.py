"""Lockstep waves: batch 1 gives exactly DuplexSession's tokens; slots of different lengths each
get their own frames; a failing driver stops the wave instead of hanging it."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch

from components.common.config import PolicyConfig
from components.evaluate.lockstep import LockstepSessions, Wave
from components.model.checkpoint import LoadedModel, ModelIdentity
from components.model.spec import build_lm, lm_kwargs
from components.streams.codec import embedded_codec
from components.streams.interleave import StreamLayout
from serving.engine import FRAME_SIZE, DuplexSession

Q = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As evaluate_model serves (evaluate.threads = 1): small steps are fastest on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    codec = embedded_codec(Q)
    kwargs = lm_kwargs("tiny", StreamLayout(Q, 300, codec.card), 64)
    lm = build_lm(kwargs, seed=0).eval()
    identity = ModelIdentity(tokenizer_hash="spm-test", codec_hash=codec.hash, num_codebooks=Q,
                             size="tiny", weights_sha256="0" * 64)
    return LoadedModel(lm=lm, lm_kwargs=kwargs, tokenizer=None, codec=codec, identity=identity,
                       path=Path("."))


def audio(frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(frames * FRAME_SIZE)).astype(np.float32)


def driver(pcm: np.ndarray):
    def run(slot):
        return [slot.step(pcm[k * FRAME_SIZE : (k + 1) * FRAME_SIZE]).text_token
                for k in range(len(pcm) // FRAME_SIZE)]
    return run


def test_batch_of_one_matches_duplex_session(model):
    pcm = audio(25, 1)
    with DuplexSession(model, PolicyConfig(), seed=5) as session:
        for k in range(25):
            session.step(pcm[k * FRAME_SIZE : (k + 1) * FRAME_SIZE])
    expected = session.close()
    before = torch.get_rng_state()
    with LockstepSessions(model, PolicyConfig(), seed=5, batch=1) as sessions:
        wave = Wave(sessions)
        [texts] = wave.run([driver(pcm)])
    got = wave.slots[0].tokens()
    assert torch.equal(before, torch.get_rng_state())  # the caller's RNG is left alone
    assert texts == expected.text.tolist()
    assert np.array_equal(got.text, expected.text)
    assert np.array_equal(got.model_codes, expected.model_codes)
    assert np.array_equal(got.user_codes, expected.user_codes)


def test_slots_of_different_lengths_and_determinism(model):
    """Each slot gets exactly its own frames, and its user codes are the codec's encode of its
    own audio (the batched streaming Mimi keeps the conversations apart)."""
    lengths = [10, 30, 20]
    def run_wave():
        with LockstepSessions(model, PolicyConfig(), seed=3, batch=3) as sessions:
            wave = Wave(sessions)
            texts = wave.run([driver(audio(n, i)) for i, n in enumerate(lengths)])
            assert sessions.frames == max(lengths)
        return texts, [s.tokens() for s in wave.slots]
    texts, tokens = run_wave()
    assert [len(t) for t in texts] == lengths
    assert [t.n_frames for t in tokens] == lengths
    assert all(t.model_codes.shape == (Q, n) for t, n in zip(tokens, lengths))
    for i, (t, n) in enumerate(zip(tokens, lengths)):
        assert np.array_equal(t.user_codes, model.codec.encode(audio(n, i), 24000))
    again, _ = run_wave()
    assert again == texts  # same wave, same tokens


def test_a_failing_driver_stops_the_wave(model):
    def bad(slot):
        slot.step(np.zeros(FRAME_SIZE, np.float32))
        raise RuntimeError("user failed")
    with LockstepSessions(model, PolicyConfig(), seed=3, batch=2) as sessions:
        wave = Wave(sessions)
        with pytest.raises(RuntimeError, match="user failed"):
            wave.run([driver(audio(8, 0)), bad])
