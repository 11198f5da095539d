"""One full-duplex conversation served by a Moshi LM: moshi's ``LMGen`` in streaming mode plus the
codec's streaming encoder for the user's microphone.

Time alignment — the one subtle part
------------------------------------
``LMGen.step`` at step s reads cache position s and writes what it samples to position s + 1;
cache position p is exactly input position p of ``LMModel.forward`` (position 0 = Moshi's
initial token, position p = the delayed frame p - 1). Two consequences:

* the user frame given at step s is frame s - 1 of the training layout, so the user frame of
  step 0 is never read (LMGen treats step 0 as "before the conversation");
* step s returns frame s - max_delay (text and the undelayed audio of the model).

``DuplexSession`` therefore takes one PRIMING step in ``__init__`` (with the initial token as
user input: ignored by LMGen, see above), and then feeds the user's k-th frame as LMGen step
k + 1. Frame k of everything the session returns is then ONE frame of the conversation:

* ``user_codes[:, k]``: the codec's codes of the user's audio samples [k·1920, (k+1)·1920)
  (24 kHz), i.e. the interval [k·80 ms, (k+1)·80 ms);
* ``text[k]``, ``model_codes[:, k]``: what the model says in that same interval. Its text token
  was sampled BEFORE user frame k arrived (at step k, having heard user frames < k) — which is
  also what a real deployment can do: the model's frame k is played while frame k of the user is
  being recorded.

This is exactly the layout of ``components.streams.interleave.assemble`` that training uses
(row t of text predicted from user frames < t), so teacher forcing the logged tokens with
``LMModel.forward(assemble(text, model_codes, user_codes))`` reproduces the logits the model
sampled from while serving (tests/serving/test_engine.py checks it). That is what makes the
logged tokens usable as the "rejected" side of a preference pair: re-encoding the audio or
re-interleaving the words would give sequences the model never produced.

With Moshi's delays (max_delay = 1) the output of step k + 1 is frame k, so ``step`` returns the
frame it was given, nothing has to be flushed at the end and T (frames returned by ``close``)
equals the number of user frames fed. max_delay 0 (one codebook per side) works too (the
output of the next frame is computed one step early and discarded at ``close``); a larger delay
(only the depformer's acoustic delay exists in Moshi) is refused because the reactive user
needs frame k's text at frame k.

Sampling and determinism
------------------------
moshi's ``sample_token`` draws from torch's GLOBAL generator (it accepts no
``torch.Generator``). A session therefore owns an RNG state: seeded with ``torch.manual_seed(seed)``
once, and swapped in around every step inside ``torch.random.fork_rng`` — the caller's global RNG
is left exactly as it was, and a session's tokens depend only on (model, policy, seed, user
audio), even when several sessions are interleaved. On CUDA the device generator is forked and
swapped the same way (bit-identical reruns on the same GPU and software; not across GPUs).

Speed
-----
On GPU, LMGen graphs the temporal transformer and the depformer step with CUDA graphs
automatically (``moshi.utils.compile.CUDAGraphed``, disabled on CPU); nothing to do here.
Set ``NO_TORCH_COMPILE=1`` on CPU workers (done below, before moshi is imported). Measured on
the project's 2-core CPU machine (fp32, 4 + 4 codebooks, embedded codec, ONE torch thread —
two threads were 5-10x slower per frame), real time being 80 ms per frame:

=====================  =================  ==========  ==========
model                  codec encode       LM step     total
=====================  =================  ==========  ==========
tiny (1.1 M params)    2.8 ms             4.7 ms      7.5 ms
small (4.6 M params)   2.7 ms             7.2 ms      9.9 ms
=====================  =================  ==========  ==========

(best runs; with the cores shared with other jobs, up to 15 / 31 ms.)

An LM holds ONE streaming state: one session per loaded model at a time (a second concurrent
conversation needs its own copy of the LM; the codec pools its streaming instances itself). The
server does not work this way: serving/batcher.py steps every live conversation as a slot of ONE
batched LMGen (same alignment; batch 1 gives this class's tokens bit for bit).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models: no compile on CPU workers

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from moshi.models.lm import LMGen

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import PolicyConfig
    from components.model.checkpoint import LoadedModel

FRAME_SIZE = 1920  # samples per frame at 24 kHz (80 ms)
SAMPLE_RATE = 24_000
FRAME_RATE = 12.5


@dataclass(frozen=True)
class FrameOut:
    """One 80 ms frame of the conversation: what the model said in it, and the user's codes."""

    frame: int
    text_token: int
    model_codes: np.ndarray  # int64 [q]
    user_codes: np.ndarray  # int64 [q]


@dataclass
class SessionTokens:
    """A whole session, undelayed and aligned in time (rows as in `interleave.assemble`)."""

    text: np.ndarray  # int64 [T]
    model_codes: np.ndarray  # int64 [q, T]
    user_codes: np.ndarray  # int64 [q, T]
    frame_rate: float = FRAME_RATE

    @property
    def n_frames(self) -> int:
        return int(self.text.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.frame_rate


@dataclass
class SessionTimings:
    frames: int = 0
    encode_s: float = 0.0  # codec stream encoder
    lm_s: float = 0.0  # LMGen steps (temporal transformer + depformer + sampling)
    setup_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def ms_per_frame(self) -> float:
        return 1000.0 * (self.encode_s + self.lm_s) / max(1, self.frames)


class PrivateRng:
    """A sampling stream of its own on torch's global generator(s) (moshi samples from the
    global one): seeded once, swapped in around each step inside ``torch.random.fork_rng``, so
    the caller's global RNG is left as it was and the stream goes on where it stopped. Used by
    DuplexSession, the serving batcher and the lockstep evaluator."""

    def __init__(self, seed: int, device: torch.device):
        self._device = device
        self._devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=self._devices):
            torch.manual_seed(seed)
            self._state = self._get()

    def _get(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (torch.get_rng_state(),
                torch.cuda.get_rng_state(self._device) if self._devices else None)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self._devices):
            torch.set_rng_state(self._state[0])
            if self._state[1] is not None:
                torch.cuda.set_rng_state(self._state[1], self._device)
            yield
            self._state = self._get()


class DuplexSession:
    """One conversation with a Moshi LM (see the module docstring for alignment and seeding).

    Use as a context manager, or call `close` (it returns the session's tokens and releases the
    streaming state; a closed session cannot step)."""

    def __init__(self, model: "LoadedModel", policy: "PolicyConfig", seed: int):
        t0 = time.perf_counter()
        self.model = model
        self.lm = model.lm
        self.codec = model.codec
        if self.lm.training:
            self.lm.eval()
        self.device = self.lm.device
        self.q_in = self.lm.num_codebooks - self.lm.dep_q - 1  # user codebooks the LM reads
        self.q_out = self.lm.dep_q
        if self.q_in <= 0:
            raise ValueError("the LM reads no user codebooks: it cannot serve a conversation")
        if int(getattr(self.codec, "num_codebooks", self.q_in)) < self.q_in:
            raise ValueError(f"the codec gives {self.codec.num_codebooks} codebooks, the LM reads "
                             f"{self.q_in} per side")
        self.gen = LMGen(self.lm, use_sampling=True, temp=policy.temp, temp_text=policy.temp_text,
                         top_k=policy.top_k, top_k_text=policy.top_k_text,
                         on_text_logits_hook=self._on_text_logits)
        if self.gen.max_delay > 1:
            raise ValueError(f"max delay {self.gen.max_delay} > 1: frame k's tokens would only "
                             "be known frames later (Moshi's delays have max 1)")
        self.text_logits_hook = None  # optional callable(text_logits [1,1,1,card]) for tests
        self._rng = PrivateRng(seed, self.device)
        self._stack = contextlib.ExitStack()
        self._closed = False
        self._pending: dict[int, tuple[int, np.ndarray]] = {}  # frame -> (text, model codes)
        self._text: list[int] = []
        self._model: list[np.ndarray] = []
        self._user: list[np.ndarray] = []
        self.timings = SessionTimings()
        try:
            self._stack.enter_context(self.gen.streaming(1))
            self._encoder = self._stack.enter_context(self.codec.stream_encoder())
            # Priming step (LMGen step 0): its user input is never read by LMGen (all rows take
            # the initial token at offset 0), so the initial token is passed. It samples the
            # model's frame 0, from the initial token alone — as training's position 0 does.
            initial = torch.full((1, self.q_in, 1), self.lm.card, dtype=torch.long,
                                 device=self.device)
            self._lm_step(initial, output_frame=-self.gen.max_delay)
        except BaseException:
            self._stack.close()
            raise
        self.timings.setup_s = time.perf_counter() - t0

    def _on_text_logits(self, logits: torch.Tensor) -> None:
        if self.text_logits_hook is not None:
            self.text_logits_hook(logits)

    @torch.no_grad()
    def _lm_step(self, user_codes: torch.Tensor, output_frame: int) -> None:
        """One LMGen step; stores the frame it outputs (``output_frame``) if any."""
        t0 = time.perf_counter()
        with self._rng.active():
            out = self.gen.step(user_codes)
        if out is not None:
            row = out[0, :, 0].to("cpu", torch.long).numpy()
            self._pending[output_frame] = (int(row[0]), row[1 : 1 + self.q_out].copy())
        self.timings.lm_s += time.perf_counter() - t0

    @property
    def frames(self) -> int:
        """Frames stepped so far."""
        return len(self._text)

    def step(self, user_pcm: np.ndarray) -> FrameOut:
        """Feed the user's next 80 ms (1920 float samples at 24 kHz); returns this frame."""
        if self._closed:
            raise RuntimeError("session is closed")
        pcm = np.asarray(user_pcm, dtype=np.float32).reshape(-1)
        if pcm.shape[0] != FRAME_SIZE:
            raise ValueError(f"a frame is {FRAME_SIZE} samples at 24 kHz, got {pcm.shape[0]}")
        k = len(self._text)
        t0 = time.perf_counter()
        codes = np.asarray(self._encoder.push(pcm), dtype=np.int64).reshape(-1)[: self.q_in]
        self.timings.encode_s += time.perf_counter() - t0
        user = torch.from_numpy(codes).to(self.device).view(1, self.q_in, 1)
        self._lm_step(user, output_frame=k + 1 - self.gen.max_delay)
        text, model_codes = self._pending.pop(k)
        self._text.append(text)
        self._model.append(model_codes)
        self._user.append(codes)
        self.timings.frames += 1
        return FrameOut(frame=k, text_token=text, model_codes=model_codes, user_codes=codes)

    def tokens(self) -> SessionTokens:
        """The frames so far (also valid after `close`)."""
        T = len(self._text)
        return SessionTokens(
            text=np.asarray(self._text, dtype=np.int64),
            model_codes=(np.stack(self._model, axis=1) if T else
                         np.zeros((self.q_out, 0), np.int64)),
            user_codes=(np.stack(self._user, axis=1) if T else np.zeros((self.q_in, 0), np.int64)))

    def close(self) -> SessionTokens:
        """Release the streaming state; returns the session's tokens ([T] text, [q, T] codes).
        With max_delay 0 the model's frame T (computed one step early) is discarded."""
        if not self._closed:
            self._closed = True
            self._pending.clear()
            self._stack.close()
        return self.tokens()

    def __enter__(self) -> "DuplexSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def decode_model_audio(model: Any, tokens: SessionTokens) -> np.ndarray:
    """The model's audio channel: the codec's whole decode of its codes (float32, 24 kHz,
    T·1920 samples). `model` is a LoadedModel or a Codec. Call it after the session is closed:
    Mimi's streaming state is module-wide, and a decode inside an open stream would use it."""
    codec = getattr(model, "codec", model)
    if tokens.n_frames == 0:
        return np.zeros(0, np.float32)
    audio = np.asarray(codec.decode(tokens.model_codes), dtype=np.float32).reshape(-1)
    return audio[: tokens.n_frames * FRAME_SIZE]
