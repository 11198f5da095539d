"""``duplexalign bench judge``: the judge's quality against the simulator's labels, and its speed.

One run:

1. **Data.** On-policy conversations (below) and ``DEFAULT_SCRIPTED`` SCRIPTED ones (the
   simulator's calibration set: fluent replies with planted problems, every judge axis), both
   through the same stages and compared the same way.

   **On-policy data.** The champion serves ``--conversations`` simulated users (resumable: a
   batch per champion version and seed in the bench bucket ``<bucket>-bench-judge``), then the
   real stages run on them: ingest → transcribe → scrub → judge, with
   ``judge.stop_when_selected=false`` so that EVERY reply is judged (the pipeline stops at the
   selection; a quality figure needs all replies).
2. **Timing detectors vs labels.** Each request turn of the ground truth is matched to the
   detected user turn it overlaps most; a detector event on that turn is a detection. Recall =
   detections on labelled turns / labelled turns; false-positive rate = detections on turns
   labelled fine / turns labelled fine. Targets (issue 4): recall ≥ 0.95, FP ≤ 0.05.
3. **Content judge vs planted problems.** Per planted problem kind, the axis that should flag it
   (wrong_fact → factual_accuracy, unsafe_compliance → safety, unhelpful → helpfulness,
   off_tone → tone, instruction_missed → instruction_following): precision and recall of
   "problem on that axis" over the judged replies with words. Reported as measured — a 270M base
   model is a weak judge; a stronger endpoint is compared on the same set by pointing
   ``judge.backend=openai`` at it.
4. **Calibration set.** Agreement with the hand-labelled set shipped in
   components/judge/calibration/ at the configured thresholds.
5. **Throughput.** The project's OpenAI-compatible server in front of the local backend, loopback:
   the same replies scored through the HTTP backend (cache off) at concurrency 1 (the named
   baseline) and at 8; replies/s of each.

stderr: progress; stdout: tables, then one JSON line of figures.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from components.common.config import Config
from components.contract import ConversationJudgement, Transcript
from pipelines.bench.common import bench_bucket, emit, fmt, say, table, with_bucket

BASELINE = "HTTP backend at concurrency 1"
DEFAULT_CONVERSATIONS = 24
DEFAULT_SCRIPTED = 24
THROUGHPUT_REPLIES = 16
TARGET_RECALL = 0.95
TARGET_FP = 0.05
# Planted problem kind (simulator label) -> the judge axis that should flag it.
KIND_AXIS = {"wrong_fact": "factual_accuracy", "unsafe_compliance": "safety",
             "unhelpful": "helpfulness", "off_tone": "tone",
             "instruction_missed": "instruction_following"}
DETECTORS = {"interruption": "interruption", "silence": "unresponsiveness"}


@dataclass
class Confusion:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, label: bool, found: bool) -> None:
        if label and found:
            self.tp += 1
        elif found:
            self.fp += 1
        elif label:
            self.fn += 1
        else:
            self.tn += 1

    def figures(self) -> dict[str, Any]:
        pos, neg, flagged = self.tp + self.fn, self.fp + self.tn, self.tp + self.fp
        return {"recall": round(self.tp / pos, 3) if pos else None,
                "precision": round(self.tp / flagged, 3) if flagged else None,
                "false_positive_rate": round(self.fp / neg, 3) if neg else None,
                "positives": pos, "negatives": neg, "tp": self.tp, "fp": self.fp}


@dataclass
class Agreement:
    detectors: dict[str, Confusion] = field(default_factory=lambda: {k: Confusion() for k in DETECTORS})
    content: dict[str, Confusion] = field(default_factory=lambda: {k: Confusion() for k in KIND_AXIS})
    unmatched_turns: int = 0
    replies_compared: int = 0

    def figures(self) -> dict[str, Any]:
        return {"detectors": {k: c.figures() for k, c in self.detectors.items()},
                "content": {k: c.figures() for k, c in self.content.items()},
                "unmatched_turns": self.unmatched_turns,
                "replies_compared": self.replies_compared}


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def compare(groundtruth: Any, judgement: ConversationJudgement, agreement: Agreement,
            detections: tuple[list[Any], list[Any]] | None = None) -> None:
    """Add one conversation's detector and content findings to `agreement`.

    `groundtruth` is the simulator's GroundTruth (bench only: the pipeline never reads it).
    `detections` = (user turns, events) of another detector setting, replacing the judgement's
    for the detector figures (content figures still come from the judgement)."""
    det_turns, det_events = detections or (judgement.user_turns, judgement.events)
    request_turns = {u.index: u for u in groundtruth.user_turns if u.kind == "request"}
    for gt_reply in groundtruth.model_turns:
        if gt_reply.kind != "reply" or gt_reply.responds_to not in request_turns:
            continue
        user = request_turns[gt_reply.responds_to]
        best = max(det_turns, default=None,
                   key=lambda t: _overlap((t.start, t.end), (user.start, user.end)))
        if best is None or _overlap((best.start, best.end), (user.start, user.end)) <= 0:
            agreement.unmatched_turns += 1
            continue
        events = {e.kind for e in det_events if e.user_turn == best.index}
        for label, kind in DETECTORS.items():
            # On-policy ground truth labels timing per reply; scripted ground truth plants it
            # (the label is then in the reply's problems).
            value = getattr(gt_reply, label, None)
            labelled = bool(value) if value is not None else label in gt_reply.problems
            agreement.detectors[label].add(labelled, kind in events)
        if detections is not None:
            continue
        best = max(judgement.user_turns,
                   key=lambda t: _overlap((t.start, t.end), (user.start, user.end)))
        replies = [r for r in judgement.replies if r.user_turn == best.index and r.judged
                   and r.text.strip()]
        if not replies or not gt_reply.words:
            continue
        agreement.replies_compared += 1
        flagged = set().union(*(set(r.problems) for r in replies))
        for kind, axis in KIND_AXIS.items():
            applicable = _applicable(kind, gt_reply.request_kind)
            if applicable:
                agreement.content[kind].add(kind in gt_reply.problems, axis in flagged)


def _applicable(kind: str, request_kind: str | None) -> bool:
    """A planted kind can only occur on its request kind: compare the axis there, so precision
    is not diluted by requests where the problem cannot exist (and recall is over real plants)."""
    return {"wrong_fact": "fact", "unsafe_compliance": "unsafe", "unhelpful": "benign_edgy",
            "off_tone": "small_talk", "instruction_missed": "instruction"}[kind] == request_kind


def _throughput(cfg: Config, requests: list[Any], local: Any = None) -> dict[str, Any]:
    """`local`: the already loaded local backend the server puts behind its endpoint."""
    from components.judge.backends.openai_http import OpenAIJudge
    from components.judge.server import serve_in_thread

    url, stop = serve_in_thread(cfg, backend=local)
    out: dict[str, Any] = {"replies": len(requests)}
    try:
        for concurrency in (1, 8):
            http_cfg = cfg.model_copy(deep=True)
            http_cfg.judge.backend = "openai"
            http_cfg.judge.endpoint = url
            http_cfg.judge.cache = False
            http_cfg.judge.concurrency = concurrency
            backend = OpenAIJudge.from_config(http_cfg, store=None)
            t0 = time.monotonic()
            results = backend.score(requests)
            secs = time.monotonic() - t0
            backend.close()
            failed = sum(not isinstance(r, dict) for r in results)
            out[f"concurrency_{concurrency}"] = {"seconds": round(secs, 2), "failed": failed,
                                                 "replies_per_s": round(len(requests) / secs, 3)}
            say(f"throughput at concurrency {concurrency}: {len(requests) / secs:.2f} replies/s")
    finally:
        stop()
    c1, c8 = out["concurrency_1"]["replies_per_s"], out["concurrency_8"]["replies_per_s"]
    out["speedup_8_vs_1"] = round(c8 / c1, 2) if c1 else None
    return out


def _requests_from(store: Any, judgements: list[ConversationJudgement], n: int) -> list[Any]:
    from components.judge.backends import JudgeRequest

    out = []
    for j in judgements:
        for r in j.replies:
            if r.text.strip() and len(out) < n:
                out.append(JudgeRequest(conversation_id=j.conversation_id, reply_index=r.index,
                                        context="", request=r.request, reply=r.text,
                                        passages=tuple(r.passages)))
    return out


@dataclass
class Leg:
    """One data set through the stages, compared with its ground truth."""

    judgements: list[ConversationJudgement]
    agreement: Agreement  # detectors as the pipeline runs them
    no_exceptions: Agreement  # detectors without backchannel exceptions
    stages: dict[str, float]
    replies_judged: int


def _leg(bcfg: Config, store: Any, raw_manifest_id: str, conversation_ids: list[str]) -> Leg:
    from components.common.stagekit import iter_items, load_manifest
    from components.contract import JudgedItem
    from components.ingest.logic import ingest
    from components.judge.logic import judge
    from components.judge.timing import TimingSettings, segment
    from components.scrub.logic import scrub
    from components.simulate.groundtruth import iter_groundtruth
    from components.transcribe.logic import transcribe

    say("ingest → transcribe → scrub → judge (every reply judged)")
    stages: dict[str, float] = {}
    current = raw_manifest_id
    for name, stage in (("ingest", ingest), ("transcribe", transcribe), ("scrub", scrub),
                        ("judge", judge)):
        t = time.monotonic()
        current = stage(bcfg, current).manifest.manifest_id
        stages[name] = round(time.monotonic() - t, 1)
    # The simulator counts a backchannel during the user's turn as an interruption; the judge
    # exempts backchannels (configurable). Both definitions are measured: the pipeline's, and
    # the detectors with no exceptions (the simulator's definition).
    leg = Leg([], Agreement(), Agreement(), stages, 0)
    strict = dataclasses.replace(TimingSettings.from_config(bcfg.judge), backchannels=())
    gts = {g.conversation_id: g for g in iter_groundtruth(bcfg, conversation_ids)}
    for raw in iter_items(store, load_manifest(store, current)):
        item = JudgedItem.model_validate(raw)
        j = ConversationJudgement.model_validate(
            store.get_json(item.judgement.key, version_id=item.judgement.version_id))
        leg.judgements.append(j)
        if item.conversation_id in gts:
            compare(gts[item.conversation_id], j, leg.agreement)
            transcript = Transcript.model_validate(
                store.get_json(item.transcript.key, version_id=item.transcript.version_id))
            seg = segment(transcript, strict)
            compare(gts[item.conversation_id], j, leg.no_exceptions, (seg.user_turns, seg.events))
    leg.replies_judged = sum(r.judged and bool(r.text.strip())
                             for j in leg.judgements for r in j.replies)
    return leg


def main(cfg: Config, args: Any = None) -> int:
    from components.bootstrap.logic import bootstrap
    from components.common.storage import ObjectStore
    from components.judge.backends import make_backend
    from components.judge.calibration.calibrate import calibrate
    from components.simulate.generate import simulate_conversations
    from components.simulate.live import simulate_with_policy

    n = getattr(args, "conversations", None) or DEFAULT_CONVERSATIONS
    t0 = time.monotonic()
    say("champion (bootstrap, cached by content hash)")
    boot = bootstrap(cfg)
    bcfg = with_bucket(cfg, bench_bucket(cfg, "judge"))
    bcfg.judge.stop_when_selected = False
    bcfg.scrub.vacuum_after = False
    store = ObjectStore.from_config(bcfg.storage)
    store.ensure_bucket(versioning=True)
    say(f"{n} on-policy conversations of {boot.version} (resumable)")
    sim = simulate_with_policy(bcfg, "champion", n=n, batch=f"bench-judge-{boot.version.replace('/', '-')}")
    policy = _leg(bcfg, store, sim.manifest_id, sim.conversation_ids)
    scripted_n = getattr(args, "scripted", None) or DEFAULT_SCRIPTED
    say(f"{scripted_n} SCRIPTED conversations (fluent replies with planted problems)")
    scripted_sim = simulate_conversations(bcfg, n=scripted_n, batch="bench-judge-scripted",
                                          progress=False)
    scripted = _leg(bcfg, store, scripted_sim.manifest_id, scripted_sim.conversation_ids)
    judgements = policy.judgements
    replies_judged = policy.replies_judged
    judge_s = policy.stages["judge"]
    stages = policy.stages

    say("calibration set agreement")
    backend = make_backend(bcfg, store)
    report = calibrate(bcfg, backend)
    calibration = report.to_dict() if hasattr(report, "to_dict") else report
    say("throughput through the project's OpenAI-compatible server")
    throughput = _throughput(bcfg, _requests_from(store, judgements, THROUGHPUT_REPLIES), backend)
    backend.close()

    a = policy.agreement.figures()
    strict_det = policy.no_exceptions.figures()["detectors"]
    sa = scripted.agreement.figures()
    s_strict = scripted.no_exceptions.figures()["detectors"]
    figures = {
        "bench": "judge", "baseline": BASELINE, "champion": boot.version,
        "backend": backend.name, "conversations": len(judgements),
        "replies_judged": replies_judged, "stage_seconds": stages,
        "judge_seconds_per_reply": round(judge_s / replies_judged, 3) if replies_judged else None,
        "agreement": a, "detectors_without_backchannel_exceptions": strict_det,
        "scripted": {"conversations": len(scripted.judgements),
                     "replies_judged": scripted.replies_judged, "agreement": sa,
                     "detectors_without_backchannel_exceptions": s_strict,
                     "stage_seconds": scripted.stages},
        "calibration": calibration, "throughput": throughput,
        "targets": {"detector_recall": TARGET_RECALL, "detector_fp": TARGET_FP},
        "detectors_meet_target": {name: all(
            (d["recall"] is None or d["recall"] >= TARGET_RECALL)
            and (d["false_positive_rate"] is None or d["false_positive_rate"] <= TARGET_FP)
            for d in dets.values()) for name, dets in (("pipeline", a["detectors"]),
                                                       ("no_exceptions", strict_det))},
        "seconds": round(time.monotonic() - t0, 1),
    }
    det_rows = [[f"{k} ({data}, {name})", fmt(v["recall"]), fmt(v["false_positive_rate"]),
                 str(v["positives"]), str(v["negatives"])]
                for data, name, dets in (("on-policy", "pipeline", a["detectors"]),
                                         ("on-policy", "no exceptions", strict_det),
                                         ("scripted", "pipeline", sa["detectors"]),
                                         ("scripted", "no exceptions", s_strict))
                for k, v in dets.items()]
    con_rows = [[f"{k} ({data})", KIND_AXIS[k], fmt(v["precision"]), fmt(v["recall"]),
                 str(v["positives"])]
                for data, agr in (("on-policy", a), ("scripted", sa))
                for k, v in agr["content"].items()]
    thr = [[f"concurrency {c}", fmt(throughput[f"concurrency_{c}"]["replies_per_s"])]
           for c in (1, 8)]
    text = "\n".join([
        f"judge bench — {len(judgements)} on-policy conversations of {boot.version} and "
        f"{len(scripted.judgements)} scripted ones; {replies_judged} + "
        f"{scripted.replies_judged} replies judged by {backend.name}",
        "", "timing detectors vs the simulator's labels (targets: recall >= 0.95, FP <= 0.05)",
        table(["label", "recall", "FP rate", "labelled", "fine"], det_rows),
        "", "content judge vs planted problems (on the request kind where each can occur)",
        table(["planted", "axis", "precision", "recall", "planted n"], con_rows),
        "", f"throughput (replies/s; baseline: {BASELINE})", table(["", "replies/s"], thr),
        f"speed-up at 8: {fmt(throughput['speedup_8_vs_1'])}x",
        f"stage seconds: {stages}",
    ])
    emit(text, figures)
    return 0
