"""Concurrent conversations batched into ONE ``LMGen`` step: the serving side's scheduler.

One ``LMGen`` in streaming mode with batch = ``max_streams`` slots. Conversations (WebSocket
streams and OIP turns alike) take a free slot when they start and give it back when they end;
the slots are independent thanks to moshi's per-item streaming state:

* ``reset_mask`` (``LMGen.reset_streaming(mask)``): a slot that a new conversation takes gets its
  offsets and KV caches zeroed, leaving the other slots alone;
* ``exec_mask`` (``LMGen.set_exec_mask(mask)``): a slot with nothing to do in a step is computed
  (the batch has a fixed shape) but its state is NOT advanced — offsets, KV caches and the token
  cache are written under the mask — so a conversation that sends no frame for a while resumes
  exactly where it was.

One stepping thread runs the loop: wait until some slot has work (a new conversation's priming
step or a user frame), give the other active slots a short gather window (``gather_s``) to hand
in their frame too, then run ONE batched step for every slot with work. Conversations that send
their frames at the same time therefore share steps; a lone conversation is never held back more
than ``gather_s``.

Time alignment is the one of serving/engine.py's DuplexSession, per slot: a priming step (the
initial token as user input, never read by LMGen), then the user's frame k is the slot's step
k + 1 and returns the model's frame k. With ``max_streams == 1`` the tokens are identical to a
DuplexSession with the same seed (same RNG protocol: one private torch RNG state swapped in around
every step); with more slots the sampled tokens depend on the batch (one RNG for all slots), while
greedy decoding gives every slot the tokens it would get alone (tests/serving/test_batcher.py).

The codec is batched the same way: ONE streaming Mimi (from the codec's pool) with
``max_streams`` slots encodes every stepped conversation's 1920 samples and decodes the model's
codes for the same frame, under the same reset/exec masks (moshi's streaming convolutions and
Mimi's transformer honour them). A slot's user codes are bit-identical to a per-connection
``Codec.stream_encoder`` (so to what training re-encodes from user.wav), its audio equal to a
per-connection ``stream_decoder`` within float rounding (tests/serving/test_batcher.py). On the
2-core CPU, encode + decode of 16 conversations in one batched call took 54 ms against 15 ms for
one — per connection they would take 16 × 15 ms.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models

import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from moshi.models.lm import LMGen

from serving.engine import FRAME_SIZE, PrivateRng

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import PolicyConfig
    from components.model.checkpoint import LoadedModel


class SlotsFull(RuntimeError):
    """Every slot is taken: the server is at ``max_streams`` concurrent conversations."""


class BatcherStopped(RuntimeError):
    """The batcher was closed while a frame was waiting."""


@dataclass
class BatchStats:
    """Counters of the stepping loop (tests and the bench read them)."""

    steps: int = 0  # batched LMGen steps run
    slot_steps: int = 0  # slot-steps executed (sum of the batch sizes)
    max_batch: int = 0
    batch_sizes: Counter = field(default_factory=Counter)  # executed slots per step → count
    lm_s: float = 0.0  # in LMGen steps
    codec_s: float = 0.0  # in the batched Mimi encode + decode
    step_seconds: deque = field(default_factory=lambda: deque(maxlen=100_000))  # recent steps

    def snapshot(self) -> dict[str, Any]:
        return {"steps": self.steps, "slot_steps": self.slot_steps, "max_batch": self.max_batch,
                "batch_sizes": dict(sorted(self.batch_sizes.items())), "lm_s": self.lm_s,
                "codec_s": self.codec_s}


@dataclass(frozen=True)
class SlotFrame:
    """One 80 ms frame of a conversation, as a slot returns it."""

    text_token: int
    model_codes: np.ndarray  # int64 [q_out]
    user_codes: np.ndarray  # int64 [q_in]: the codec's codes of the user's samples
    pcm: np.ndarray  # float32 [1920]: the model's audio of this frame (streaming decode)


@dataclass
class _SlotState:
    primed: bool = False  # its priming step has run
    closed: bool = False
    steps: int = 0  # LMGen steps this conversation has taken (the priming step is step 0)
    frames: int = 0  # user frames answered
    queue: deque = field(default_factory=deque)  # (pcm [1920], Future)
    pending: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)


class StreamSlot:
    """One conversation's handle on the batch: ``step(pcm)`` → the SlotFrame of the same 80 ms
    (see the module docstring for the alignment)."""

    def __init__(self, lm: "BatchedLM", index: int, state: _SlotState):
        self._lm = lm
        self.index = index
        self._state = state

    @property
    def frames(self) -> int:
        return self._state.frames

    def submit(self, pcm: np.ndarray) -> "Future[SlotFrame]":
        """Queue the user's next 1920 samples (24 kHz float32); resolves after the batched step."""
        return self._lm._submit(self._state, pcm)

    def step(self, pcm: np.ndarray, timeout: float | None = 60.0) -> SlotFrame:
        """Blocking `submit` (for threads: OIP turns, the reactive user, the bench)."""
        return self.submit(pcm).result(timeout)

    def close(self) -> None:
        """Give the slot back (frames still queued are answered first)."""
        self._lm._release(self.index, self._state)

    def __enter__(self) -> "StreamSlot":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class BatchedLM:
    """ONE ``LMGen`` with ``max_streams`` slots and the thread that steps it (module docstring).

    ``on_step(batch_size, seconds)`` is called after every batched step (serving's metrics)."""

    def __init__(self, model: "LoadedModel", policy: "PolicyConfig", max_streams: int, seed: int,
                 *, gather_s: float = 0.005,
                 on_step: Callable[[int, float], None] | None = None):
        if max_streams < 1:
            raise ValueError("max_streams must be >= 1")
        self.model = model
        self.lm = model.lm
        if self.lm.training:
            self.lm.eval()
        self.device = self.lm.device
        self.max_streams = max_streams
        self.gather_s = gather_s
        self.on_step = on_step
        self.q_in = self.lm.num_codebooks - self.lm.dep_q - 1
        self.q_out = self.lm.dep_q
        if self.q_in <= 0:
            raise ValueError("the LM reads no user codebooks: it cannot serve a conversation")
        # support_out_of_sync: LMGen returns every step's output (masked per slot) instead of
        # None for the first max_delay GLOBAL steps — slots join at different times.
        self.gen = LMGen(self.lm, use_sampling=True, temp=policy.temp, temp_text=policy.temp_text,
                         top_k=policy.top_k, top_k_text=policy.top_k_text,
                         support_out_of_sync=True)
        self.max_delay = int(self.gen.max_delay)
        if self.max_delay > 1:
            raise ValueError(f"max delay {self.max_delay} > 1 (Moshi's delays have max 1)")
        self._rng = PrivateRng(seed, self.device)  # the batcher's own stream, as a session's
        self.codec = model.codec
        if int(getattr(self.codec, "num_codebooks", self.q_in)) < max(self.q_in, self.q_out):
            raise ValueError(f"the codec gives {self.codec.num_codebooks} codebooks, the LM "
                             f"reads {self.q_in} and writes {self.q_out} per side")
        self.stats = BatchStats()
        self._slots: list[_SlotState | None] = [None] * max_streams
        self._cond = threading.Condition()
        self._stop = False
        self._error: BaseException | None = None
        self._stack = contextlib.ExitStack()
        try:
            self._stack.enter_context(self.gen.streaming(max_streams))
            self._mimi = self._stack.enter_context(self.codec.batched_stream(max_streams))
        except BaseException:
            self._stack.close()
            raise
        self._thread = threading.Thread(target=self._run, name="serving-lm-step", daemon=True)
        self._thread.start()

    # -- slots
    def open(self) -> StreamSlot:
        """Take a free slot for a new conversation (its priming step runs with the next batch).
        Raises SlotsFull at ``max_streams`` conversations."""
        with self._cond:
            self._check()
            for i, st in enumerate(self._slots):
                if st is None:
                    state = _SlotState()
                    self._slots[i] = state
                    self._cond.notify_all()
                    return StreamSlot(self, i, state)
        raise SlotsFull(f"all {self.max_streams} slots are taken")

    def active(self) -> int:
        with self._cond:
            return sum(st is not None for st in self._slots)

    def _check(self) -> None:
        if self._error is not None:
            raise BatcherStopped(f"the stepping loop failed: {self._error!r}") from self._error
        if self._stop:
            raise BatcherStopped("the batcher is closed")

    def _submit(self, state: _SlotState, pcm: np.ndarray) -> Future:
        x = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if x.shape[0] != FRAME_SIZE:
            raise ValueError(f"a frame is {FRAME_SIZE} samples at 24 kHz, got {x.shape[0]}")
        fut: Future = Future()
        with self._cond:
            self._check()
            if state.closed:
                raise RuntimeError("the slot is closed")
            state.queue.append((x, fut))
            self._cond.notify_all()
        return fut

    def _release(self, index: int, state: _SlotState) -> None:
        with self._cond:
            state.closed = True
            if self._slots[index] is state and not state.queue:
                self._slots[index] = None
            self._cond.notify_all()

    # -- the stepping loop
    def _has_work(self) -> bool:
        return any(st is not None and (not st.primed or st.queue) for st in self._slots)

    def _laggards(self) -> bool:
        """Some active slot has no frame queued yet (worth a short wait to batch it too)."""
        return any(st is not None and st.primed and not st.closed and not st.queue
                   for st in self._slots)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stop and not self._has_work():
                        self._cond.wait()
                    if self._stop:
                        break
                    deadline = time.monotonic() + self.gather_s
                    while not self._stop and self._laggards():
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    plan: list[tuple[int, _SlotState, np.ndarray | None, Future | None]] = []
                    for i, st in enumerate(self._slots):
                        if st is None:
                            continue
                        if not st.primed:
                            plan.append((i, st, None, None))
                        elif st.queue:
                            pcm, fut = st.queue.popleft()
                            plan.append((i, st, pcm, fut))
                if plan:
                    self._step(plan)
        except BaseException as exc:  # a model failure: every waiting conversation learns it
            self._error = exc
        finally:
            with self._cond:
                self._stop = True
                for st in self._slots:
                    while st is not None and st.queue:
                        _, fut = st.queue.popleft()
                        fut.set_exception(BatcherStopped("the batcher stopped"))
                self._cond.notify_all()

    @torch.no_grad()
    def _step(self, plan: list[tuple[int, _SlotState, np.ndarray | None, Future | None]]) -> None:
        """ONE batched step: encode the frames, step the LM (frames + priming), decode."""
        B = self.max_streams
        frame_mask = torch.zeros(B, dtype=torch.bool)  # slots with a user frame
        reset_mask = torch.zeros(B, dtype=torch.bool)  # slots a new conversation just took
        pcm = torch.zeros(B, 1, FRAME_SIZE)
        for i, _, x, _ in plan:
            if x is None:
                reset_mask[i] = True
            else:
                frame_mask[i] = True
                pcm[i, 0] = torch.from_numpy(x)
        exec_mask = frame_mask | reset_mask
        # Moshi's initial token as input for priming (and for idle slots: computed, not kept).
        inp = torch.full((B, self.q_in, 1), self.lm.card, dtype=torch.long)
        user = torch.zeros(B, self.q_in, dtype=torch.long)
        try:
            t_enc = time.perf_counter()
            with torch.inference_mode():
                if bool(reset_mask.any()):
                    self._mimi.reset_streaming(reset_mask)
                if bool(frame_mask.any()):
                    self._mimi.set_exec_mask(frame_mask)
                    user = self._mimi.encode(pcm)[:, : self.q_in, 0].to(torch.long)
            inp[frame_mask, :, 0] = user[frame_mask]
            t0 = time.perf_counter()
            with self._rng.active():
                if bool(reset_mask.any()):
                    self.gen.reset_streaming(reset_mask.to(self.device))
                self.gen.set_exec_mask(exec_mask.to(self.device))
                out = self.gen.step(inp.to(self.device))
            rows = out[:, :, 0].to("cpu", torch.long).numpy()
            dt = time.perf_counter() - t0
            results: list[tuple[_SlotState, Future, int, np.ndarray, np.ndarray]] = []
            for i, st, x, fut in plan:
                output_frame = st.steps - self.max_delay  # step s outputs frame s - max_delay
                st.steps += 1
                if x is None:
                    st.primed = True
                if output_frame >= 0:
                    st.pending[output_frame] = (int(rows[i, 0]),
                                                rows[i, 1 : 1 + self.q_out].copy())
                if fut is not None:
                    k = st.frames
                    st.frames += 1
                    tok, codes = st.pending.pop(k)
                    results.append((st, fut, i, tok, codes))
            audio = None
            if results:
                model_codes = torch.zeros(B, self.codec.num_codebooks, 1, dtype=torch.long)
                for _, _, i, _, codes in results:
                    model_codes[i, : self.q_out, 0] = torch.from_numpy(codes)
                with torch.inference_mode():
                    self._mimi.set_exec_mask(frame_mask)
                    audio = self._mimi.decode(model_codes)[:, 0].to(torch.float32).numpy()
            user_np = user.numpy()
        except BaseException as exc:
            for _, _, _, fut in plan:
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
            raise
        self.stats.steps += 1
        self.stats.slot_steps += len(plan)
        self.stats.max_batch = max(self.stats.max_batch, len(plan))
        self.stats.batch_sizes[len(plan)] += 1
        self.stats.lm_s += dt
        self.stats.codec_s += time.perf_counter() - t_enc - dt
        self.stats.step_seconds.append(dt)
        for st, fut, i, tok, codes in results:
            assert audio is not None
            fut.set_result(SlotFrame(tok, codes, user_np[i].copy(), audio[i, :FRAME_SIZE].copy()))
        with self._cond:  # a slot closed while its last frame was in this step is free now
            for i, st, _, _ in plan:
                if st.closed and not st.queue and self._slots[i] is st:
                    self._slots[i] = None
            self._cond.notify_all()
        if self.on_step is not None:
            self.on_step(len(plan), dt)

    def close(self) -> None:
        """Stop the loop (waiting frames fail with BatcherStopped) and leave streaming mode."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        self._stack.close()

    def __enter__(self) -> "BatchedLM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
