"""Text-stream training throughput of a Moshi-architecture LM on one device: a standalone script.

Needs only torch and the ``moshi`` package (the GPU machines have torch but not moshi: carry its
wheel), so it runs where the project does not install. Measures, for random weights:

* ``train``: the text-stream forward + backward of the DPO text loss (``forward_text``: no depth
  transformer), bf16 weights, no optimizer step — frames/s and MFU;
* ``reference``: the no-grad reference forward — frames/s;

for each attention path:

* ``moshi``: moshi's own attention (an explicit boolean mask: SDPA cannot use flash attention);
* ``causal``: the same attention with ``is_causal=True`` (exact while T <= context, non-streaming:
  the mask IS causal then), which lets SDPA pick flash attention;
* ``causal+compile``: plus ``torch.compile`` of every transformer layer (fuses moshi's fp32
  RMSNorm, RoPE and gating around the matmuls).

MFU = 6 · N · frames/s / peak, N = temporal transformer + text head parameters (embeddings are
lookups); the peak is the device's dense bf16 figure (H100 SXM 989 TFLOP/s, H200 the same chip).

    python components/train/gpu_bench.py --size moshi-7b --batch 2 --frames 1250 --out result.json
    python components/train/gpu_bench.py --size tiny --device cpu --frames 64   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # moshi's own lazy compiles: off, ours explicit

import torch
import torch.nn.functional as F

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "L40S": 362e12}

# Small shapes for a CPU smoke test (dim, layers, heads); "moshi-7b" is Kyutai's config.
_SMALL = {"tiny": (128, 2, 4), "small": (256, 4, 4)}


def lm_kwargs(size: str, context: int) -> dict[str, Any]:
    from moshi.models import loaders

    kwargs = copy.deepcopy(loaders._lm_kwargs)
    kwargs["context"] = context
    if size != "moshi-7b":
        dim, layers, heads = _SMALL[size]
        kwargs.update(dim=dim, num_layers=layers, num_heads=heads, depformer_dim=64,
                      depformer_num_layers=1, depformer_num_heads=2, depformer_dim_feedforward=256)
    return kwargs


def build(size: str, context: int, device: str, dtype: torch.dtype) -> Any:
    from moshi.models.lm import LMModel

    kwargs = lm_kwargs(size, context)
    kwargs.pop("gradient_checkpointing", None)
    with torch.device(device):
        lm = LMModel(device=device, dtype=dtype, **kwargs)
    return lm


def temporal_params(lm: Any) -> int:
    n = sum(p.numel() for p in lm.transformer.parameters())
    return n + sum(p.numel() for p in lm.text_linear.parameters()) + (
        sum(p.numel() for p in lm.out_norm.parameters()) if lm.out_norm is not None else 0)


@contextlib.contextmanager
def causal_attention(limit: int) -> Iterator[None]:
    """moshi's attention with ``is_causal=True`` instead of its boolean mask, for full-sequence
    (non-streaming) calls no longer than ``limit`` frames, where the two are the same mask."""
    import moshi.modules.transformer as T

    original = T.F

    class _Shim:
        def __getattr__(self, name: str) -> Any:
            return getattr(original, name)

        @staticmethod
        def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, **kw):
            n = q.shape[-2]
            if attn_mask is not None and k.shape[-2] == n and n <= limit and not kw:
                return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            return F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p=dropout_p, **kw)

    T.F = _Shim()  # type: ignore[assignment]  # moshi reads F.scaled_dot_product_attention
    try:
        yield
    finally:
        T.F = original


def delayed_input(lm: Any, codes: torch.Tensor) -> torch.Tensor:
    """What LMModel.forward feeds forward_text: delayed codes behind the initial token."""
    from moshi.models.lm_utils import _delay_sequence

    b = codes.shape[0]
    initial = lm._get_initial_token().expand(b, -1, -1)
    delayed = torch.cat([initial, _delay_sequence(lm.delays, codes, initial)], dim=2)
    return delayed[:, :, :-1]


def text_logp(lm: Any, codes: torch.Tensor) -> torch.Tensor:
    """Summed log-prob of the text stream (every frame scored: the upper bound of a reply window)."""
    _, logits = lm.forward_text(delayed_input(lm, codes))
    logp = torch.log_softmax(logits[:, 0].float(), dim=-1)
    return logp.gather(-1, codes[:, 0, :, None]).squeeze(-1).sum()


def timed(fn: Any, iters: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="moshi-7b", choices=["moshi-7b", *_SMALL])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=1250)
    ap.add_argument("--context", type=int, default=3000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variants", default="moshi,causal,causal+compile")
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip variants after this long")
    ap.add_argument("--out", default="", help="write the results as JSON here (after each variant)")
    args = ap.parse_args(argv)

    t_start = time.monotonic()
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    torch.manual_seed(0)
    t0 = time.monotonic()
    lm = build(args.size, args.context, device, dtype)
    n_temporal = temporal_params(lm)
    result: dict[str, Any] = {
        "device": name, "torch": torch.__version__, "size": args.size, "batch": args.batch,
        "frames": args.frames, "dtype": str(dtype), "temporal_params": n_temporal,
        "total_params": sum(p.numel() for p in lm.parameters()), "peak_flops": peak,
        "build_s": round(time.monotonic() - t0, 1), "variants": {}}
    print(json.dumps({k: v for k, v in result.items() if k != "variants"}), flush=True)
    g = torch.Generator(device="cpu").manual_seed(1)
    codes = torch.randint(0, lm.card, (args.batch, lm.num_codebooks, args.frames), generator=g)
    codes[:, 0] = torch.randint(0, lm.text_card, (args.batch, args.frames), generator=g)
    codes = codes.to(device)
    # Only the temporal side trains in the text-stream loss; the depformer is never run.
    for p in lm.parameters():
        p.requires_grad_(False)
    for module in (lm.transformer, lm.text_linear, lm.emb, lm.text_emb):
        for p in module.parameters():
            p.requires_grad_(True)
    frames = args.batch * args.frames

    def train_once() -> None:
        loss = -text_logp(lm, codes)
        loss.backward()
        for p in lm.parameters():
            p.grad = None

    @torch.no_grad()
    def reference_once() -> None:
        text_logp(lm, codes)

    # The causal path must be the same function as moshi's own: compare the summed log-prob.
    with torch.no_grad():
        exact = float(text_logp(lm, codes))
        with causal_attention(args.context):
            fast = float(text_logp(lm, codes))
    result["causal_vs_moshi_logp"] = {"moshi": exact, "causal": fast,
                                      "rel_diff": abs(fast - exact) / max(1.0, abs(exact))}
    print(json.dumps(result["causal_vs_moshi_logp"]), flush=True)

    compiled = False
    for variant in args.variants.split(","):
        if time.monotonic() - t_start > args.budget_s:
            result["variants"][variant] = {"skipped": "time budget"}
            continue
        entry: dict[str, Any] = {}
        try:
            if "compile" in variant and not compiled:
                t1 = time.monotonic()
                for layer in lm.transformer.layers:
                    layer.compile()
                compiled = True
                entry["compile_note"] = "per-layer torch.compile"
                t1 = time.monotonic() - t1
            ctx = causal_attention(args.context) if variant.startswith("causal") else contextlib.nullcontext()
            with ctx:
                t1 = time.monotonic()
                train_once()  # first call: compile / autotune outside the timing
                entry["first_call_s"] = round(time.monotonic() - t1, 1)
                step = timed(train_once, args.iters, args.warmup, device)
                ref = timed(reference_once, args.iters, args.warmup, device)
            entry.update(train_step_s=round(step, 4), train_frames_per_s=round(frames / step, 1),
                         reference_frames_per_s=round(frames / ref, 1))
            if peak:
                entry["train_mfu"] = round(6 * n_temporal * frames / step / peak, 3)
                entry["reference_mfu"] = round(2 * n_temporal * frames / ref / peak, 3)
            if device == "cuda":
                entry["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
                torch.cuda.reset_peak_memory_stats()
        except Exception as exc:  # one failing variant must not lose the others' figures
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        result["variants"][variant] = entry
        print(json.dumps({variant: entry}), flush=True)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(result, fh, indent=2)
    result["total_s"] = round(time.monotonic() - t_start, 1)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
