"""The content judge behind an OpenAI-compatible chat-completions endpoint.

Production: vLLM or KServe serving a large instruct model, or a hosted API (see the judge README
for the settings). Each request becomes one chat: the system message is the rubric and the rules,
the user message the case — readable text for the model, then the same case as a fenced ```json
block so a program (our own `components/judge/server.py`) can parse it. The answer is asked for
in a JSON schema (`response_format` json_schema: per asked axis a score 1..5 and a rationale),
validated locally by the ChatClient, and turned into AxisScore. A request that still fails after
the client's retries becomes an ItemError with the client's code; the other requests go on.
Requests run concurrently, up to `judge.concurrency` in flight (the client's semaphore).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence
from urllib.parse import urlparse

from components.common.llm import ChatClient, LlmError
from components.contract import AxisScore, ItemError
from components.judge.backends.base import (JudgeRequest, ScoreResult, backend_version,
                                            clip_rationale)
from components.judge.rubric import AXIS_LABELS, RUBRIC_VERSION, rubric_text

log = logging.getLogger(__name__)

PROMPT_VERSION = "openai-prompt-1"
SCHEMA_NAME = "judge_scores"
CASE_FENCE = "```json"

SYSTEM_RULES = """You are the quality judge of a voice assistant's replies in customer-support
calls. Rate ONE assistant reply on the axes the user asks for, using the rubric below.
Rules:
- Judge factual accuracy ONLY against the reference passages from the company's knowledge base;
  a number that differs from the passages is wrong. No passage about it: rate 3.
- Timing (interruptions, silences) is judged elsewhere: ignore it.
- Each rationale is one or two short sentences naming the evidence (quote the passage id when a
  fact is wrong).
- Answer with one JSON object in the requested schema and nothing else."""


def judge_schema(axes: Sequence[str]) -> dict[str, Any]:
    """{axis: {score: 1..5, rationale: str, level_probs: [5 probabilities] | null}} for `axes`.

    Every property is required and no other is allowed (OpenAI's strict structured output needs
    that); `level_probs` is null for a judge that does not score levels by probability."""
    axis_schema = {
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": 1, "maximum": 5},
            "rationale": {"type": "string"},
            "level_probs": {"type": ["array", "null"], "items": {"type": "number"}},
        },
        "required": ["score", "rationale", "level_probs"],
        "additionalProperties": False,
    }
    return {"type": "object", "properties": {a: axis_schema for a in axes},
            "required": list(axes), "additionalProperties": False}


def build_messages(req: JudgeRequest) -> list[dict[str, str]]:
    system = SYSTEM_RULES + "\n\n" + rubric_text(req.axes)
    lines = ["Reference passages:"]
    lines += [f"[{p.passage_id}] {p.text}" for p in req.passages] or ["(none retrieved)"]
    if req.context.strip():
        lines += ["", "Earlier in the call:", req.context.strip()]
    lines += ["", f"Customer: {req.request.strip()}", f"Assistant (the reply to rate): "
              f"{req.reply.strip()}", "",
              "Rate the reply on: " + ", ".join(f"{a} ({AXIS_LABELS[a]})" for a in req.axes),
              "", "The same case as data:", CASE_FENCE,
              json.dumps(req.case(), ensure_ascii=False, indent=1), "```"]
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(lines)}]


def parse_case(content: str) -> dict[str, Any]:
    """The case from a user message built by `build_messages` (the last fenced json block)."""
    start = content.rfind(CASE_FENCE)
    if start < 0:
        raise ValueError("no ```json case block in the message")
    body = content[start + len(CASE_FENCE):]
    end = body.find("```")
    if end < 0:
        raise ValueError("the ```json case block is not closed")
    case = json.loads(body[:end])
    if not isinstance(case, dict):
        raise ValueError("the case block is not a JSON object")
    return case


def answer_to_scores(answer: dict[str, Any], axes: Sequence[str]) -> dict[str, AxisScore]:
    out = {}
    for axis in axes:
        item = answer[axis]
        probs = item.get("level_probs")
        if not (isinstance(probs, list) and len(probs) == 5):
            probs = None
        out[axis] = AxisScore(score=float(item["score"]),
                              rationale=clip_rationale(item.get("rationale", "")),
                              level_probs=[float(p) for p in probs] if probs else None)
    return out


class OpenAIJudge:
    """JudgeBackend over a ChatClient (see the module docstring)."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        host = urlparse(client.endpoint).netloc or client.endpoint
        self.name = f"openai:{client.model}@{host}"
        self.version = backend_version("openai", f"{client.model}@{host}", PROMPT_VERSION)
        self.concurrency = client.concurrency

    @classmethod
    def from_config(cls, cfg, store=None) -> "OpenAIJudge":
        # The namespace keeps cached answers of another rubric or prompt out of reach.
        return cls(ChatClient.from_config(cfg, store,
                                          namespace=f"judge:{RUBRIC_VERSION}:{PROMPT_VERSION}"))

    def score(self, requests: Sequence[JudgeRequest]) -> list[ScoreResult]:
        if len(requests) <= 1 or self.concurrency <= 1:
            return [self.score_one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)),
                                thread_name_prefix="judge") as pool:
            return list(pool.map(self.score_one, requests))

    def score_one(self, req: JudgeRequest) -> ScoreResult:
        if not req.reply.strip():
            return ItemError(item=req.item, code="judge-empty-reply",
                             reason="a reply with no words has no content to judge")
        try:
            answer = self.client.complete_json(build_messages(req), judge_schema(req.axes),
                                               SCHEMA_NAME,
                                               meta={"conversation_id": req.conversation_id,
                                                     "reply_index": req.reply_index})
            return answer_to_scores(answer, req.axes)
        except LlmError as exc:
            return ItemError(item=req.item, code=exc.code, reason=exc.reason)
        except (KeyError, TypeError, ValueError) as exc:  # schema-valid yet unusable
            return ItemError(item=req.item, code="judge-bad-output",
                             reason=f"{type(exc).__name__}: {exc}"[:400])

    def close(self) -> None:
        self.client.close()
