"""``duplexalign bench ingest --sizes 1000,10000``: ingest throughput and peak memory vs N.

The corpus is built without synthesising anything new: a small seed batch is simulated once
(TTS cached, resumable) and ``replicate_corpus`` copies it SERVER-SIDE to each size, into its own
batch ``raw/bench-ingest-n<N>/`` of a dedicated bench bucket (idempotent: a rerun only re-copies
what a previous ingest deleted, i.e. the conversations of users without consent).

Every size is measured in a FRESH interpreter (``python -m pipelines.bench._ingest_child``), so
its peak RSS is its own; before each run the bench deletes every ingest marker of the bench bucket
(``state/ingest/``: per-item markers and the cross-run "seen" markers), so the run does the full
work and is not rejected as duplicates (replica ids are shared across replica batches). Figures:
seconds of the ingest() call, conversations/s, peak RSS, RSS after imports, the child's CPU
seconds and the local SeaweedFS's CPU seconds during the run (where the time goes on a small box),
and the share of the CPUs other processes took meanwhile. At the end the space of the audio the
stage erased (users without consent) is reclaimed (vacuum); the corpus itself is kept for reruns
(about 2.7 MB per conversation: server-side copies are full copies; 11,000 ≈ 30 GiB; drop it by
deleting the bucket ``<bucket>-bench-ingest``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from components.common.config import Config
from pipelines.bench.common import (
    OtherLoad,
    bench_bucket,
    emit,
    fmt,
    say,
    seaweedfs_cpu_seconds,
    table,
    with_bucket,
)

DEFAULT_SIZES = (1000, 10000)
SEED_CONVERSATIONS = 10
SEED_BATCH = "bench-ingest-seed"
FLAT_TOLERANCE = 0.10  # peak RSS of the largest size within +10 % of the smallest: "flat"
CONCURRENCY = 8  # what the pipeline uses (ingest's default)
CHILD_TIMEOUT_S = 1800.0
MIB = 1024 * 1024


def parse_sizes(text: str | None) -> list[int]:
    if not text:
        return list(DEFAULT_SIZES)
    sizes = [int(s) for s in str(text).replace(" ", "").split(",") if s]
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"--sizes must be positive integers, got {text!r}")
    return sizes


def _corpus(cfg: Config, seed_manifest_id: str, seed_n: int, n: int) -> str:
    """Raw manifest of exactly n replicated conversations in raw/bench-ingest-n<n>/."""
    from components.common.stagekit import ManifestWriter, iter_items, load_manifest
    from components.common.storage import ObjectStore
    from components.simulate.generate import replicate_corpus

    copies = -(-n // seed_n)
    manifest_id = replicate_corpus(cfg, seed_manifest_id, copies, batch=f"bench-ingest-n{n}",
                                   concurrency=8, progress=sys.stderr.isatty())
    if copies * seed_n == n:
        return manifest_id
    store = ObjectStore.from_config(cfg.storage)  # not a multiple of the seed: first n items
    writer = ManifestWriter(store, "raw", None)
    for i, item in enumerate(iter_items(store, load_manifest(store, manifest_id))):
        if i >= n:
            break
        writer.add_item(item)
    return writer.close({"source": "bench-ingest", "trimmed_from": manifest_id}).manifest_id


def _settle(cfg: Config, max_s: float = 30.0, idle_cpu: float = 0.1) -> float:
    """Wait until the local SeaweedFS is idle (under ``idle_cpu`` of a core for 1 s): deletes
    and copies are finished asynchronously by the server, and that work must not be billed to
    the measured run. Returns the seconds waited (0 when the store is not a local SeaweedFS)."""
    t0 = time.perf_counter()
    last = seaweedfs_cpu_seconds(cfg)
    if last is None:
        return 0.0
    quiet = 0
    while time.perf_counter() - t0 < max_s and quiet < 2:
        time.sleep(0.5)
        now = seaweedfs_cpu_seconds(cfg)
        if now is None:
            break
        quiet = quiet + 1 if now - last < idle_cpu * 0.5 else 0
        last = now
    return time.perf_counter() - t0


def _child_command() -> list[str]:
    return [sys.executable, "-m", "pipelines.bench._ingest_child"]


def _measure(cfg: Config, manifest_id: str, n: int, concurrency: int,
             timeout_s: float) -> dict[str, Any]:
    from components.common.storage import ObjectStore
    from components.contract import Keys

    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    payload = json.dumps({"config": cfg.to_json(), "manifest_id": manifest_id,
                          "concurrency": concurrency})
    server0 = seaweedfs_cpu_seconds(cfg)
    busy0, own0 = OtherLoad._busy(), OtherLoad._own()
    t0 = time.perf_counter()
    proc = subprocess.Popen(_child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=None, text=True, env=env)
    try:
        out, _ = proc.communicate(payload, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        wall = time.perf_counter() - t0
        store = ObjectStore.from_config(cfg.storage)
        done = sum(1 for _ in store.list(Keys.item_state_prefix("ingest", manifest_id)))
        say(f"N={n}: stopped after {wall:.0f} s (timeout); {done} items had finished")
        return {"n": n, "timed_out": True, "wall_s": round(wall, 1), "items_done": done,
                "conversations_per_s": round(done / wall, 1) if wall else None}
    wall = time.perf_counter() - t0
    server1 = seaweedfs_cpu_seconds(cfg)
    busy1, own1 = OtherLoad._busy(), OtherLoad._own()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"ingest child for N={n} failed (exit {proc.returncode})")
    child = json.loads(lines[-1])
    # CPU used by anything but the bench, its child and the object store (a shared box).
    others = ((busy1 - busy0) - (own1 - own0) - child.get("process_cpu_seconds", 0.0)
              - ((server1 or 0.0) - (server0 or 0.0)))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = child["counts"]
    return {
        "n": n,
        "timed_out": False,
        "seconds": round(child["seconds"], 2),
        "wall_s": round(wall, 2),
        "conversations_per_s": round(n / child["seconds"], 1),
        "processed": child["processed"],
        "skipped": child["skipped"],
        "accepted": counts.get("items", 0),
        "rejected": {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("rejected:")},
        "peak_rss_mib": round(child["peak_rss_bytes"] / MIB, 1),
        "rss_after_imports_mib": round(child["rss_after_imports_bytes"] / MIB, 1),
        "client_cpu_s": round(child["cpu_seconds"], 2),
        "seaweedfs_cpu_s": (round(server1 - server0, 2)
                            if server0 is not None and server1 is not None else None),
        "manifest_id": child["manifest_id"],
        "other_load": round(max(0.0, others) / (wall * (cpus or 1)), 3) if wall > 0 else None,
    }


def run_ingest_bench(cfg: Config, sizes: list[int] | None = None,
                     seed_conversations: int = SEED_CONVERSATIONS,
                     concurrency: int = CONCURRENCY,
                     timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    from components.common.storage import ObjectStore
    from components.simulate.generate import simulate_conversations

    sizes = list(sizes or DEFAULT_SIZES)
    bucket = bench_bucket(cfg, "ingest")
    bcfg = with_bucket(cfg, bucket)
    store = ObjectStore.from_config(bcfg.storage)
    store.ensure_bucket(versioning=True)
    say(f"seed batch: {seed_conversations} simulated conversations in s3://{bucket}/raw/{SEED_BATCH}/")
    seed = simulate_conversations(bcfg, n=seed_conversations, batch=SEED_BATCH, progress=False)
    results: list[dict[str, Any]] = []
    for n in sizes:
        t = time.perf_counter()
        say(f"N={n}: replicating the seed server-side into raw/bench-ingest-n{n}/ (resumable)")
        manifest_id = _corpus(bcfg, seed.manifest_id, seed_conversations, n)
        corpus_s = time.perf_counter() - t
        t = time.perf_counter()
        removed = store.delete_prefix_all_versions("state/ingest/")
        reset_s = time.perf_counter() - t
        settle_s = _settle(bcfg)
        say(f"N={n}: corpus {manifest_id} ready in {corpus_s:.1f} s; reset {removed} ingest "
            f"marker versions in {reset_s:.1f} s; store idle after {settle_s:.1f} s; "
            "ingest in a fresh process")
        r = _measure(bcfg, manifest_id, n, concurrency, timeout_s)
        r["corpus_s"] = round(corpus_s, 1)
        r["raw_manifest_id"] = manifest_id
        results.append(r)
        if not r["timed_out"]:
            say(f"N={n}: {r['seconds']:.1f} s, {r['conversations_per_s']:.1f} conv/s, "
                f"peak RSS {r['peak_rss_mib']:.1f} MiB")
    # The stage erased the raw audio of users without consent; on SeaweedFS the bytes stay on
    # disk until a vacuum (the ingest stage does not ask for one), so reclaim them now.
    say("reclaiming the space of the deleted audio (vacuum) and measuring the corpus")
    reclaimed: int | None = None
    try:
        reclaimed = store.reclaim_deleted_space()
    except Exception as exc:  # noqa: BLE001 - a maintenance step: report, do not fail the bench
        say(f"vacuum failed: {exc}")
    corpus_bytes = sum(o.size for o in store.list("raw/"))
    measured = [r for r in results if not r["timed_out"]]
    figures: dict[str, Any] = {"bench": "ingest", "bucket": bucket, "concurrency": concurrency,
                               "seed_conversations": seed_conversations, "sizes": results,
                               "cpus": os.cpu_count(), "corpus_gib": round(corpus_bytes / 2**30, 2),
                               "store_vacuum_bytes_reclaimed": reclaimed}
    if len(measured) >= 2:
        small, large = min(measured, key=lambda r: r["n"]), max(measured, key=lambda r: r["n"])
        ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
        figures["peak_rss_ratio"] = {"of": f"{large['n']}/{small['n']}", "ratio": round(ratio, 3),
                                     "verdict": "flat" if ratio <= 1 + FLAT_TOLERANCE else "grows",
                                     "tolerance": f"+{FLAT_TOLERANCE:.0%}"}
    return figures


def report(f: dict[str, Any]) -> str:
    rows = []
    for r in f["sizes"]:
        if r["timed_out"]:
            rows.append([str(r["n"]), f">{r['wall_s']:.0f} (timeout)", fmt(r["conversations_per_s"]),
                         "n/a", "n/a", "n/a", "n/a", "n/a", f"{r['items_done']} done"])
            continue
        rej = ", ".join(f"{k} {v}" for k, v in sorted(r["rejected"].items())) or "-"
        rows.append([str(r["n"]), f"{r['seconds']:.1f}", f"{r['conversations_per_s']:.1f}",
                     f"{r['peak_rss_mib']:.1f}", f"{r['rss_after_imports_mib']:.1f}",
                     f"{r['client_cpu_s']:.1f}", fmt(r["seaweedfs_cpu_s"], ".1f"),
                     "n/a" if r.get("other_load") is None else f"{100 * r['other_load']:.0f}%",
                     f"{r['accepted']} ok, {rej}"])
    lines = [
        f"ingest bench — ingest stage (thread pool of {f['concurrency']}), corpus replicated "
        f"server-side from {f['seed_conversations']} simulated conversations, each size in a "
        f"fresh process, {f['cpus']} CPUs",
        "",
        table(["N", "seconds", "conv/s", "peak RSS MiB", "RSS after imports MiB",
               "client CPU s", "SeaweedFS CPU s", "other processes' CPU", "outcome"], rows),
    ]
    lines += ["", f"corpus kept for reruns in s3://{f['bucket']}/raw/: {f['corpus_gib']} GiB "
                  "(server-side copies are full copies); store vacuum reclaimed "
                  f"{fmt(f['store_vacuum_bytes_reclaimed'])} bytes",
              "peak RSS = VmHWM of the ingest process; other processes' CPU = share of the "
                  "machine used by anything but the bench, its ingest process and the object store "
                  "(a shared box slows the run)"]
    ratio = f.get("peak_rss_ratio")
    if ratio:
        lines += ["", f"peak RSS ratio {ratio['of']}: {ratio['ratio']:.3f} -> {ratio['verdict']} "
                      f"(flat = within {ratio['tolerance']})"]
    return "\n".join(lines)


def main(cfg: Config, sizes: str | None) -> int:
    figures = run_ingest_bench(cfg, parse_sizes(sizes))
    emit(report(figures), figures)
    return 0
