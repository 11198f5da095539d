"""`duplexalign demo`: the whole platform on one machine, ending with one JSON line.

services up → bootstrap (or load the cached) embedded champion → the champion serves a fresh
batch of simulated users (its own conversations, logged) → run the pipeline on what it said with
KFP's local runner, which ends by serving the champion and the challenger with the predictor and
evaluating both on the same items, then the promotion gate → audit privacy everywhere a copy
could survive → the canary change for the challenger, GitOps-style (pipelines/demo_rollout.py)
→ a readable summary → the JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any

from components.common.config import Config
from components.common.storage import ObjectStore
from components.contract import Keys
from pipelines.audit import audit_run
from pipelines.demo_rollout import evaluation_figures, render_canary
from pipelines.lineage import manifest_chain
from pipelines.report import write_run_report
from pipelines.runner import run_local


def _say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def collect_figures(cfg: Config, final_manifest_id: str) -> dict[str, Any]:
    store = ObjectStore.from_config(cfg.storage)
    chain = manifest_chain(store, final_manifest_id)
    raw, ingest, transcribe, scrub = (chain.get(s) for s in ("raw", "ingest", "transcribe", "scrub"))
    judge, pairs, resynth, tokenize = (chain.get(s) for s in ("judge", "pairs", "resynthesize",
                                                              "tokenize"))
    trained = chain.get("train")
    train_stats = trained.stats if trained else {}
    validate, features, mix = chain.get("validate"), chain.get("features"), chain.get("mix")
    wer_key = Keys.report("transcribe", transcribe.manifest_id, "wer.json") if transcribe else None
    wer = store.get_json(wer_key)["wer"] if wer_key and store.exists(wer_key) else None
    rejected_by_code = {k.split(":", 1)[1]: v for k, v in (ingest.counts if ingest else {}).items()
                        if k.startswith("rejected:")}
    return {
        "conversations": raw.counts.get("items", 0) if raw else 0,
        "ingested": ingest.counts.get("items", 0) if ingest else 0,
        "rejected": ingest.counts.get("rejected", 0) if ingest else 0,
        "rejected_by_reason": rejected_by_code,
        "transcribed": transcribe.counts.get("items", 0) if transcribe else 0,
        "transcribe_failed": transcribe.counts.get("rejected", 0) if transcribe else 0,
        "scrubbed": scrub.counts.get("items", 0) if scrub else 0,
        "scrub_failed": scrub.counts.get("rejected", 0) if scrub else 0,
        "transcript_wer": wer,
        "judged": judge.counts.get("items", 0) if judge else 0,
        "judge_failures": (judge.stats.get("judge_failures", 0) + judge.counts.get("rejected", 0))
        if judge else 0,
        "pairs": pair_counts(pairs),
        "resynthesized": resynth.counts.get("items", 0) if resynth else 0,
        "pairs_dataset": tokenize.stats.get("pairs_dataset") if tokenize else None,
        "pairs_report": _report_uri(cfg, store, tokenize.manifest_id) if tokenize else None,
        "validation": validation_figures(validate),
        "features": features.stats.get("rows") if features else None,
        "training_mix": mix_figures(mix),
        "train_run_id": train_stats.get("train_run_id"),
        "stopped_at_step": train_stats.get("stopped_at_step"),
        "stop_reason": train_stats.get("stop_reason"),
        "heldout_pair_accuracy": train_stats.get("heldout_pair_accuracy"),
        "challenger_version": train_stats.get("challenger_version"),
        "train_report": train_stats.get("report"),
        "evaluation": chain["evaluate"].stats if "evaluate" in chain else None,
        "manifests": {stage: m.manifest_id for stage, m in chain.items()},
        "stage_seconds": {stage: m.stats.get("seconds") for stage, m in chain.items()
                          if m.stats.get("seconds") is not None},
    }


def _report_uri(cfg: Config, store: ObjectStore, tokenize_manifest_id: str) -> str | None:
    """The pairs report the pipeline's report task wrote (also a KFP HTML artefact)."""
    key = Keys.report("pairs", tokenize_manifest_id, "pairs.html")
    return f"s3://{cfg.storage.bucket}/{key}" if store.exists(key) else None


def validation_figures(validate: Any) -> dict[str, Any] | None:
    """The gate's verdict: expectations passed, those that failed (by name and severity)."""
    if validate is None:
        return None
    stats = validate.stats
    return {"passed": len(stats.get("passed", [])),
            "failed": [f["name"] if isinstance(f, dict) else f for f in stats.get("failed", [])],
            "critical_failed": list(stats.get("critical_failed", [])),
            "report": stats.get("report")}


def mix_figures(mix: Any) -> dict[str, Any] | None:
    """The training mix: pairs kept by type and why the others were left out."""
    if mix is None:
        return None
    return {"by_type": dict(mix.stats.get("by_type", {})), "pairs": mix.counts.get("items", 0),
            "excluded": dict(mix.stats.get("excluded", {})),
            "dataset_version": mix.stats.get("dataset_version")}


def pair_counts(pairs: Any) -> dict[str, int]:
    """Pairs by the paper's type letters (A content, B interruption, C silence), from the pairs
    stage's stats."""
    by_type = (pairs.stats.get("by_type", {}) if pairs else {}) or {}
    return {letter: int(by_type.get(letter, 0)) for letter in ("A", "B", "C")}


def run_demo(cfg: Config, conversations: int | None = None) -> int:
    from components.bootstrap.logic import bootstrap
    from components.simulate.live import simulate_with_policy
    from pipelines.services.manager import config_with_live_endpoints, services_up

    t0 = time.monotonic()
    _say("starting local services (SeaweedFS S3, MLflow)")
    services_up(cfg)
    cfg = config_with_live_endpoints(cfg)

    _say("bootstrapping the embedded base model (cached by content hash)")
    t_boot = time.monotonic()
    boot = bootstrap(cfg)
    boot_s = time.monotonic() - t_boot

    batch = "demo-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    n = conversations or cfg.simulate.conversations
    _say(f"the champion serves {n} simulated users; their conversations go to raw/{batch}/")
    t_sim = time.monotonic()
    sim = simulate_with_policy(cfg, "champion", n=n, batch=batch)
    sim_s = time.monotonic() - t_sim

    _say(f"running the pipeline on {sim.manifest_id} with KFP's local runner")
    t_run = time.monotonic()
    final = run_local(cfg, sim.manifest_id, groundtruth_bucket=cfg.storage.groundtruth_bucket)
    run_s = time.monotonic() - t_run

    figures = collect_figures(cfg, final)
    figures["alignment_bench"] = latest_alignment_bench(cfg)
    _say("writing the run report and logging the run to MLflow")
    figures["report"] = f"s3://{cfg.storage.bucket}/" + write_run_report(cfg, figures)
    _say("auditing: user audio and planted PII in every object version, the pipeline root and logs")
    audit = audit_run(cfg)
    figures.update(raw_user_audio_left=audit.raw_user_audio_left, pii_left=audit.pii_left)

    _say("champion and challenger were served by the predictor and evaluated on the same "
         "items; the gate's decision")
    t_eval = time.monotonic()
    figures.update(evaluation_figures(cfg, figures.pop("evaluation")))
    eval_s = time.monotonic() - t_eval
    _say("the canary change for the challenger (GitOps: written, never applied)")
    canary = render_canary(cfg, figures["gate"])
    figures["canary"] = canary
    figures["canary_manifest"] = canary["manifest"]
    figures["champion_version"] = boot.version
    figures["champion_cached"] = boot.cached
    figures["served"] = {"model_version": sim.model_version, "labels": sim.labels,
                         "ms_per_frame": sim.ms_per_frame}
    figures["seconds"] = {"bootstrap": round(boot_s, 1), "simulate": round(sim_s, 1),
                          "pipeline": round(run_s, 1), "evaluate": round(eval_s, 1),
                          "total": round(time.monotonic() - t0, 1)}

    print_summary(figures, audit.findings)
    print(json.dumps(figures, sort_keys=True))
    ok = audit.raw_user_audio_left == 0 and audit.pii_left == 0
    return 0 if ok else 1


def latest_alignment_bench(cfg: Config) -> dict[str, Any]:
    """The newest `duplexalign bench alignment` report (the paper's table over seeds and
    ablations: the evidence beyond this run's single before/after), or how to make one."""
    from pipelines.bench.alignment.report import latest_report

    latest = latest_report(cfg)
    if latest is None:
        return {"report": None,
                "how": "duplexalign bench alignment (resumable; docs/alignment-bench.md)"}
    return latest


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _validation_line(v: dict[str, Any] | None) -> str:
    if v is None:
        return "n/a"
    failed = ", ".join(v["failed"]) or "none"
    return f"{v['passed']} expectations passed; failed: {failed} ({v['report']})"


def _mix_line(m: dict[str, Any] | None) -> str:
    if m is None:
        return "n/a"
    return f"{m['pairs']} pairs {m['by_type']}; left out {m['excluded'] or 'none'}"


RATES = ("qa_seen", "qa_new", "refusal_unsafe", "over_refusal_benign", "interruption", "silence",
         "replay_length")


def _eval_lines(f: dict[str, Any]) -> list[str]:
    """Champion vs challenger per metric, with the gate's Δ and interval where it decided."""
    ev, gate = f.get("eval") or {}, f.get("gate") or {}
    champ, chall = ev.get("champion") or {}, ev.get("challenger") or {}
    lines = [f"  evaluation (served)    {'metric':<20} {'champion':>9} {'challenger':>11}   "
             "gate Δ [interval]"]
    for m in RATES:
        d = (gate.get("metrics") or {}).get(m) or {}
        ci = d.get("ci") or [None, None]
        gate_txt = (f"{_fmt(d.get('delta'))} [{_fmt(ci[0])}, {_fmt(ci[1])}] {d.get('status')}"
                    if d else "")
        lines.append(f"  {'':<22} {m:<20} {_fmt(champ.get(m)):>9} {_fmt(chall.get(m)):>11}   "
                     f"{gate_txt}")
    lines.append(f"  promotion gate         {gate.get('verdict', 'n/a')}: "
                 f"{'; '.join(gate.get('reasons') or []) or 'n/a'}")
    canary = f.get("canary") or {}
    state = ("proposed (commit-ready in " + str(canary.get("repo")) + ")" if canary.get("proposed")
             else f"not proposed — {canary.get('reason', 'n/a')}")
    lines.append(f"  canary                 {state}")
    lines.append(f"  canary manifest        {f.get('canary_manifest') or 'n/a'}")
    return lines


def _bench_line(b: dict[str, Any]) -> str:
    if not b.get("report"):
        return f"not run yet: {b.get('how', 'duplexalign bench alignment')}"
    pending = b.get("pending") or []
    return (f"{b['report']} (MLflow run {b.get('mlflow_run_id')}; {b.get('cells')} cells"
            + (f", {len(pending)} still to run)" if pending else ")"))


def print_summary(f: dict[str, Any], findings: list[str]) -> None:
    wer = f["transcript_wer"]
    lines = [
        "",
        "duplexalign demo — summary",
        f"  conversations logged   {f['conversations']}",
        f"  ingested               {f['ingested']}",
        f"  rejected               {f['rejected']}  {f['rejected_by_reason'] or ''}",
        f"  transcribed            {f['transcribed']}   (WER before redaction: "
        f"{'n/a' if wer is None else f'{wer:.3f}'})",
        f"  scrubbed               {f['scrubbed']}",
        f"  judged                 {f['judged']}   (judge failures: {f['judge_failures']})",
        f"  preference pairs       A content {f['pairs']['A']}, B interruption "
        f"{f['pairs']['B']}, C silence {f['pairs']['C']}; resynthesised {f['resynthesized']}",
        f"  pairs dataset          {f['pairs_dataset'] or 'n/a'}",
        f"  pairs report           {f['pairs_report'] or 'n/a'} (KFP HTML artefact, MLflow)",
        f"  data quality gate      {_validation_line(f['validation'])}",
        f"  training mix           {_mix_line(f['training_mix'])}",
        f"  training               stopped at step {f['stopped_at_step']}: {f['stop_reason']}; "
        f"held-out pair accuracy {_fmt(f['heldout_pair_accuracy'])}",
        f"  challenger             version {f['challenger_version']} (MLflow run "
        f"{f['train_run_id']}; curves {f['train_report']})",
        f"  raw user audio left    {f['raw_user_audio_left']}  (every object version + pipeline root)",
        f"  planted PII left       {f['pii_left']}  (every stored text, normalised)",
        f"  report                 {f['report']} (also in MLflow)",
        f"  alignment bench        {_bench_line(f.get('alignment_bench') or {})}",
        f"  champion               {f['champion_version']}"
        f"{' (cached)' if f['champion_cached'] else ' (trained now)'}",
        f"  time                   bootstrap {f['seconds']['bootstrap']}s, simulate "
        f"{f['seconds']['simulate']}s, pipeline {f['seconds']['pipeline']}s, evaluate "
        f"{f['seconds']['evaluate']}s, total {f['seconds']['total']}s",
    ]
    for stage, secs in f["stage_seconds"].items():
        lines.append(f"    {stage:<20} {secs:.1f}s")
    lines.extend(_eval_lines(f))
    for finding in findings[:20]:
        lines.append(f"  ! {finding}")
    print("\n".join(lines))
