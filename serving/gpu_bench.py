"""Serving throughput of Moshi 7B on one GPU: the per-80 ms-frame step, batched vs one per stream.

Standalone: needs only torch and the ``moshi`` package (the GPU machines have torch but not
moshi: carry its wheel), so it runs where the project does not install. Random weights, bf16, the
LM built directly on the device. For each batch size B it times, per 80 ms frame (host clock
around the step, synchronised by the tokens' copy to the host as serving/batcher.py does):

* ``batched``: ONE ``LMGen`` at batch B stepping B streams together — what serving/batcher.py's
  ``BatchedLM`` runs every frame (``set_exec_mask`` + ``step``, sampling on, top-k as Moshi's
  defaults, ``support_out_of_sync``), with moshi's CUDA graphs (``LMGen`` graphs the temporal
  transformer and the depth transformer on CUDA unless ``NO_CUDA_GRAPH`` is set);
* ``baseline``: B separate batch-1 ``LMGen`` instances stepped one after another per frame — one
  ``DuplexSession`` per connection. They share the one set of weights (a 7B copy per stream does
  not fit): each keeps its own streaming state (KV caches, CUDA graphs), swapped into the LM
  before its step. Stops after the first B whose p99 exceeds the frame;
* ``eager``: the batched step with the CUDA graphs off (moshi's ``no_cuda_graph``), a few B;
* ``mimi``: the codec's streaming encode (1920 samples) + decode (8 codebooks) at batch B, one
  Mimi with random weights and its own CUDA graphs; reported apart (serving runs it in the same
  frame, so frame ≈ LM + Mimi).

moshi's KV cache is a ring of ``context`` (3000 frames for Moshi 7B) per layer, allocated whole
and read whole every step: 1.57 GB of bf16 per stream, so a B that does not fit in the device's
memory is skipped with the memory it needs; ``--short-context`` reruns the given batch sizes with
a shorter ring (a serving knob: less memory per stream and less attention work).

``NO_TORCH_COMPILE`` defaults to 1 here (moshi's lazy ``torch.compile`` of RoPE, gating and
RMSNorm: off); set ``NO_TORCH_COMPILE=`` (empty) to leave moshi's compiles on.

    python serving/gpu_bench.py --size moshi-7b --out serve-gpu.json
    python serving/gpu_bench.py --size tiny --device cpu --batches 1,4 --steps 8   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi: its lazy compiles off by default

import torch

FRAME_MS = 80.0
FRAME_SAMPLES = 1920
# Small shapes for a CPU smoke test (dim, layers, heads); "moshi-7b" is Kyutai's config.
_SMALL = {"tiny": (128, 2, 4), "small": (256, 4, 4)}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_lm(size: str, context: int, device: str, dtype: torch.dtype) -> Any:
    from moshi.models import loaders
    from moshi.models.lm import LMModel

    kwargs = copy.deepcopy(loaders._lm_kwargs)
    kwargs["context"] = context
    kwargs.pop("gradient_checkpointing", None)
    if size != "moshi-7b":
        dim, layers, heads = _SMALL[size]
        kwargs.update(dim=dim, num_layers=layers, num_heads=heads, depformer_dim=64,
                      depformer_num_layers=1, depformer_num_heads=2,
                      depformer_dim_feedforward=256)
    with torch.device(device):
        lm = LMModel(device=device, dtype=dtype, **kwargs)
    return lm.eval()


def build_mimi(device: str) -> Any:
    from moshi.models.loaders import get_mimi

    torch.manual_seed(2)
    return get_mimi(None, device=device, num_codebooks=8)


def set_context(lm: Any, context: int) -> None:
    from moshi.modules.transformer import set_attention_context

    set_attention_context(lm.transformer, context)  # the depth transformer keeps its own


def kv_bytes_per_stream(lm: Any, context: int) -> int:
    """The temporal transformer's ring KV cache of one stream (the depformer's is negligible)."""
    layers = len(lm.transformer.layers)
    attn = lm.transformer.layers[0].self_attn
    itemsize = next(lm.transformer.parameters()).dtype.itemsize
    return 2 * layers * attn.embed_dim * context * itemsize


def pcts(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]

    return {"p50_ms": round(q(0.5) * 1e3, 2), "p99_ms": round(q(0.99) * 1e3, 2),
            "mean_ms": round(sum(s) / len(s) * 1e3, 2), "max_ms": round(s[-1] * 1e3, 2),
            "n": len(s)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def new_gen(lm: Any, out_of_sync: bool, sampling: bool = True) -> Any:
    from moshi.models.lm import LMGen

    return LMGen(lm, use_sampling=sampling, temp=0.8, temp_text=0.7, top_k=250, top_k_text=25,
                 support_out_of_sync=out_of_sync)


def attach(lm: Any, gen: Any) -> tuple[Any, dict]:
    """Enter ``gen``'s batch-1 streaming and detach the LM's states it created, so that another
    instance can enter its own; ``lm.set_streaming_state(state)`` before each of its steps."""
    stack = gen.streaming(1)  # enters lm.streaming(1): the LM's states are this instance's
    state = lm.get_streaming_state()
    lm._stop_streaming()
    return stack, state


@torch.no_grad()
def check_isolation(lm: Any, steps: int, device: str) -> dict[str, Any]:
    """The baseline's state swapping keeps the instances apart (greedy, graphs as configured):
    A fed X interleaved with B fed Y gives the tokens that C fed X alone gives afterwards."""
    q_in = lm.num_codebooks - lm.dep_q - 1
    g = torch.Generator(device="cpu").manual_seed(7)
    xs = [torch.randint(0, lm.card, (1, q_in, 1), generator=g).to(device) for _ in range(steps)]
    ys = [torch.randint(0, lm.card, (1, q_in, 1), generator=g).to(device) for _ in range(steps)]
    runs: dict[str, list] = {"A": [], "B": [], "C": []}
    insts = {k: (new_gen(lm, False, sampling=False),) for k in "AB"}
    attached = {k: (gen[0], *attach(lm, gen[0])) for k, gen in insts.items()}
    for i in range(steps):
        for k, inp in (("A", xs[i]), ("B", ys[i])):
            gen, _, state = attached[k]
            lm.set_streaming_state(state)
            out = gen.step(inp)
            if out is not None:
                runs[k].append(out[0, :, 0].tolist())
    for gen, stack, state in attached.values():
        lm.set_streaming_state(state)
        stack.close()
    lm._stop_streaming()
    gen_c = new_gen(lm, False, sampling=False)
    with gen_c.streaming(1):
        for i in range(steps):
            out = gen_c.step(xs[i])
            if out is not None:
                runs["C"].append(out[0, :, 0].tolist())
    return {"steps": steps, "A_equals_C": runs["A"] == runs["C"],
            "A_differs_from_B": runs["A"] != runs["B"], "frames_compared": len(runs["C"])}


def code_pool(lm: Any, batch: int, n: int, device: str) -> list[torch.Tensor]:
    q_in = lm.num_codebooks - lm.dep_q - 1
    g = torch.Generator(device="cpu").manual_seed(batch)
    return [torch.randint(0, lm.card, (batch, q_in, 1), generator=g).to(device) for _ in range(n)]


@torch.no_grad()
def time_batched(lm: Any, batch: int, steps: int, warmup: int, device: str) -> dict[str, Any]:
    """ONE LMGen at batch ``batch``: set_exec_mask + step per frame, as BatchedLM._step."""
    gen = new_gen(lm, out_of_sync=True)
    pool = code_pool(lm, batch, 16, device)
    mask = torch.ones(batch, dtype=torch.bool, device=device)
    times: list[float] = []
    t_first = time.perf_counter()
    first = 0.0
    with gen.streaming(batch):
        for i in range(warmup + steps):
            sync(device)
            t0 = time.perf_counter()
            gen.set_exec_mask(mask)
            out = gen.step(pool[i % len(pool)])
            tokens = out[:, :, 0].to("cpu")  # the host copy serving makes (a sync)
            dt = time.perf_counter() - t0
            if i == 1:
                first = time.perf_counter() - t_first  # eager step + graph capture
            if i >= warmup:
                times.append(dt)
    assert tokens.shape[0] == batch
    entry: dict[str, Any] = pcts(times)
    entry["first_two_steps_s"] = round(first, 2)
    del gen, pool
    return entry


@torch.no_grad()
def time_baseline(lm: Any, gens: list, batch: int, steps: int, warmup: int,
                  device: str) -> dict[str, Any]:
    """``batch`` batch-1 LMGen instances (one per connection) stepped one after another per
    frame; instances (and their graphs) are kept in ``gens`` across batch sizes."""
    while len(gens) < batch:
        g = new_gen(lm, out_of_sync=False)
        gens.append((g, *attach(lm, g)))
    pool = code_pool(lm, 1, 16, device)
    times: list[float] = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        for g, _, state in gens[:batch]:
            lm.set_streaming_state(state)
            out = g.step(pool[i % len(pool)])
            if out is not None:
                out[:, :, 0].to("cpu")  # each session copies its tokens (a sync per stream)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    lm._stop_streaming()
    return pcts(times)


@torch.no_grad()
def time_mimi(mimi: Any, batch: int, steps: int, warmup: int, device: str) -> dict[str, Any]:
    """Streaming encode of one frame of audio + decode of one frame of 8 codebooks, batch B."""
    g = torch.Generator(device="cpu").manual_seed(batch)
    pcm = [(0.1 * torch.randn(batch, 1, FRAME_SAMPLES, generator=g)).to(device)
           for _ in range(8)]
    enc: list[float] = []
    both: list[float] = []
    with mimi.streaming(batch):
        for i in range(warmup + steps):
            sync(device)
            t0 = time.perf_counter()
            codes = mimi.encode(pcm[i % len(pcm)])
            codes.to("cpu")
            t1 = time.perf_counter()
            audio = mimi.decode(codes[:, :8])
            audio.to("cpu")
            t2 = time.perf_counter()
            if i >= warmup:
                enc.append(t1 - t0)
                both.append(t2 - t0)
    return {"encode": pcts(enc), "encode_decode": pcts(both)}


def measure_bandwidth(device: str) -> float | None:
    """Device-to-device copy, bytes read + written per second (the step's floor is bytes)."""
    if device != "cuda":
        return None
    x = torch.empty(2 * 2**30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    bw = 2 * x.numel() * 10 / (time.perf_counter() - t0)
    del x, y
    free(device)
    return bw


def realtime(entries: dict[str, Any], key: str = "p99_ms") -> int:
    ok = [int(b) for b, e in entries.items() if key in e and e[key] <= FRAME_MS]
    return max(ok, default=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="moshi-7b", choices=["moshi-7b", *_SMALL])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--context", type=int, default=3000, help="the KV ring (Moshi 7B: 3000)")
    ap.add_argument("--batches", default="1,8,16,32,40,48,64")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--baseline-batches", default="1,2,4,6,8,10,12,16,24,32")
    ap.add_argument("--baseline-steps", type=int, default=30)
    ap.add_argument("--eager-batches", default="1,32", help="batched with CUDA graphs off")
    ap.add_argument("--short-context", type=int, default=1500)
    ap.add_argument("--short-batches", default="32,48,64")
    ap.add_argument("--mimi-batches", default="1,8,16,32,48,64", help="empty: no Mimi")
    ap.add_argument("--budget-s", type=float, default=400.0, help="skip phases after this long")
    ap.add_argument("--out", default="", help="write the results as JSON here (after each phase)")
    args = ap.parse_args(argv)

    t_start = time.monotonic()
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    import moshi
    from moshi.utils.compile import _is_cuda_graph_enabled, no_cuda_graph

    result: dict[str, Any] = {
        "what": "serving: Moshi-architecture LM step per 80 ms frame, random weights",
        "device": name, "torch": torch.__version__, "moshi": moshi.__version__,
        "size": args.size, "dtype": str(dtype), "context": args.context,
        "env": {"NO_TORCH_COMPILE": os.environ.get("NO_TORCH_COMPILE"),
                "NO_CUDA_GRAPH": os.environ.get("NO_CUDA_GRAPH")},
        "cuda_graphs": device == "cuda" and _is_cuda_graph_enabled(),
        "steps": args.steps, "warmup": args.warmup}
    if device == "cuda":
        result["hbm_copy_bytes_per_s"] = measure_bandwidth(device)
        result["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory
                                         / 2**30, 1)
    torch.manual_seed(0)
    t0 = time.monotonic()
    lm = build_lm(args.size, args.context, device, dtype)
    result["build_s"] = round(time.monotonic() - t0, 1)
    n_params = sum(p.numel() for p in lm.parameters())
    kv = kv_bytes_per_stream(lm, args.context)
    result.update(total_params=n_params, weight_bytes=n_params * dtype.itemsize,
                  kv_bytes_per_stream=kv)
    print(json.dumps(result), flush=True)

    def save() -> None:
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(result, fh, indent=2)

    def over_budget() -> bool:
        return time.monotonic() - t_start > args.budget_s

    def fits(batch: int, per_stream: int) -> tuple[bool, float]:
        need = batch * per_stream * 1.05 + 1.5 * 2**30  # graphs' pools and activations
        if device != "cuda":
            return True, need / 2**30
        free_b, _ = torch.cuda.mem_get_info()
        return need < free_b, need / 2**30

    def floor_ms(batch: int, per_stream: int) -> float | None:
        bw = result.get("hbm_copy_bytes_per_s")
        if not bw:
            return None  # weights + KV read once per step, at the measured copy rate
        return round((result["weight_bytes"] + batch * per_stream) / bw * 1e3, 2)

    def sweep(label: str, batches: list[int], per_stream: int, graphs: bool = True) -> None:
        entries: dict[str, Any] = {}
        result[label] = entries
        for b in batches:
            if over_budget():
                entries[str(b)] = {"skipped": "time budget"}
                continue
            ok, need = fits(b, per_stream)
            if not ok:
                entries[str(b)] = {"skipped": f"out of memory: needs about {need:.1f} GiB "
                                              f"(KV cache {b * per_stream / 2**30:.1f} GiB)"}
                print(json.dumps({label: {b: entries[str(b)]}}), flush=True)
                continue
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                if graphs:
                    e = time_batched(lm, b, args.steps, args.warmup, device)
                else:
                    with no_cuda_graph():
                        e = time_batched(lm, b, args.steps, args.warmup, device)
                e["floor_ms"] = floor_ms(b, per_stream)
                if device == "cuda":
                    e["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            except torch.OutOfMemoryError as exc:
                e = {"error": f"OutOfMemoryError: {str(exc)[:200]}"}
            except Exception as exc:  # one failing size must not lose the others
                e = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            free(device)
            entries[str(b)] = e
            print(json.dumps({label: {b: e}}), flush=True)
            save()

    # (a) ONE LMGen at batch B, CUDA graphs on.
    sweep("batched", _ints(args.batches), kv)
    result["realtime_streams_batched"] = realtime(result["batched"])

    # (b) baseline: one batch-1 LMGen per stream, stepped in turn.
    try:
        result["baseline_isolation_check"] = check_isolation(lm, 12, device)
    except Exception as exc:
        result["baseline_isolation_check"] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
    print(json.dumps({"baseline_isolation_check": result["baseline_isolation_check"]}),
          flush=True)
    free(device)
    gens: list = []
    base: dict[str, Any] = {}
    result["baseline"] = base
    for b in _ints(args.baseline_batches):
        if over_budget():
            base[str(b)] = {"skipped": "time budget"}
            break
        ok, need = fits(b - len(gens), kv)
        if not ok:
            base[str(b)] = {"skipped": f"out of memory: needs about {need:.1f} GiB more"}
            break
        try:
            e = time_baseline(lm, gens, b, args.baseline_steps, 3, device)
        except Exception as exc:
            base[str(b)] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            break
        base[str(b)] = e
        print(json.dumps({"baseline": {b: e}}), flush=True)
        save()
        if e["p99_ms"] > FRAME_MS:
            break
    for _, stack, state in gens:
        lm.set_streaming_state(state)
        stack.close()
    lm._stop_streaming()
    del gens
    free(device)
    result["realtime_streams_baseline"] = realtime(base)
    save()

    # (a') the same batched step with moshi's CUDA graphs off.
    if device == "cuda" and args.eager_batches:
        sweep("batched_eager", _ints(args.eager_batches), kv, graphs=False)

    # (a'') a shorter KV ring for the sizes the full one cannot hold.
    if args.short_batches and args.short_context and args.short_context < args.context:
        set_context(lm, args.short_context)
        sweep(f"batched_context_{args.short_context}", _ints(args.short_batches),
              kv_bytes_per_stream(lm, args.short_context))
        result[f"realtime_streams_batched_context_{args.short_context}"] = realtime(
            result[f"batched_context_{args.short_context}"])
        set_context(lm, args.context)

    # Mimi, apart (the LM's memory freed first: Mimi's is small).
    if args.mimi_batches and not over_budget():
        del lm
        free(device)
        mimi_e: dict[str, Any] = {}
        result["mimi"] = mimi_e
        try:
            mimi = build_mimi(device)
            for b in _ints(args.mimi_batches):
                if over_budget():
                    mimi_e[str(b)] = {"skipped": "time budget"}
                    continue
                e = time_mimi(mimi, b, args.steps, args.warmup, device)
                mimi_e[str(b)] = e
                print(json.dumps({"mimi": {b: e}}), flush=True)
                save()
        except Exception as exc:
            mimi_e["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        # A frame in serving = LM step + Mimi encode/decode (sequential, each synchronised):
        # sum of the two p99s, an upper bound of the frame's p99.
        frame: dict[str, Any] = {}
        for b, e in result["batched"].items():
            m = mimi_e.get(b, {}).get("encode_decode")
            if "p99_ms" in e and m:
                frame[b] = {"p50_ms": round(e["p50_ms"] + m["p50_ms"], 2),
                            "p99_ms": round(e["p99_ms"] + m["p99_ms"], 2)}
        result["frame_lm_plus_mimi"] = frame
        result["realtime_streams_with_mimi"] = realtime(frame)

    result["total_s"] = round(time.monotonic() - t_start, 1)
    save()
    summary = {k: result[k] for k in result if k.startswith("realtime")}
    summary["batched_p50_p99_ms"] = {b: [e.get("p50_ms"), e.get("p99_ms")]
                                     for b, e in result["batched"].items()}
    summary["baseline_p50_p99_ms"] = {b: [e.get("p50_ms"), e.get("p99_ms")]
                                      for b, e in result["baseline"].items()}
    print(json.dumps(summary), flush=True)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
