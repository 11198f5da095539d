"""judge: timing events from the detectors, grounded content scores from a judge backend, and
the selection of the replies that become preference pairs.

Per conversation (a ScrubbedItem of the scrub manifest):
  1. the redacted transcript (pinned version) and the model audio's header (its duration) are
     read and checked (`timing.check_transcript`: per-item error codes);
  2. `timing.segment`: user / model turns, one reply window per user turn, timing events and the
     two timing axis scores (deterministic);
  3. replies are judged IN ORDER: the content axes by the backend (only for replies with words;
     a reply with no words gets content scores None), grounded in knowledge-base passages
     retrieved with the user's request as the query; problems = axes scored at or below
     ``judge.thresholds[axis]`` (timing axes included);
  4. selection: the FIRST problematic reply plus at most ``judge.max_extra_replies`` more; with
     ``judge.stop_when_selected`` judging stops once the selection is full (later replies are
     ``judged=False``, ``stopped_after`` set) — that is what keeps a local LM within budget;
  5. the ConversationJudgement goes to ``Keys.judgement(cid, judge_key)``; the output item is a
     JudgedItem (the ScrubbedItem's fields + the judgement's ref and counts).

A reply whose content judgement failed (the backend's ItemError after its retries) is recorded in
``failures`` and counted; it keeps its timing scores but is never selected — a pair needs the
reply's scores, and its unknown content could be the real problem — and judging goes on with the
next reply. The conversation completes with what could be judged.

Reruns: completed conversations are skipped by their markers (stagekit), and a conversation redone
after a crash pays nothing twice: content scores are cached in the bucket by the SHA-256 of the
request (`components.common.llm.ContentCache`, namespace = the backend's version). The backend and
the knowledge base are loaded lazily, once per run: a run with nothing left to do loads neither.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from pydantic import ValidationError

from components.common.audio import HEADER_PROBE_BYTES, AudioFormatError, check_wav_object
from components.common.config import Config
from components.common.stagekit import (
    ItemFailure,
    StageRun,
    iter_items,
    load_manifest,
    run_items,
)
from components.common.storage import ObjectStore
from components.contract import (
    CONTENT_AXES,
    JUDGE_AXES,
    AxisScore,
    ConversationJudgement,
    ItemError,
    ItemResult,
    JudgedItem,
    Keys,
    ObjectRef,
    ReplyJudgement,
    ScrubbedItem,
    Transcript,
    canonical_json,
)
from components.judge.timing import Segmentation, TimingSettings, check_transcript, segment

STAGE = "judge"
# Earlier exchanges shown to the content judge as context ("User: ..." / "Assistant: ..." lines).
CONTEXT_LINES = 6
DEFAULT_THRESHOLD = 2.5


# ----------------------------------------------------------------------------- keys and settings


def judge_settings(cfg: Config) -> dict[str, Any]:
    """Everything besides the backend a judgement depends on (thresholds, detectors, retrieval,
    selection): hashed into the judge key, so changing any of it writes a new judgement."""
    j = cfg.judge
    return {"thresholds": {a: thresholds(cfg)[a] for a in JUDGE_AXES},
            "timing": asdict(TimingSettings.from_config(j)) | {
                "backchannels": sorted(j.backchannels)},
            "retrieval": {"embedding_model": j.embedding_model, "top_k": j.top_k_passages},
            "selection": {"max_extra_replies": j.max_extra_replies,
                          "stop_when_selected": j.stop_when_selected},
            "context_lines": CONTEXT_LINES}


def thresholds(cfg: Config) -> dict[str, float]:
    return {a: float(cfg.judge.thresholds.get(a, DEFAULT_THRESHOLD)) for a in JUDGE_AXES}


def judge_key(cfg: Config, backend_version: str) -> str:
    """backend version + a hash of the judge settings; safe as an object-key segment."""
    settings = hashlib.sha256(canonical_json(judge_settings(cfg)).encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", backend_version).strip("-")[:40] or "backend"
    return f"{safe}-{settings}"


# ----------------------------------------------------------------------------- lazy resources


class _Resources:
    """The backend, knowledge base and content cache, created on first use (one per run)."""

    def __init__(self, cfg: Config, store: ObjectStore):
        self.cfg, self.store = cfg, store
        self._lock = threading.Lock()
        self._backend: Any = None
        self._kb: Any = None
        self._cache: Any = None
        self.backend_requests = 0  # content requests sent to the backend in this run
        self.cache_hits = 0
        self.backend_seconds = 0.0

    @property
    def backend(self) -> Any:
        with self._lock:
            if self._backend is None:
                from components.judge.backends import make_backend

                self._backend = make_backend(self.cfg, self.store)
            return self._backend

    @property
    def kb(self) -> Any:
        with self._lock:
            if self._kb is None:
                from components.common.kb import KnowledgeBase

                self._kb = KnowledgeBase.from_config(self.cfg, self.store)
            return self._kb

    @property
    def cache(self) -> Any:
        if not self.cfg.judge.cache:
            return None
        backend = self.backend
        with self._lock:
            if self._cache is None:
                from components.common.llm import ContentCache

                self._cache = ContentCache(self.store, f"judge-content/{backend.version}")
            return self._cache

    def score(self, requests: list[Any]) -> list[dict[str, AxisScore] | ItemError]:
        """Content scores per request: from the cache, else from the backend (then cached)."""
        out: list[dict[str, AxisScore] | ItemError | None] = [None] * len(requests)
        cache = self.cache
        todo: list[int] = []
        # The cache digest covers the namespace (the backend's version) and the request's own
        # content hash (context, request, reply, passages, axes).
        digests = [cache.digest({"judge_request": req.digest()}) if cache is not None else ""
                   for req in requests]
        for i, req in enumerate(requests):
            hit = cache.get(digests[i]) if cache is not None else None
            try:
                cached = {a: AxisScore.model_validate(v) for a, v in hit.items()} if hit else None
            except (AttributeError, ValidationError):  # a foreign or torn entry: ask again
                cached = None
            if cached is not None:
                out[i] = cached
                with self._lock:
                    self.cache_hits += 1
            else:
                todo.append(i)
        if todo:
            t0 = time.monotonic()
            results = self.backend.score([requests[i] for i in todo])
            with self._lock:
                self.backend_seconds += time.monotonic() - t0
                self.backend_requests += len(todo)
            for i, result in zip(todo, results):
                out[i] = result
                if cache is not None and isinstance(result, dict):
                    cache.put(digests[i], {a: s.model_dump(mode="json") for a, s in result.items()},
                              meta={"conversation_id": requests[i].conversation_id,
                                    "reply_index": requests[i].reply_index})
        return out  # type: ignore[return-value]

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


# ----------------------------------------------------------------------------- one conversation


def _audio_duration(store: ObjectStore, ref: ObjectRef) -> float:
    info = store.stat(ref.key, version_id=ref.version_id)
    if info is None:
        raise ItemFailure("missing-object", f"model audio {ref.key} is gone from the store")
    with store.open_stream(ref.key, version_id=ref.version_id, offset=0,
                           length=min(info.size, HEADER_PROBE_BYTES)) as body:
        head = body.read()
    try:
        return check_wav_object(head, info.size).duration_s
    except AudioFormatError as exc:
        raise ItemFailure("bad-audio", f"model audio: {exc}") from None


def load_transcript(store: ObjectStore, ref: ObjectRef) -> Transcript:
    """The redacted transcript at its pinned version; malformed word times are per-item errors."""
    raw = store.get_json(ref.key, version_id=ref.version_id)
    try:
        return Transcript.model_validate(raw)
    except ValidationError as exc:
        timing = any(err["loc"] and err["loc"][-1] in ("start", "end") for err in exc.errors())
        raise ItemFailure("bad-timestamps" if timing else "bad-transcript",
                          f"transcript {ref.key}: {exc.errors()[0]['msg']}") from None


def context_of(seg: Segmentation, upto: int) -> str:
    """The conversation before reply `upto`, as the judge sees it (last CONTEXT_LINES lines)."""
    lines: list[str] = []
    for span in seg.replies[:upto]:
        if span.user_turn is not None:
            lines.append(f"User: {span.request}")
        if span.text:
            lines.append(f"Assistant: {span.text}")
    return "\n".join(lines[-CONTEXT_LINES:])


def problems_of(scores: dict[str, AxisScore | None], limits: dict[str, float]) -> list[Any]:
    """The axes scored at or below their threshold, in JUDGE_AXES order (unscored: never)."""
    out = []
    for axis in JUDGE_AXES:
        score = scores.get(axis)
        if score is not None and score.score <= limits[axis]:
            out.append(axis)
    return out


class Selection:
    """The paper's rule: the FIRST problematic reply, plus at most `max_extra` more, in order.

    A reply whose content judgement failed is never selected (its scores are unknown); with
    `stop_when_selected`, judging stops once the selection is full."""

    def __init__(self, max_extra: int, stop_when_selected: bool):
        self.want = 1 + max_extra
        self.stop_when_selected = stop_when_selected
        self.selected: list[int] = []

    def offer(self, index: int, problems: list[str], failed: bool = False) -> bool:
        chosen = bool(problems) and not failed and len(self.selected) < self.want
        if chosen:
            self.selected.append(index)
        return chosen

    @property
    def stop(self) -> bool:
        return self.stop_when_selected and len(self.selected) >= self.want


def judge_conversation(cfg: Config, res: _Resources, item: ScrubbedItem, transcript: Transcript,
                       seg: Segmentation, key: str) -> ConversationJudgement:
    """Judge the replies in order and select (rules: module docstring)."""
    from components.judge.backends import JudgeRequest

    limits = thresholds(cfg)
    cid = item.conversation_id
    selection = Selection(cfg.judge.max_extra_replies, cfg.judge.stop_when_selected)
    replies: list[ReplyJudgement] = []
    failures: list[ItemError] = []
    stopped_after: int | None = None
    for span in seg.replies:
        base: dict[str, Any] = dict(
            index=span.index, user_turn=span.user_turn, model_turn=span.model_turn,
            request=span.request, text=span.text, start=span.start, end=span.end,
            user_end=span.user_end, next_user_start=span.next_user_start, events=span.events)
        if span.user_turn is None or stopped_after is not None:  # greeting, or after the stop
            replies.append(ReplyJudgement(scores={a: None for a in JUDGE_AXES}, judged=False,
                                          **base))
            continue
        scores: dict[str, AxisScore | None] = {a: None for a in JUDGE_AXES}
        scores.update(span.timing_scores or {})
        passages = res.kb.retrieve(span.request, k=cfg.judge.top_k_passages)
        failed = False
        if span.has_words:
            request = JudgeRequest(conversation_id=cid, reply_index=span.index,
                                   context=context_of(seg, span.index), request=span.request,
                                   reply=span.text, passages=tuple(passages), axes=CONTENT_AXES)
            result = res.score([request])[0]
            if isinstance(result, ItemError):
                failed = True
                failures.append(ItemError(item=f"{cid}#{span.index}", code=result.code,
                                          reason=result.reason))
            else:
                for axis in CONTENT_AXES:
                    scores[axis] = result.get(axis)
        problems = problems_of(scores, limits)
        chosen = selection.offer(span.index, problems, failed)
        replies.append(ReplyJudgement(scores=scores, problems=problems, passages=passages,
                                      judged=True, selected=chosen, **base))
        if selection.stop:
            stopped_after = span.index
    backend = res.backend
    return ConversationJudgement(conversation_id=cid, model_version=item.model_version,
                                 backend=backend.name, backend_version=key,
                                 user_turns=seg.user_turns, model_turns=seg.model_turns,
                                 replies=replies, events=seg.events, stopped_after=stopped_after,
                                 failures=failures)


# ----------------------------------------------------------------------------- the stage


def _tally(stats: Counter[str], judgement: ConversationJudgement) -> None:
    stats["conversations"] += 1
    stats["replies"] += sum(r.user_turn is not None for r in judgement.replies)
    stats["replies_judged"] += sum(r.judged for r in judgement.replies)
    stats["replies_content_judged"] += sum(
        r.judged and r.scores.get(CONTENT_AXES[0]) is not None for r in judgement.replies)
    stats["selected"] += sum(r.selected for r in judgement.replies)
    stats["judge_failures"] += len(judgement.failures)
    stats["stopped_early"] += judgement.stopped_after is not None
    for r in judgement.replies:
        for axis in r.problems:
            stats[f"problems:{axis}"] += 1
    for e in judgement.events:
        stats[f"events:{e.kind}"] += 1


def judge(cfg: Config, scrub_manifest_id: str) -> StageRun:
    store = ObjectStore.from_config(cfg.storage)
    manifest = load_manifest(store, scrub_manifest_id)
    res = _Resources(cfg, store)
    settings = TimingSettings.from_config(cfg.judge)
    totals: Counter[str] = Counter()
    processed: set[str] = set()
    keys: dict[str, str] = {}
    tally_lock = threading.Lock()

    def key() -> str:
        if "key" not in keys:
            keys["key"] = judge_key(cfg, res.backend.version)
        return keys["key"]

    def process(item: ScrubbedItem) -> dict:
        processed.add(item.conversation_id)
        transcript = load_transcript(store, item.transcript)
        duration = _audio_duration(store, item.model_audio)
        check_transcript(transcript, audio_duration_s=duration)
        seg = segment(transcript, settings)
        judgement = judge_conversation(cfg, res, item, transcript, seg, key())
        jkey = Keys.judgement(item.conversation_id, key())
        version = store.put_json(jkey, judgement.model_dump(mode="json"))
        with tally_lock:
            _tally(totals, judgement)
        problems = Counter(a for r in judgement.replies for a in r.problems)
        return JudgedItem(**item.model_dump(), judgement=ObjectRef(key=jkey, version_id=version),
                          replies=len(judgement.replies), problems=dict(sorted(problems.items())),
                          selected=[r.index for r in judgement.replies if r.selected],
                          judge_failures=len(judgement.failures)).model_dump(mode="json")

    def items() -> Iterator[tuple[str, ScrubbedItem]]:
        for raw in iter_items(store, manifest):
            item = ScrubbedItem.model_validate(raw)
            yield item.conversation_id, item

    earlier: list[ObjectRef] = []  # judgements of conversations an earlier run finished

    def on_result(item: ScrubbedItem, result: ItemResult) -> None:
        if item.conversation_id not in processed and result.status == "done" and result.output:
            earlier.append(JudgedItem.model_validate(result.output).judgement)

    def extra_stats() -> dict[str, Any]:
        # Totals over every conversation of the manifest, including those judged by an earlier
        # (interrupted) run: their judgements are read back.
        stats = Counter(totals)
        for ref in earlier:
            _tally(stats, ConversationJudgement.model_validate(
                store.get_json(ref.key, version_id=ref.version_id)))
        scored = res.backend_requests
        return {**dict(sorted(stats.items())),
                "backend": res.backend.name if res._backend is not None else None,
                "judge_key": keys.get("key"),
                "backend_requests": scored, "cache_hits": res.cache_hits,
                "seconds_per_reply": round(res.backend_seconds / scored, 3) if scored else None}

    # An HTTP endpoint is I/O-bound: conversations go to it concurrently (each conversation's
    # replies stay in order). A local LM computes one forward at a time anyway.
    concurrency = cfg.judge.concurrency if cfg.judge.backend == "openai" else 1
    try:
        return run_items(store, STAGE, scrub_manifest_id, items(), process,
                         total=manifest.counts.get("items"), extra_stats=extra_stats,
                         concurrency=concurrency, on_result=on_result)
    finally:
        res.close()
