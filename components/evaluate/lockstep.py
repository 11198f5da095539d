"""Several served conversations stepped together: one batched ``LMGen`` and one batched streaming
Mimi, driven by unchanged reactive users (components/simulate/live.py), one thread each.

Why: on CPU a Moshi step of a small model costs about the same for 1 or 16 conversations (the
time goes into per-step overhead, not arithmetic): measured on 2 cores with the tiny preset,
~14 ms per frame alone vs ~1.3 ms per conversation-frame at batch 16. Evaluation serves dozens
of conversations, so it runs them in lockstep batches ("waves").

What stays the same as single-conversation serving (serving/engine.py's DuplexSession): the
time alignment (a priming step, then the user's frame k is LMGen step k + 1 and the model's frame
k comes back from it), the sampling parameters, and a private torch RNG state swapped in around
every step (the caller's global RNG is untouched). With batch 1 the tokens are identical to a
DuplexSession with the same seed (tests/components/evaluate/test_lockstep.py). With batch B the
sampled tokens depend on the whole wave (one RNG for the batch), which is deterministic for a
given set of conversations.

The user side is NOT re-implemented: each conversation is live.py's ReactiveUser, whose frame
loop calls ``session.step(pcm)``; here that session is a :class:`Slot` that hands the frame to
the wave and blocks until the batched step has run.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from moshi.models.lm import LMGen

from serving.engine import FRAME_SIZE, FrameOut, PrivateRng, SessionTokens

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import PolicyConfig
    from components.model.checkpoint import LoadedModel


class LockstepSessions:
    """B conversations through one LMGen (batch B) and one streaming Mimi (batch B)."""

    def __init__(self, model: "LoadedModel", policy: "PolicyConfig", seed: int, batch: int):
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.batch = batch
        self.lm = model.lm
        self.codec = model.codec
        if self.lm.training:
            self.lm.eval()
        self.device = self.lm.device
        self.q_in = self.lm.num_codebooks - self.lm.dep_q - 1
        self.q_out = self.lm.dep_q
        if self.q_in <= 0:
            raise ValueError("the LM reads no user codebooks: it cannot serve a conversation")
        self.gen = LMGen(self.lm, use_sampling=True, temp=policy.temp, temp_text=policy.temp_text,
                         top_k=policy.top_k, top_k_text=policy.top_k_text)
        if self.gen.max_delay > 1:
            raise ValueError(f"max delay {self.gen.max_delay} > 1 (Moshi's delays have max 1)")
        self._rng = PrivateRng(seed, self.device)
        self._pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.frames = 0
        self.lm_s = self.encode_s = 0.0
        self._stack = contextlib.ExitStack()
        try:
            self._stack.enter_context(self.gen.streaming(batch))
            self._mimi = self._stack.enter_context(self.codec.batched_stream(batch))
            initial = torch.full((batch, self.q_in, 1), self.lm.card, dtype=torch.long,
                                 device=self.device)
            self._lm_step(initial, output_frame=-self.gen.max_delay)
        except BaseException:
            self._stack.close()
            raise

    @torch.no_grad()
    def _lm_step(self, user_codes: torch.Tensor, output_frame: int) -> None:
        t0 = time.perf_counter()
        with self._rng.active():
            out = self.gen.step(user_codes)
        if out is not None:
            rows = out[:, :, 0].to("cpu", torch.long).numpy()
            self._pending[output_frame] = (rows[:, 0].copy(), rows[:, 1 : 1 + self.q_out].copy())
        self.lm_s += time.perf_counter() - t0

    def step(self, pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """pcm [B, 1920] → (text [B], model codes [B, q], user codes [B, q]) of this frame."""
        x = np.ascontiguousarray(pcm, dtype=np.float32)
        if x.shape != (self.batch, FRAME_SIZE):
            raise ValueError(f"expected pcm [{self.batch}, {FRAME_SIZE}], got {x.shape}")
        k = self.frames
        t0 = time.perf_counter()
        with torch.inference_mode():
            codes = self._mimi.encode(torch.from_numpy(x).view(self.batch, 1, FRAME_SIZE))
        user = codes[:, : self.q_in, 0].to(torch.int64)
        self.encode_s += time.perf_counter() - t0
        self._lm_step(user.to(self.device).view(self.batch, self.q_in, 1),
                      output_frame=k + 1 - self.gen.max_delay)
        text, model_codes = self._pending.pop(k)
        self.frames += 1
        return text, model_codes, user.numpy()

    def close(self) -> None:
        self._pending.clear()
        self._stack.close()

    def __enter__(self) -> "LockstepSessions":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Slot:
    """What one reactive user sees as its session: ``step(pcm) -> FrameOut``."""

    def __init__(self, wave: "Wave", index: int):
        self._wave = wave
        self.index = index
        self.text: list[int] = []
        self.model: list[np.ndarray] = []
        self.user: list[np.ndarray] = []

    def step(self, user_pcm: np.ndarray) -> FrameOut:
        return self._wave._submit(self.index, user_pcm)

    def tokens(self) -> SessionTokens:
        T = len(self.text)
        q_out, q_in = self._wave.sessions.q_out, self._wave.sessions.q_in
        return SessionTokens(
            text=np.asarray(self.text, dtype=np.int64),
            model_codes=np.stack(self.model, 1) if T else np.zeros((q_out, 0), np.int64),
            user_codes=np.stack(self.user, 1) if T else np.zeros((q_in, 0), np.int64))


class _Aborted(RuntimeError):
    pass


class Wave:
    """Runs one callable per slot (each drives its slot frame by frame, in its own thread) and
    steps the batch whenever every running slot has handed in its frame. A slot whose callable
    returned gets silence (its outputs are dropped) until the whole wave is done."""

    def __init__(self, sessions: LockstepSessions):
        self.sessions = sessions
        B = sessions.batch
        self.slots = [Slot(self, i) for i in range(B)]
        self._cond = threading.Condition()
        self._pcm: list[np.ndarray | None] = [None] * B
        self._out: list[FrameOut | None] = [None] * B
        self._done = [False] * B
        self._abort = False

    def _submit(self, i: int, pcm: np.ndarray) -> FrameOut:
        frame = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if frame.shape[0] != FRAME_SIZE:
            raise ValueError(f"a frame is {FRAME_SIZE} samples at 24 kHz, got {frame.shape[0]}")
        with self._cond:
            self._pcm[i] = frame
            self._cond.notify_all()
            while (out := self._out[i]) is None:
                if self._abort:
                    raise _Aborted("the wave stopped")
                self._cond.wait()
            self._out[i] = None
            return out

    def run(self, drivers: list[Callable[[Slot], Any]],
            on_frame: Callable[[int], None] | None = None) -> list[Any]:
        """``drivers[i](slot)`` for every slot, in lockstep; returns their results in order."""
        B = self.sessions.batch
        if len(drivers) != B:
            raise ValueError(f"{len(drivers)} drivers for a wave of {B}")
        results: list[Any] = [None] * B
        errors: list[BaseException | None] = [None] * B

        def work(i: int) -> None:
            try:
                results[i] = drivers[i](self.slots[i])
            except BaseException as exc:  # re-raised in the caller's thread below
                errors[i] = exc
            finally:
                with self._cond:
                    self._done[i] = True
                    self._cond.notify_all()

        threads = [threading.Thread(target=work, args=(i,), daemon=True, name=f"eval-slot-{i}")
                   for i in range(B)]
        for t in threads:
            t.start()
        try:
            while True:
                with self._cond:
                    while not all(self._done[i] or self._pcm[i] is not None for i in range(B)):
                        self._cond.wait()
                    if all(self._done):
                        break
                    active = [i for i in range(B) if self._pcm[i] is not None]
                    batch = np.zeros((B, FRAME_SIZE), np.float32)
                    for i in active:
                        batch[i] = self._pcm[i]
                        self._pcm[i] = None
                text, model_codes, user_codes = self.sessions.step(batch)
                k = self.sessions.frames - 1
                with self._cond:
                    for i in active:
                        slot = self.slots[i]
                        slot.text.append(int(text[i]))
                        slot.model.append(model_codes[i])
                        slot.user.append(user_codes[i])
                        self._out[i] = FrameOut(frame=k, text_token=int(text[i]),
                                                model_codes=model_codes[i], user_codes=user_codes[i])
                    self._cond.notify_all()
                if on_frame is not None:
                    on_frame(k)
        finally:
            with self._cond:
                self._abort = True
                self._cond.notify_all()
            for t in threads:
                t.join()
        for exc in errors:
            if exc is not None and not isinstance(exc, _Aborted):
                raise exc
        return results
