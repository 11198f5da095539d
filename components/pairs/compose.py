"""Chosen replies for content (A) and silence (C) pairs: composed from knowledge-base passages.

Two composers behind one interface (`Composer.compose(ComposeRequest) -> Composition`):

* `KbComposer` ("kb", the embedded default) — deterministic, no language model. It splits the
  passages the judge retrieved into sentences, re-ranks the sentences against the user's request
  with the knowledge base's sentence embeddings (MiniLM), and builds the reply from the best one,
  fixing the flagged axes by rule:

  - factual accuracy / helpfulness (and any silence): the sentence that best answers the request,
    trimmed to `pairs.max_reply_words`;
  - safety: a refusal sentence, plus the most relevant POLICY sentence of the knowledge base
    ("only the account holder can ...", "never share ...") when retrieval finds one;
  - instruction following: the grounded content SHORTENED to its best-matching clause — the
    composer cannot follow arbitrary instructions ("answer in one word", "spell it"); it only
    makes the reply short and on point, which fixes the commonest miss (a long-winded answer);
  - tone: a polite wrapper around the grounded content (or around a generic helpful line);
  - nothing above `SIMILARITY_FLOOR`: a short generic helpful reply (`GENERIC_REPLY`), or the bare
    refusal for safety. Small talk therefore gets a generic line, never an invented fact.

* `LlmComposer` ("llm", production) — the judge's OpenAI-compatible endpoint
  (`components.common.llm.ChatClient`) rewrites the reply in a JSON schema {"reply": string},
  with the passages in the prompt: fix only the flagged axes, take facts only from the passages.
  An endpoint failure raises `ComposeError` with the LlmError's code; the stage records it as a
  per-pair failure and goes on.

Facts come only from the operator's knowledge base (the passages); the pipeline never reads the
simulator's ground truth. PII placeholders ([PHONE], [PERSON]) are left as they are:
resynthesize replaces them with typed fake values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from components.contract import Passage

# Cosine similarity (MiniLM, normalised) below which a knowledge-base sentence is not taken as an
# answer to the request. Related sentences of the operator's FAQ score ~0.4-0.7 against a
# question about them, unrelated ones ~0.0-0.2.
SIMILARITY_FLOOR = 0.3
REFUSAL = "I'm sorry, but I can't help with that."
GENERIC_REPLY = "I'm happy to help. Could you tell me a little more about what you need?"
POLITE_OPENING = "Thanks for asking!"
POLITE_CLOSING = "Is there anything else I can help you with?"
# Sentences that state a rule (what only someone may do, what never to do): the safety fix quotes
# one when it is relevant, so a refusal says why.
POLICY_CUES = re.compile(r"\b(only|never|must|not allowed|illegal|prohibited)\b", re.I)

KB_COMPOSER_VERSION = "kb-compose-1"
Embedder = Callable[[Sequence[str]], np.ndarray]  # texts -> normalised rows (KnowledgeBase.embed)
Retriever = Callable[[str, int], list[Passage]]  # KnowledgeBase.retrieve
POLICY_K = 8  # passages searched for a policy sentence when a reply was unsafe

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9$\"'(\[])")
_CLAUSE_SPLIT = re.compile(r"\s*[,;:]\s+|\s+[-\u2013\u2014]\s+")


class ComposeError(Exception):
    """A chosen reply could not be composed (per pair); code as in LlmError."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class ComposeRequest:
    request: str  # the user's (redacted) words the reply answers
    rejected: str  # what the model said ("" for silence)
    problems: tuple[str, ...]  # the flagged axes (content and timing)
    passages: tuple[Passage, ...]
    context: str = ""  # earlier turns, for the LLM prompt
    max_words: int | None = None  # time budget: what can be said before the user's next turn
    # Whose conversation: recorded with a cached LLM answer (never in the prompt) so erasing
    # the user finds it.
    conversation_id: str = ""


@dataclass(frozen=True)
class Composition:
    text: str
    passages: list[str] = field(default_factory=list)  # passage ids the text is grounded in
    note: str = ""  # which rule made it (kb) or the model (llm)


class Composer(Protocol):
    name: str

    def compose(self, req: ComposeRequest) -> Composition: ...


# ----------------------------------------------------------------------------- text helpers


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def words_of(text: str) -> list[str]:
    return text.split()


def trim_words(text: str, max_words: int) -> str:
    """At most `max_words` words: whole sentences when the first ones fit, else a word cut that
    ends cleanly with a full stop."""
    if len(words_of(text)) <= max_words:
        return text
    kept: list[str] = []
    for sentence in split_sentences(text):
        if len(words_of(" ".join(kept + [sentence]))) > max_words:
            break
        kept.append(sentence)
    if kept:
        return " ".join(kept)
    cut = " ".join(words_of(text)[:max_words]).rstrip(",;:-\u2013\u2014 ")
    return cut if cut[-1:] in ".!?" else cut + "."


def normalise(text: str) -> str:
    """For "is the chosen text the rejected text?": case, punctuation and spacing ignored."""
    return " ".join(re.sub(r"[^\w\[\]$%]+", " ", text.lower()).split())


def _sentence_case(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text[-1:] in ".!?" else text + "."


# ----------------------------------------------------------------------------- kb composer


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """MiniLM on a handful of sentences runs on ONE torch thread (restored after): measured on
    the 2-core machine under load, 58 ms per call on one thread vs 1.4 s on two (OpenMP threads
    waiting on each other); the work is too small to split."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class _Ranked:
    text: str
    passage_id: str
    score: float


class KbComposer:
    """Deterministic composition from the retrieved passages (see the module docstring)."""

    name = KB_COMPOSER_VERSION

    def __init__(self, embed: Embedder, max_words: int, floor: float = SIMILARITY_FLOOR,
                 retrieve: Retriever | None = None, policy_k: int = POLICY_K):
        self.embed, self.max_words, self.floor = embed, max_words, floor
        # Safety only: the judge's few passages answer the request's topic; the rule that makes
        # it unsafe ("only the account holder can ...") may rank lower, so look a little wider.
        self.retrieve, self.policy_k = retrieve, policy_k

    def rank(self, request: str, passages: Sequence[Passage]) -> list[_Ranked]:
        """The passages' sentences, best answer to the request first."""
        sentences: list[tuple[str, str]] = []
        seen: set[str] = set()
        for passage in passages:
            for sentence in split_sentences(passage.text):
                if sentence not in seen:
                    seen.add(sentence)
                    sentences.append((sentence, passage.passage_id))
        if not sentences or not request.strip():
            return []
        vectors = np.asarray(self.embed([request] + [s for s, _ in sentences]), dtype=np.float32)
        sims = vectors[1:] @ vectors[0]
        ranked = [_Ranked(s, pid, float(sim)) for (s, pid), sim in zip(sentences, sims)]
        return sorted(ranked, key=lambda r: -r.score)

    def _shorten(self, request: str, sentence: str) -> str:
        """The clause of `sentence` that best matches the request (instruction following)."""
        clauses = [c for c in _CLAUSE_SPLIT.split(sentence) if len(words_of(c)) >= 2]
        if len(clauses) <= 1:
            return sentence
        vectors = np.asarray(self.embed([request] + clauses), dtype=np.float32)
        best = clauses[int(np.argmax(vectors[1:] @ vectors[0]))]
        return _sentence_case(best)

    def compose(self, req: ComposeRequest) -> Composition:
        with one_torch_thread():
            return self._compose(req)

    def _compose(self, req: ComposeRequest) -> Composition:
        problems = set(req.problems)
        limit = min(self.max_words, req.max_words) if req.max_words else self.max_words
        ranked = [r for r in self.rank(req.request, req.passages) if r.score >= self.floor]
        used: list[str] = []
        if "safety" in problems:
            wider = list(req.passages)
            if self.retrieve is not None:
                known = {p.passage_id for p in wider}
                wider += [p for p in self.retrieve(req.request, self.policy_k)
                          if p.passage_id not in known]
            policy = next((r for r in self.rank(req.request, wider)
                           if r.score >= self.floor and POLICY_CUES.search(r.text)), None)
            text, note = REFUSAL, "refusal"
            if policy is not None and len(words_of(f"{REFUSAL} {policy.text}")) <= limit:
                text, note = f"{REFUSAL} {policy.text}", "refusal+policy"
                used.append(policy.passage_id)
        elif ranked:
            best = ranked[0]
            used.append(best.passage_id)
            text, note = best.text, "answer"
            # Instruction following, or no time to say the whole sentence before the user's next
            # turn: the clause that answers the request.
            if "instruction_following" in problems or len(words_of(text)) > limit:
                text, note = self._shorten(req.request, text), "answer-shortened"
        else:
            text, note = GENERIC_REPLY, "generic"
        if "tone" in problems and not problems & {"instruction_following", "safety"}:
            wrapped = [f"{POLITE_OPENING} {text}"]
            if note != "generic":
                wrapped.insert(0, f"{POLITE_OPENING} {text} {POLITE_CLOSING}")
            fitting = [w for w in wrapped if len(words_of(w)) <= limit]
            if fitting:
                text, note = fitting[0], note + "+polite"
        # The time budget chose the shorter forms above; the hard cap is max_reply_words (a word
        # cut to the budget would leave a fragment: the stage cuts at sentences only).
        return Composition(trim_words(text, self.max_words), used, note)


# ----------------------------------------------------------------------------- llm composer

LLM_PROMPT_VERSION = "pairs-rewrite-1"
REPLY_SCHEMA: dict[str, Any] = {
    "type": "object",
    # No length keywords: strict structured-output modes reject some; emptiness is checked here.
    "properties": {"reply": {"type": "string"}},
    "required": ["reply"],
    "additionalProperties": False,
}
_SYSTEM = (
    "You rewrite one spoken reply of a customer-service voice assistant. Fix ONLY the flagged "
    "problems and keep everything else. Take every fact from the knowledge-base passages and "
    "from nothing else; if they do not answer the request, say briefly that you can help further "
    "instead of inventing facts. Refuse unsafe requests politely. Keep placeholders such as "
    "[PHONE] or [PERSON] as they are. The reply is spoken: plain sentences, at most {max_words} "
    "words. Answer with JSON {{\"reply\": \"...\"}} only."
)
_AXIS_HINTS = {
    "helpfulness": "the reply did not help with the request",
    "safety": "the reply helped with something unsafe or was unsafe",
    "factual_accuracy": "the reply stated wrong facts",
    "instruction_following": "the reply ignored the user's instructions (form, length, format)",
    "tone": "the reply was rude or off in tone",
    "interruption": "the reply talked over the user (its timing is fixed separately)",
    "unresponsiveness": "the assistant said nothing or answered far too late: write the reply it "
                        "should have given",
}


def rewrite_messages(req: ComposeRequest, max_words: int) -> list[dict[str, str]]:
    if req.max_words:
        max_words = min(max_words, req.max_words)
    passages = "\n".join(f"[{p.passage_id}] {p.text}" for p in req.passages) or "(none found)"
    flagged = "\n".join(f"- {axis}: {_AXIS_HINTS.get(axis, axis)}" for axis in req.problems)
    user = (f"Conversation so far:\n{req.context or '(start)'}\n\n"
            f"User request: {req.request}\n"
            f"Assistant's reply: {req.rejected or '(nothing)'}\n\n"
            f"Flagged problems:\n{flagged}\n\nKnowledge-base passages:\n{passages}")
    return [{"role": "system", "content": _SYSTEM.format(max_words=max_words)},
            {"role": "user", "content": user}]


class LlmComposer:
    """Grounded rewrite by an OpenAI-compatible endpoint (`ChatClient.complete_json`)."""

    def __init__(self, client: Any, model: str, max_words: int):
        self.client, self.max_words = client, max_words
        self.name = f"llm:{model}@{LLM_PROMPT_VERSION}"

    def compose(self, req: ComposeRequest) -> Composition:
        from components.common.llm import LlmError

        try:
            answer = self.client.complete_json(
                rewrite_messages(req, self.max_words), REPLY_SCHEMA, name="pairs_rewrite",
                meta={"conversation_id": req.conversation_id} if req.conversation_id else None)
        except LlmError as exc:
            raise ComposeError(exc.code, exc.reason) from exc
        text = " ".join(str(answer.get("reply", "")).split())
        if not text:
            raise ComposeError("judge-bad-output", "the endpoint answered an empty reply")
        return Composition(trim_words(text, self.max_words), [p.passage_id for p in req.passages],
                           "llm")

    def close(self) -> None:
        self.client.close()
