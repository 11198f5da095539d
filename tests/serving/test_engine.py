"""DuplexSession on a tiny random Moshi LM and the embedded codec: frames aligned in time, the
logged tokens EXACTLY what was sampled (teacher forcing them reproduces the serving logits),
seeded sampling that leaves the caller's RNG alone, user codes equal to the whole-waveform
encode of the audio streamed."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch

from components.common.config import PolicyConfig
from components.model.checkpoint import LoadedModel, ModelIdentity
from components.model.spec import build_lm, lm_kwargs
from components.streams.codec import embedded_codec
from components.streams.interleave import StreamLayout, assemble
from serving.engine import FRAME_SIZE, DuplexSession, SessionTokens, decode_model_audio

TEXT_CARD = 300  # the LM's text vocabulary (no tokenizer needed for the engine)
T = 30  # frames per test session (2.4 s)


def tiny_model(num_codebooks: int = 4, seed: int = 0) -> LoadedModel:
    codec = embedded_codec(num_codebooks)
    kwargs = lm_kwargs("tiny", StreamLayout(num_codebooks, TEXT_CARD, codec.card), 64)
    lm = build_lm(kwargs, seed=seed)
    lm.eval()
    identity = ModelIdentity(tokenizer_hash="spm-test", codec_hash=codec.hash,
                             num_codebooks=num_codebooks, size="tiny", weights_sha256="0" * 64)
    return LoadedModel(lm=lm, lm_kwargs=kwargs, tokenizer=None, codec=codec, identity=identity,
                       path=Path("."))


def user_audio(frames: int = T, seed: int = 0) -> np.ndarray:
    """Something speech-like enough to move the codes: noise bursts and tones with pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames * FRAME_SIZE) / 24000.0
    envelope = (np.sin(2 * np.pi * 1.3 * t) > 0).astype(np.float32)
    audio = 0.2 * np.sin(2 * np.pi * (180 + 60 * np.sin(2 * np.pi * 0.7 * t)) * t) * envelope
    audio += 0.02 * rng.standard_normal(t.shape[0])
    return audio.astype(np.float32)


def serve(model: LoadedModel, audio: np.ndarray, seed: int, policy: PolicyConfig | None = None,
          logits: list | None = None) -> tuple[SessionTokens, list]:
    outs = []
    with DuplexSession(model, policy or PolicyConfig(), seed) as session:
        if logits is not None:
            session.text_logits_hook = lambda x: logits.append(x[0, 0, 0].detach().clone())
        for k in range(len(audio) // FRAME_SIZE):
            outs.append(session.step(audio[k * FRAME_SIZE : (k + 1) * FRAME_SIZE]))
    return session.close(), outs


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return tiny_model()


def test_one_frame_out_per_frame_in(model: LoadedModel) -> None:
    audio = user_audio()
    tokens, outs = serve(model, audio, seed=1)
    q = model.lm.dep_q
    assert tokens.text.shape == (T,) and tokens.model_codes.shape == (q, T)
    assert tokens.user_codes.shape == (q, T) and tokens.n_frames == T
    assert [o.frame for o in outs] == list(range(T))
    assert [o.text_token for o in outs] == tokens.text.tolist()
    assert np.array_equal(np.stack([o.model_codes for o in outs], 1), tokens.model_codes)
    assert np.array_equal(np.stack([o.user_codes for o in outs], 1), tokens.user_codes)
    assert tokens.text.min() >= 0 and tokens.text.max() < TEXT_CARD
    assert tokens.model_codes.min() >= 0 and tokens.model_codes.max() < model.codec.card


def test_logged_tokens_are_exactly_what_the_model_sampled(model: LoadedModel) -> None:
    """Teacher forcing assemble(text, model codes, user codes) through LMModel.forward gives the
    logits the session sampled from, frame for frame — the log's alignment is the training
    layout's, so these tokens can be scored as the model's own (the rejected side of a pair).
    Narrow top-k makes a misaligned audio code fall outside the top-k at once."""
    policy = PolicyConfig(top_k=4, top_k_text=4)
    served: list[torch.Tensor] = []
    tokens, _ = serve(model, user_audio(), seed=3, policy=policy, logits=served)
    # the priming step's logits (frame 0) come before the hook is set: served[k] is frame k+1
    assert len(served) == T
    codes = torch.from_numpy(assemble(tokens.text, tokens.model_codes, tokens.user_codes))[None]
    with torch.no_grad():
        out = model.lm(codes)
    forced_text = out.text_logits[0, 0].float()  # [T, card]
    served_text = torch.stack(served[: T - 1]).float()
    assert torch.allclose(forced_text[1:], served_text, atol=1e-4, rtol=1e-4)
    # and the same logits one frame off are far apart: the check has teeth
    assert not torch.allclose(forced_text[2:], served_text[:-1], atol=1e-2)
    # every sampled token is in the top-k of its teacher-forced logits (text and audio)
    text_top = forced_text.topk(4, dim=-1).indices
    assert all(int(tokens.text[t]) in text_top[t].tolist() for t in range(T))
    audio_logits = out.logits[0].float()  # [q, T, card]; NaN where the delay leaves no target
    valid = out.mask[0]
    audio_top = torch.nan_to_num(audio_logits, nan=-1e9).topk(4, dim=-1).indices
    checked = 0
    for k in range(tokens.model_codes.shape[0]):
        for t in range(T):
            if bool(valid[k, t]):
                assert int(tokens.model_codes[k, t]) in audio_top[k, t].tolist(), (k, t)
                checked += 1
    assert checked >= tokens.model_codes.size - tokens.model_codes.shape[0]


def test_seeded_and_leaves_the_global_rng_alone(model: LoadedModel) -> None:
    audio = user_audio()
    torch.manual_seed(1234)
    before = torch.get_rng_state().clone()
    a, _ = serve(model, audio, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    b, _ = serve(model, audio, seed=5)
    c, _ = serve(model, audio, seed=6)
    assert np.array_equal(a.text, b.text) and np.array_equal(a.model_codes, b.model_codes)
    assert not (np.array_equal(a.text, c.text) and np.array_equal(a.model_codes, c.model_codes))


def test_interleaved_sessions_do_not_share_randomness(model: LoadedModel) -> None:
    """Two sessions stepped alternately give the tokens each gives alone (an LM holds one
    streaming state, so the second session runs on a second copy of the model)."""
    audio = user_audio()
    alone, _ = serve(model, audio, seed=8)
    s1 = DuplexSession(model, PolicyConfig(), 8)
    s2 = DuplexSession(tiny_model(seed=0), PolicyConfig(), 9)
    for k in range(T):
        chunk = audio[k * FRAME_SIZE : (k + 1) * FRAME_SIZE]
        s1.step(chunk)
        s2.step(chunk)
    both = s1.close()
    s2.close()
    assert np.array_equal(alone.text, both.text)
    assert np.array_equal(alone.model_codes, both.model_codes)


def test_user_codes_are_the_whole_waveform_encode(model: LoadedModel) -> None:
    audio = user_audio(seed=2)
    tokens, _ = serve(model, audio, seed=1)
    whole = model.codec.encode(audio, 24000)
    assert np.array_equal(tokens.user_codes, whole[: tokens.user_codes.shape[0]])
    assert len(np.unique(tokens.user_codes[0])) > 1  # the codec carries signal


def test_decode_model_audio(model: LoadedModel) -> None:
    tokens, _ = serve(model, user_audio(), seed=1)
    audio = decode_model_audio(model, tokens)
    assert audio.dtype == np.float32 and audio.shape == (T * FRAME_SIZE,)
    assert np.isfinite(audio).all()


def test_one_codebook_per_side_has_no_delay() -> None:
    """q = 1: Moshi's delays are all 0 (max_delay 0); frames stay aligned and exact."""
    model = tiny_model(num_codebooks=1)
    served: list[torch.Tensor] = []
    tokens, outs = serve(model, user_audio(), seed=2, logits=served)
    assert tokens.n_frames == T and [o.frame for o in outs] == list(range(T))
    # LMModel.forward asserts a depformer of >= 2 codebooks; with no delays, its input is the
    # initial token followed by the frames, so forward_text is teacher forcing here
    codes = torch.from_numpy(assemble(tokens.text, tokens.model_codes, tokens.user_codes))[None]
    initial = model.lm._get_initial_token().to(codes)
    with torch.no_grad():
        _, forced = model.lm.forward_text(torch.cat([initial, codes[:, :, :-1]], dim=2))
    forced = forced[0, 0].float()
    assert torch.allclose(forced[1:], torch.stack(served[: T - 1]).float(), atol=1e-4, rtol=1e-4)


def test_bad_frames_and_closed_sessions_are_refused(model: LoadedModel) -> None:
    session = DuplexSession(model, PolicyConfig(), 0)
    with pytest.raises(ValueError, match="1920"):
        session.step(np.zeros(100, np.float32))
    session.step(np.zeros(FRAME_SIZE, np.float32))
    tokens = session.close()
    assert tokens.n_frames == 1
    with pytest.raises(RuntimeError, match="closed"):
        session.step(np.zeros(FRAME_SIZE, np.float32))
