"""serving/batcher.py: one LMGen and one streaming Mimi for every conversation, slots joined and
left with moshi's reset/exec masks. Batch 1 reproduces a DuplexSession bit for bit (same seed);
with greedy decoding a conversation's tokens do not depend on the others in the batch, however
they join, pause and leave (the masks isolate the slots); a slot's user codes are exactly a
per-connection stream encoder's and its audio a per-connection stream decoder's."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import threading

import numpy as np
import pytest

from components.common.config import PolicyConfig
from serving.batcher import BatchedLM, SlotsFull
from serving.engine import FRAME_SIZE, DuplexSession
from tests.serving.test_engine import tiny_model, user_audio

T = 20
GREEDY = PolicyConfig(temp=0.0, temp_text=0.0)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def frames_of(audio: np.ndarray) -> list[np.ndarray]:
    return [audio[k * FRAME_SIZE:(k + 1) * FRAME_SIZE] for k in range(len(audio) // FRAME_SIZE)]


def session_tokens(model, audio: np.ndarray, policy: PolicyConfig, seed: int):
    with DuplexSession(model, policy, seed) as s:
        for k in range(len(audio) // FRAME_SIZE):
            s.step(audio[k * FRAME_SIZE:(k + 1) * FRAME_SIZE])
    return s.close()


def run_slot(lm: BatchedLM, frames: list[np.ndarray], out: list) -> None:
    with lm.open() as slot:
        for f in frames:
            out.append(slot.step(f))


def text_of(out: list) -> list[int]:
    return [f.text_token for f in out]


def codes_of(out: list) -> np.ndarray:
    return np.stack([f.model_codes for f in out], 1)


def test_batch_of_one_equals_a_duplex_session(model) -> None:
    audio = user_audio(T, seed=3)
    ref = session_tokens(model, audio, PolicyConfig(), seed=5)
    got: list = []
    with BatchedLM(model, PolicyConfig(), max_streams=1, seed=5) as lm:
        run_slot(lm, frames_of(audio), got)
    assert text_of(got) == ref.text.tolist()
    assert np.array_equal(codes_of(got), ref.model_codes)
    assert np.array_equal(np.stack([f.user_codes for f in got], 1), ref.user_codes)
    with model.codec.stream_decoder() as dec:
        heard = [dec.push(c) for c in ref.model_codes.T]
    assert max(np.abs(f.pcm - h).max() for f, h in zip(got, heard)) < 1e-5


def test_slots_are_isolated_when_conversations_join_pause_and_leave(model) -> None:
    a, b = user_audio(T, seed=1), user_audio(T, seed=2)
    ref_a = session_tokens(model, a, GREEDY, seed=0)
    ref_b = session_tokens(model, b, GREEDY, seed=0)
    ca, cb = frames_of(a), frames_of(b)
    out_a: list = []
    out_b: list = []
    with BatchedLM(model, GREEDY, max_streams=3, seed=0, gather_s=0.02) as lm:
        # a occupies slot 0 alone for a while, b joins mid-way; a pauses (no frames) for a bit
        slot_a = lm.open()
        for c in ca[:5]:
            out_a.append(slot_a.step(c))
        tb = threading.Thread(target=run_slot, args=(lm, cb, out_b))
        tb.start()
        for c in ca[5:]:
            out_a.append(slot_a.step(c))
        slot_a.close()
        tb.join()
        assert lm.stats.max_batch >= 2  # they did share steps
        # a slot given back is reused: a third conversation gets slot 0 with a reset state
        out_c: list = []
        run_slot(lm, ca, out_c)
    for out, ref in ((out_a, ref_a), (out_b, ref_b), (out_c, ref_a)):
        assert text_of(out) == ref.text.tolist()
        assert np.array_equal(codes_of(out), ref.model_codes)
        assert np.array_equal(np.stack([f.user_codes for f in out], 1), ref.user_codes)


def test_slots_full(model) -> None:
    with BatchedLM(model, PolicyConfig(), max_streams=1, seed=0) as lm:
        slot = lm.open()
        with pytest.raises(SlotsFull):
            lm.open()
        slot.close()
        lm.open().close()
