"""The trainer's own code path on a GPU: one prepared script for a lent GPU machine.

Unlike ``gpu_bench.py`` (torch + moshi only), this runs the project's modules: MoshiTextPolicy,
KahanAdamW, train_step with bf16 autocast and per-layer torch.compile, exactly as the train stage
calls them. It needs the project's pure-Python dependencies on the machine (pydantic, minio,
moshi: carry their wheels). Checks, printed as JSON lines:

1. ``kahan``: 2000 steps of KahanAdamW at lr 5e-9 on CUDA move weights of magnitude ~1 by
   2000 x 5e-9 (plain AdamW: 0).
2. ``small``: a small Moshi-architecture LM (random weights) trained on a separable synthetic
   preference set with the trainer's step (fp32 masters, bf16 autocast, compile): the loss falls;
   step time and frames/s.
3. ``moshi7b``: the Moshi 7B configuration (random bf16 weights): MoshiTextPolicy.logps forward +
   backward of one pair (2 x T frames, reply windows over the second half) — frames/s and MFU,
   to compare with gpu_bench.py's figure for the same shapes.

    python components/train/gpu_check.py --out result.json
    python components/train/gpu_check.py --device cpu --quick     # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from components.common.config import load_config  # noqa: E402
from components.model.spec import build_lm, lm_kwargs  # noqa: E402
from components.streams.interleave import StreamLayout  # noqa: E402
from components.streams.pairset import PairTensors  # noqa: E402
from components.train.gpu_bench import PEAK_BF16  # noqa: E402
from components.train.losses import preference_loss  # noqa: E402
from components.train.moshi_policy import MoshiTextPolicy  # noqa: E402
from components.train.optim import KahanAdamW, make_optimizer  # noqa: E402
from components.train.step import score, train_step  # noqa: E402

CHOSEN, REJECTED, PAD, EPAD = 11, 17, 3, 0


def pairs(n: int, q: int, frames: int, card: int, lo: int, seed: int = 0) -> list[PairTensors]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        codes = rng.integers(0, card, size=(1 + 2 * q, frames)).astype(np.int32)
        codes[0] = PAD
        c, r = codes.copy(), codes.copy()
        for t in range(lo + 1, frames, 4):
            c[0, t - 1], r[0, t - 1] = EPAD, EPAD
            c[0, t], r[0, t] = CHOSEN, REJECTED
        out.append(PairTensors(f"p{i}", "content", c, r, np.array([lo, frames, lo, frames],
                                                                    np.int32)))
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def check_kahan(device: str) -> dict[str, Any]:
    out = {}
    for name in ("kahan", "plain"):
        w = torch.nn.Parameter(torch.full((1024,), 1.0, device=device))
        opt = KahanAdamW([w], lr=5e-9) if name == "kahan" else torch.optim.AdamW([w], lr=5e-9,
                                                                                   weight_decay=0)
        for _ in range(2000):
            w.grad = torch.ones_like(w)
            opt.step()
        out[f"{name}_moved"] = float((1.0 - w.detach()).mean())
    out["expected"] = 2000 * 5e-9
    return out


def check_small(device: str, steps: int, frames: int) -> dict[str, Any]:
    cfg = load_config("ci", overrides={"train.temporal_lr": 1e-3, "train.depformer_lr": 1e-3,
                                       "train.batch_size": 8, "train.micro_batch_size": 4})
    tc = cfg.train
    layout = StreamLayout(num_codebooks=8, text_card=32000, card=2048)
    lm = build_lm(lm_kwargs("small", layout, context=max(512, frames)), seed=0).to(device)
    policy = MoshiTextPolicy(lm, tc)
    autocast = torch.bfloat16 if device == "cuda" else None
    if device == "cuda":
        for layer in lm.transformer.layers:
            layer.compile()
    data = pairs(64, 8, frames, 2048, lo=frames // 2)
    ref_batches = [policy.collate(data[i : i + 4]) for i in range(0, 64, 4)]
    refs = [score(policy, b, autocast_dtype=autocast) for b in ref_batches]
    opt = make_optimizer(policy.param_groups(), tc)
    losses, times = [], []
    for s in range(steps):
        k = (2 * s) % len(ref_batches)
        sync(device)
        t0 = time.perf_counter()
        m = train_step(policy, opt, ref_batches[k : k + 2], refs[k : k + 2], tc,
                       autocast_dtype=autocast)
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(m.loss)
    warm = times[3:] or times
    frames_step = 8 * 2 * frames
    return {"params_dtype": str(next(lm.parameters()).dtype), "autocast": str(autocast),
            "first_loss": losses[0], "last_loss": losses[-1], "loss_fell": losses[-1] < losses[0],
            "first_step_s": round(times[0], 2), "step_s": round(float(np.median(warm)), 4),
            "frames_per_s": round(frames_step / float(np.median(warm)), 1)}


def check_7b(device: str, frames: int, iters: int) -> dict[str, Any]:
    from moshi.models import loaders
    from moshi.models.lm import LMModel

    tc = load_config("production").train
    kw: dict[str, Any] = dict(loaders._lm_kwargs)
    kw["context"] = 3000
    with torch.device(device):
        lm = LMModel(device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                     **kw)
    policy = MoshiTextPolicy(lm, tc)
    if device == "cuda":
        for layer in lm.transformer.layers:
            layer.compile()
    batch = policy.collate(pairs(1, 8, frames, 2048, lo=frames // 2)).to(device)
    n_temporal = (sum(p.numel() for p in lm.transformer.parameters())
                  + sum(p.numel() for p in lm.text_linear.parameters()))

    def once() -> float:
        out = policy.logps(batch)
        ref = out.detach()
        loss = preference_loss(tc, out, ref).loss
        loss.backward()
        for p in lm.parameters():
            p.grad = None
        return float(loss.detach())

    t0 = time.perf_counter()
    loss = once()
    first = time.perf_counter() - t0
    for _ in range(2):
        once()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        once()
    sync(device)
    step = (time.perf_counter() - t0) / iters
    positions = policy.positions(batch)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    out = {"loss": loss, "first_call_s": round(first, 1), "step_s": round(step, 4),
           "frames": positions, "frames_per_s": round(positions / step, 1),
           "mfu": round(6 * n_temporal * positions / step / peak, 3) if peak else None}
    if device == "cuda":
        out["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke test)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name() if args.device == "cuda"
                              else "cpu", "torch": torch.__version__}
    checks = [("kahan", lambda: check_kahan(args.device)),
              ("small", lambda: check_small(args.device, 6 if args.quick else 30,
                                            64 if args.quick else 256)),
              ("moshi7b", lambda: check_7b(args.device, 1250, 5))]
    if args.quick:
        checks = checks[:2]
    for name, fn in checks:
        t0 = time.monotonic()
        try:
            result[name] = fn()
        except Exception as exc:  # one failing check must not lose the others' figures
            result[name] = {"error": f"{type(exc).__name__}: {str(exc)[:800]}"}
        result[name]["seconds"] = round(time.monotonic() - t0, 1)
        print(json.dumps({name: result[name]}), flush=True)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
