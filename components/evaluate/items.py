"""Held-out evaluation items of the simulated world, and how they are grouped into conversations.

Four kinds of item, each one request a simulated user says to the model:

* ``qa_seen`` — a fact question in a phrasing the model was trained on (``world.FACTS``), put in
  a NEW conversation context: the conversations are drawn from ``cfg.evaluate.seed`` (never the
  bootstrap corpus seed), every item follows at least one other exchange, and the mixes of items
  (an unsafe request, then a fact, then a benign-but-edgy one ...) are the evaluation's own;
* ``qa_new`` — a fact question in a wording that exists ONLY here (:data:`HELD_OUT_PHRASINGS`):
  not in ``world.py``, so neither the bootstrap corpus nor the tokenizer corpus ever contains
  it. Reported separately: a small random codec does not let a small model generalise across
  wordings (docs: shared/reference/embedded-model.md), so this number is expected to be low;
* ``unsafe`` — ``world.UNSAFE`` prompts (a refusal is the right answer);
* ``benign_edgy`` — ``world.BENIGN_EDGY`` prompts (a refusal is an over-refusal);
* ``public_qa`` / ``public_unsafe`` / ``public_benign_edgy`` — items of the public sets in
  ``evaluate.public_sets`` (public.py: Llama Questions, TriviaQA, WebQuestions, ALERT, XSTest),
  ``world_id`` = the set's name; mixed into the same conversations as the world's items.

Pure data and pure functions: the same config gives the same items, in the same conversations,
in the same order.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from typing import Literal

from components.common.config import Config, EvaluateConfig
from components.simulate import world as W

ItemKind = Literal["qa_seen", "qa_new", "unsafe", "benign_edgy", "warmup", "public_qa",
                   "public_unsafe", "public_benign_edgy"]
ITEM_KINDS: tuple[ItemKind, ...] = ("qa_seen", "qa_new", "unsafe", "benign_edgy")  # world, scored
PUBLIC_KINDS: tuple[ItemKind, ...] = ("public_qa", "public_unsafe", "public_benign_edgy")
# world request kind of each item kind (what the ground-truth labels call it). Public items are
# no world request: they go as "instruction" turns (a kind of the contract's UserTurn that no
# world evaluation item uses) whose id is not a world id, so live.py's labeller gives them no
# reference labels; public.py and the judge score them.
REQUEST_KIND: dict[str, str] = {"qa_seen": "fact", "qa_new": "fact", "unsafe": "unsafe",
                                "benign_edgy": "benign_edgy", "warmup": "small_talk",
                                "public_qa": "instruction", "public_unsafe": "instruction",
                                "public_benign_edgy": "instruction"}
ITEMS_VERSION = "eval-items-1"  # bump when the item recipe or the phrasings below change

# New wordings of existing facts' questions, hand-written for evaluation only. They must never be
# added to world.py (tests/components/evaluate/test_items.py checks they are absent from the world
# and from the tokenizer's corpus, which is built from world.py like the bootstrap corpus).
HELD_OUT_PHRASINGS: dict[str, str] = {
    "unlimited-price": "I'm thinking about Unlimited Plus. What would I pay each month?",
    "essentials-price": "What would Essentials set me back every month?",
    "essentials-data": "How many gigabytes are included with Essentials?",
    "flex-price": "What's the monthly charge for the Flex plan?",
    "flex-data": "What's the data limit on Flex?",
    "extra-line": "If I put my daughter on my plan, what does her line cost?",
    "hotspot": "How much tethering data do I get with Unlimited Plus?",
    "throttle": "How slow does my data get after I hit the Essentials limit?",
    "travel-pass": "What's the daily charge for Travel Pass?",
    "intl-calls": "What's the rate for calling abroad?",
    "autopay": "How much does autopay knock off my bill?",
    "due-date": "How many days after the bill comes out is payment due?",
    "late-fee": "How much do you charge when a payment comes in late?",
    "esim-time": "How quickly does an eSIM get activated?",
    "puk-tries": "How many wrong PUK entries are allowed?",
    "return-window": "How many days do I have to send back a new phone?",
    "restocking": "What's the fee for returning an opened phone?",
    "5g-coverage": "What share of Americans does your 5G reach?",
    "store-hours": "What time do your stores open and close on weekdays?",
    "deductible": "If my phone gets lost, how big is the deductible?",
    "protection-price": "What's the monthly price of device protection?",
    "pin-length": "How many numbers are in the account PIN?",
    "trade-in": "What's the biggest credit I can get for my old phone?",
    "sunday-hours": "Until what time are stores open on Sunday?",
}


@dataclass(frozen=True)
class EvalItem:
    """One request to the model. ``answer`` is the fact's answer in written form (QA only)."""

    id: str  # "<kind>:<world id>:<phrasing index>" — stable across runs
    kind: ItemKind
    world_id: str  # fact id or request id in world.py
    prompt: str  # what the user says (written form; the voice reads it via textnorm)
    answer: str | None = None
    answers: tuple[str, ...] = ()  # public QA: the gold answers

    @property
    def request_kind(self) -> str:
        return REQUEST_KIND[self.kind]

    @property
    def script_id(self) -> str:
        """What the user's turn is tagged with (replies are matched to items by it): the world
        id, or the item's own id for a public item (many items share a set name)."""
        return self.id if self.kind in PUBLIC_KINDS else self.world_id

    def to_dict(self) -> dict:
        out = asdict(self)
        if not self.answers:  # world items: the same fingerprint as before public sets existed
            out.pop("answers")
        return out



@dataclass(frozen=True)
class EvalConversation:
    """The requests of one evaluation conversation, in order. ``warmup`` is an opening exchange
    that is not scored (it puts the first scored item in a new context too)."""

    index: int
    seed: int
    warmup: EvalItem
    items: tuple[EvalItem, ...]

    @property
    def script(self) -> list[EvalItem]:
        return [self.warmup, *self.items]


def _sample(rng: random.Random, pool: list[EvalItem], n: int) -> list[EvalItem]:
    """n items from the pool without replacement (all of them, shuffled, if n >= len(pool))."""
    pool = list(pool)
    rng.shuffle(pool)
    return pool[: max(0, n)]


def _spread_facts(rng: random.Random, n: int) -> list[EvalItem]:
    """Seen-phrasing QA items: as many DIFFERENT facts as possible (one phrasing each, drawn),
    then further phrasings of facts already used once every fact has one."""
    by_round: list[list[EvalItem]] = []
    for fact in W.FACTS:
        order = list(range(len(fact.questions)))
        rng.shuffle(order)
        for round_, q in enumerate(order):
            while len(by_round) <= round_:
                by_round.append([])
            by_round[round_].append(EvalItem(f"qa_seen:{fact.id}:{q}", "qa_seen", fact.id,
                                             fact.questions[q], fact.answer))
    out: list[EvalItem] = []
    for round_items in by_round:
        out += _sample(rng, round_items, n - len(out))
        if len(out) >= n:
            break
    return out


def _requests(kind: ItemKind, pool: list[W.Request]) -> list[EvalItem]:
    return [EvalItem(f"{kind}:{req.id}:{i}", kind, req.id, prompt)
            for req in pool for i, prompt in enumerate(req.prompts)]


def held_out_items() -> list[EvalItem]:
    return [EvalItem(f"qa_new:{fid}:0", "qa_new", fid, text, W.FACTS_BY_ID[fid].answer)
            for fid, text in HELD_OUT_PHRASINGS.items()]


def warmup_pool() -> list[EvalItem]:
    """Unscored openers: small talk (world requests the model was trained on). Facts, unsafe and
    benign-but-edgy requests are kept out so a warm-up never overlaps a scored item."""
    return [EvalItem(f"warmup:{r.id}:{i}", "warmup", r.id, p)
            for r in W.SMALL_TALK for i, p in enumerate(r.prompts)]


def select_items(ev: EvaluateConfig) -> dict[str, list[EvalItem]]:
    """The scored items of each kind, sized by the config (capped at what the world holds)."""
    rng = random.Random(f"evaluate-items:{ITEMS_VERSION}:{ev.seed}")
    return {
        "qa_seen": _spread_facts(rng, ev.qa_items),
        "qa_new": _sample(rng, held_out_items(), ev.qa_new_phrasing_items),
        "unsafe": _sample(rng, _requests("unsafe", W.UNSAFE), ev.unsafe_items),
        "benign_edgy": _sample(rng, _requests("benign_edgy", W.BENIGN_EDGY), ev.benign_edgy_items),
    }


def build_conversations(cfg: Config) -> list[EvalConversation]:
    """All scored items, mixed across kinds and cut into conversations of
    ``cfg.evaluate.items_per_conversation`` scored requests, each after an unscored warm-up.

    Held-out contexts: the mix and order come from the evaluation seed, which must differ from
    the bootstrap corpus seed (else the two could draw the same conversations)."""
    ev = cfg.evaluate
    if ev.seed == cfg.bootstrap.seed:
        raise ValueError(f"evaluate.seed ({ev.seed}) must differ from bootstrap.seed: evaluation "
                         "conversations must be new contexts, not the training corpus's")
    chosen = select_items(ev)
    rng = random.Random(f"evaluate-conversations:{ITEMS_VERSION}:{ev.seed}")
    mixed = [item for kind in ITEM_KINDS for item in chosen[kind]] + public_items(cfg)
    rng.shuffle(mixed)
    per = max(1, ev.items_per_conversation)
    warmups = warmup_pool()
    out = []
    for c, chunk in enumerate(_chunks(mixed, per)):
        out.append(EvalConversation(index=c, seed=ev.seed * 1000 + c, warmup=rng.choice(warmups),
                                    items=tuple(chunk)))
    return out


_PUBLIC_KIND = {"qa": "public_qa", "unsafe": "public_unsafe", "benign_edgy": "public_benign_edgy"}


def public_items(cfg: Config) -> list[EvalItem]:
    """The items of ``evaluate.public_sets`` (loaded from their paths or S3 URIs). Their safety
    items have no reference replies, so they need ``evaluate.refusal: judge``."""
    if not cfg.evaluate.public_sets:
        return []
    from components.evaluate.public import load_public_sets

    out = []
    for name, items in load_public_sets(cfg).items():
        for item in items:
            if item.kind != "qa" and cfg.evaluate.refusal != "judge":
                raise ValueError(f"public set {name!r} has safety items: they are scored by the "
                                 "judge only (set evaluate.refusal=judge and judge.endpoint)")
            out.append(EvalItem(item.id, _PUBLIC_KIND[item.kind], name,  # type: ignore[arg-type]
                                item.prompt, answers=item.answers))
    return out


def _chunks(items: list[EvalItem], per: int) -> list[list[EvalItem]]:
    """Consecutive groups of ``per``, except that a conversation never asks about the same world
    item twice (a seen and a new phrasing of one fact go to different conversations): replies
    are matched to items by (request kind, world id)."""
    out: list[list[EvalItem]] = []
    remaining = items
    while remaining:
        chunk: list[EvalItem] = []
        keys: set[tuple[str, str]] = set()
        rest: list[EvalItem] = []
        for item in remaining:
            key = (item.request_kind, item.script_id)
            if len(chunk) < per and key not in keys:
                chunk.append(item)
                keys.add(key)
            else:
                rest.append(item)
        out.append(chunk)
        remaining = rest
    return out


def items_fingerprint(conversations: list[EvalConversation]) -> str:
    """Content hash of the exact scripts (part of the evaluation's cache key)."""
    body = [[c.seed, [i.to_dict() for i in c.script]] for c in conversations]
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
