"""pairs: one preference pair per selected reply. Rejected = what the model did, chosen = the fix.

Input: a judge manifest (JudgedItem items). Output: a "pairs" manifest whose items are
PreferencePair records, one per pair, so resynthesize iterates pairs directly.

Work items are the SELECTED REPLIES, not the conversations: the item id is
"<conversation_id>--r<reply index>", known from JudgedItem.selected without reading the judgement,
and the completion marker is per reply. So every pair has its own marker (a rerun skips pairs
already made), a per-pair failure (an LLM composer error) is one reject while the conversation's
other pair goes on, and stagekit's run_items writes the manifest of pairs itself — no second
pass. A reply that makes no pair (nothing to fix, or a rewrite equal to the original) is a reject
with a "no-pair-*" code: counted and visible, never silent; the stats separate these drops from
failures. The marker id is not the pair id because the pair id includes the pair type, which is
only known after the judgement is read.

Per reply: read the ConversationJudgement (pinned version from JudgedItem.judgement) and the
redacted transcript (pinned, for the reply's exact logged word times), decide the type and the
placement (rules.py), compose the chosen reply when the type needs one (compose.py), and record
provenance (transcript, judgement, model audio and model tokens refs, the judge manifest id).
The model's exact tokens are not copied here: tokenize takes them from the `model_tokens` ref.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from typing import Any

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
    PAIR_TYPE_LETTER,
    TIMING_AXES,
    ConversationJudgement,
    ItemResult,
    JudgedItem,
    Keys,
    ObjectRef,
    PreferencePair,
    ReplyJudgement,
    Transcript,
    WordStamp,
)
from components.pairs import rules
from components.pairs.compose import (
    Composer,
    ComposeError,
    ComposeRequest,
    KbComposer,
    LlmComposer,
    normalise,
    one_torch_thread,
)

STAGE = "pairs"
DROP_PREFIX = "no-pair-"  # reject codes of replies that make no pair (not failures)
CONTEXT_TURNS = 4  # earlier turns shown to the LLM composer
LLM_CACHE_NAMESPACE = "pairs-rewrite"


def marker_id(conversation_id: str, reply: int) -> str:
    return f"{conversation_id}--r{reply}"


def make_composer(cfg: Config, store: ObjectStore | None, kb: Any | None = None) -> Composer:
    """The configured composer. `kb`: a components.common.kb.KnowledgeBase (loaded when None)."""
    if cfg.pairs.composer == "llm":
        from components.common.llm import ChatClient

        # The judge's endpoint and limits; its own cache namespace (never a judge answer).
        client = ChatClient.from_config(cfg.judge, store, namespace=LLM_CACHE_NAMESPACE)
        return LlmComposer(client, cfg.judge.model, cfg.pairs.max_reply_words)
    if kb is None:
        from components.common.kb import KnowledgeBase

        kb = KnowledgeBase.from_config(cfg, store)
    return KbComposer(kb.embed, cfg.pairs.max_reply_words, retrieve=kb.retrieve)


# ----------------------------------------------------------------------------- one reply


def _context(judgement: ConversationJudgement, reply: ReplyJudgement) -> str:
    """The last few turns before the reply, "User: ...\\nAssistant: ..." (redacted)."""
    turns = [("User", t.start, t.text) for t in judgement.user_turns]
    turns += [("Assistant", t.start, t.text) for t in judgement.model_turns]
    user_start = next((t.start for t in judgement.user_turns if t.index == reply.user_turn),
                      reply.start)
    earlier = sorted((t for t in turns if t[1] < user_start), key=lambda t: t[1])[-CONTEXT_TURNS:]
    return "\n".join(f"{who}: {text}" for who, _, text in earlier)


def reply_words(reply: ReplyJudgement, transcript: Transcript) -> list[WordStamp]:
    """The reply's logged words with their times (empty when the model said nothing).

    A reply may span several model turns (the model paused mid-reply), so the words are taken by
    time: the model words inside [reply.start, reply.end] — the judge's reply is a contiguous run
    of the model's words (its window minus leading backchannels)."""
    if reply.model_turn is None or not reply.text.strip():
        return []
    words = [w for w in transcript.model_words
             if w.start >= reply.start - rules.EPS and w.end <= reply.end + rules.EPS]
    if normalise(" ".join(w.word for w in words)) != normalise(reply.text):
        raise ItemFailure("bad-judgement", f"reply {reply.index}: its text does not match the "
                                           f"transcript's model words in [{reply.start}, "
                                           f"{reply.end}]")
    return words


def build_pair(cfg: Config, item: JudgedItem, judgement: ConversationJudgement,
               transcript: Transcript, reply: ReplyJudgement, composer: Composer,
               retrieve: Any | None, judge_manifest_id: str) -> PreferencePair:
    """The pair for one selected reply; raises ItemFailure (codes "no-pair-*" for no pair)."""
    kind = rules.pair_type(reply.problems)
    if kind is None:
        raise ItemFailure(DROP_PREFIX + "nothing-to-fix", f"reply {reply.index} has no problem")
    words = reply_words(reply, transcript)
    rejected = rules.rejected_side(reply, words)
    if rejected is None and kind != "silence":
        raise ItemFailure("bad-judgement", f"reply {reply.index} is flagged {kind} but has no "
                                           "logged words")
    p = cfg.pairs
    place = rules.placement(kind, reply, rejected.start if rejected else reply.start,
                            p.interruption_gap_s, p.silence_gap_s)
    passages: list[str] = []
    if kind == "interruption":
        assert rejected is not None
        if place.start <= rejected.start + rules.EPS:
            raise ItemFailure(DROP_PREFIX + "nothing-to-fix",
                              f"reply {reply.index} already starts after the user's end + gap")
        chosen = rules.moved_side(rejected.words, place.start, place.limit)
        composer_name = "moved"
    else:
        grounding = list(reply.passages)
        if not grounding and retrieve is not None and reply.request.strip():
            grounding = retrieve(reply.request, cfg.judge.top_k_passages)  # silence: not judged
        req = ComposeRequest(request=reply.request, rejected=reply.text,
                             problems=tuple(reply.problems), passages=tuple(grounding),
                             context=_context(judgement, reply),
                             max_words=rules.word_budget(place, p.speaking_rate_wps),
                             conversation_id=item.conversation_id)
        try:
            composition = composer.compose(req)
        except ComposeError as exc:
            raise ItemFailure(exc.code, f"reply {reply.index}: {exc.reason}") from exc
        original = rejected.text if rejected else ""
        if kind == "content" and normalise(composition.text) == normalise(original):
            raise ItemFailure(DROP_PREFIX + "unchanged",
                              f"reply {reply.index}: the rewrite equals the original")
        chosen = rules.composed_side(composition.text, place.start, place.limit,
                                     p.speaking_rate_wps,
                                     "rewritten" if kind == "content" else "composed")
        passages, composer_name = composition.passages, composer.name
    if rejected is None:
        rejected = rules.empty_side(chosen)
    scores = {axis: (s.score if s is not None else None) for axis, s in reply.scores.items()}
    return PreferencePair(
        pair_id=rules.pair_id(item.conversation_id, reply.index, kind, judgement.backend_version),
        conversation_id=item.conversation_id, user_pseudonym=item.user_pseudonym, type=kind,
        reply=reply.index, user_turn=reply.user_turn, user_end=reply.user_end,
        next_user_start=reply.next_user_start, rejected=rejected, chosen=chosen, scores=scores,
        problems=list(reply.problems), judge_backend=judgement.backend,
        judge_version=judgement.backend_version, serving_model_version=item.model_version,
        passages=passages, composer=composer_name,
        provenance={
            "judge_manifest_id": judge_manifest_id,
            "transcript": item.transcript.model_dump(mode="json"),
            "judgement": item.judgement.model_dump(mode="json"),
            "model_audio": item.model_audio.model_dump(mode="json"),
            "model_tokens": (item.model_tokens.model_dump(mode="json")
                             if item.model_tokens else None),
            "chosen_times": "planned" if chosen.source != "moved" else "moved",
            "speaking_rate_wps": p.speaking_rate_wps,
            "chosen_overrun_s": rules.overrun(chosen, reply.next_user_start),
        })


# ----------------------------------------------------------------------------- stats


def pair_stats(results: Iterable[ItemResult]) -> dict[str, Any]:
    """Counts by type (A/B/C), the timing/content split, drops by reason, failures by code."""
    by_type: Counter[str] = Counter()
    timing_only = content_related = 0
    dropped: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for result in results:
        if result.status == "done" and result.output:
            by_type[PAIR_TYPE_LETTER[result.output["type"]]] += 1
            problems = set(result.output["problems"])
            if problems & set(CONTENT_AXES):
                content_related += 1
            elif problems <= set(TIMING_AXES):
                timing_only += 1
        elif result.error is not None:
            code = result.error.code
            if code.startswith(DROP_PREFIX):
                dropped[code[len(DROP_PREFIX):]] += 1
            else:
                failures[code] += 1
    pairs = sum(by_type.values())
    return {
        "pairs": pairs,
        "by_type": {letter: by_type.get(letter, 0) for letter in ("A", "B", "C")},
        "timing_only": timing_only,
        "content_related": content_related,
        "timing_only_share": round(timing_only / pairs, 3) if pairs else None,
        "content_related_share": round(content_related / pairs, 3) if pairs else None,
        "dropped": sum(dropped.values()),
        "dropped_by_reason": dict(sorted(dropped.items())),
        "failed": sum(failures.values()),
        "failures_by_code": dict(sorted(failures.items())),
    }


# ----------------------------------------------------------------------------- the stage


class _Loaded:
    """Judgements and transcripts of the conversations being worked on. Items come grouped by
    conversation, so a few entries are enough; locked because the LLM composer runs items on a
    thread pool."""

    ENTRIES = 16

    def __init__(self, store: ObjectStore):
        self.store, self.lock = store, threading.Lock()
        self.entries: OrderedDict[str, tuple[ConversationJudgement, Transcript]] = OrderedDict()

    def _get(self, ref: ObjectRef, what: str) -> Any:
        try:
            return self.store.get_json(ref.key, version_id=ref.version_id)
        except Exception as exc:  # noqa: BLE001 - missing/unreadable input is a per-item error
            raise ItemFailure(f"{what}-missing", f"{ref.key}: {type(exc).__name__}: {exc}") from exc

    def get(self, item: JudgedItem) -> tuple[ConversationJudgement, Transcript]:
        with self.lock:
            if item.conversation_id not in self.entries:
                try:
                    judgement = ConversationJudgement.model_validate(
                        self._get(item.judgement, "judgement"))
                    transcript = Transcript.model_validate(self._get(item.transcript, "transcript"))
                except ValueError as exc:
                    raise ItemFailure("bad-judgement", str(exc)[:300]) from exc
                self.entries[item.conversation_id] = (judgement, transcript)
                while len(self.entries) > self.ENTRIES:
                    self.entries.popitem(last=False)
            return self.entries[item.conversation_id]


def build_pairs(cfg: Config, judge_manifest_id: str, composer: Composer | None = None) -> StageRun:
    """Make the preference pairs of a judge manifest; returns the run with the pairs manifest.

    `composer`: the chosen-reply composer (default: `make_composer(cfg, store)`, loaded only when
    some reply needs one)."""
    store = ObjectStore.from_config(cfg.storage)
    manifest = load_manifest(store, judge_manifest_id)
    loaded = _Loaded(store)
    lazy: dict[str, Any] = {}
    lazy_lock = threading.RLock()

    def kb() -> Any:
        """The knowledge base, loaded on first need (a run of B pairs only never loads it)."""
        with lazy_lock:
            if "kb" not in lazy:
                from components.common.kb import KnowledgeBase

                lazy["kb"] = KnowledgeBase.from_config(cfg, store)
            return lazy["kb"]

    def get_composer() -> Composer:
        if composer is not None:
            return composer
        with lazy_lock:
            if "composer" not in lazy:
                lazy["composer"] = make_composer(
                    cfg, store, kb=None if cfg.pairs.composer == "llm" else kb())
            return lazy["composer"]

    results: list[ItemResult] = []  # every pair's result, slimmed to what pair_stats reads
    without_selection = 0

    def on_result(_: Any, result: ItemResult) -> None:
        output = result.output and {k: result.output[k] for k in ("type", "problems")}
        results.append(result.model_copy(update={"output": output}))

    def items() -> Iterator[tuple[str, tuple[JudgedItem, int]]]:
        nonlocal without_selection
        for raw in iter_items(store, manifest):
            item = JudgedItem.model_validate(raw)
            if not item.selected:
                without_selection += 1
            for index in sorted(set(item.selected)):
                yield marker_id(item.conversation_id, index), (item, index)

    def process(entry: tuple[JudgedItem, int]) -> dict:
        item, index = entry
        judgement, transcript = loaded.get(item)
        reply = next((r for r in judgement.replies if r.index == index), None)
        if reply is None:
            raise ItemFailure("bad-judgement", f"selected reply {index} is not in the judgement")
        kind = rules.pair_type(reply.problems)
        needs_composer = kind in ("content", "silence")
        # The KB composer runs items one at a time: MiniLM (retrieval too) on one torch thread.
        # The LLM composer runs them on a thread pool: the process-wide setting stays as it is.
        threads = one_torch_thread() if needs_composer and cfg.pairs.composer == "kb" \
            else nullcontext()
        with threads:
            pair = build_pair(cfg, item, judgement, transcript, reply,
                              get_composer() if needs_composer else _NoComposer(),
                              kb().retrieve if needs_composer and not reply.passages else None,
                              judge_manifest_id)
        return pair.model_dump(mode="json")

    def stats() -> dict[str, Any]:
        out = pair_stats(results)
        out["conversations"] = manifest.counts.get("items", 0)
        out["conversations_without_selection"] = without_selection
        out["composer"] = cfg.pairs.composer
        return out

    concurrency = cfg.judge.concurrency if cfg.pairs.composer == "llm" else 1  # I/O vs CPU
    try:
        return run_items(store, STAGE, judge_manifest_id, items(), process,
                         total=None, concurrency=concurrency, extra_stats=stats,
                         on_result=on_result)
    finally:
        made = lazy.get("composer")
        if made is not None and hasattr(made, "close"):
            made.close()


class _NoComposer:
    """Stands in where a pair type needs no composition (B moves the logged words)."""

    name = "moved"

    def compose(self, req: ComposeRequest) -> Any:  # pragma: no cover - never called for B
        raise AssertionError("interruption pairs are not composed")


__all__ = ["build_pairs", "build_pair", "make_composer", "pair_stats", "marker_id", "STAGE",
           "DROP_PREFIX"]
