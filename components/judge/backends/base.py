"""The content judge's interface: requests in, per-axis scores (or a per-request error) out."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from components.contract import CONTENT_AXES, AxisScore, ItemError, Passage
from components.judge.rubric import RUBRIC_VERSION

ScoreResult = dict[str, AxisScore] | ItemError


@dataclass(frozen=True)
class JudgeRequest:
    """One model reply to judge on its content axes, with its grounding passages."""

    conversation_id: str
    reply_index: int
    context: str  # the earlier turns, "User: ...\nAssistant: ...", redacted, last few turns
    request: str  # the user's words the reply answers
    reply: str  # the reply's words ("" never reaches the content judge)
    passages: tuple[Passage, ...] = ()
    axes: tuple[str, ...] = CONTENT_AXES

    def __post_init__(self) -> None:
        unknown = [a for a in self.axes if a not in CONTENT_AXES]
        if unknown:
            raise ValueError(f"not content axes: {unknown}; timing axes come from the detectors")

    @property
    def item(self) -> str:
        """The id of this request in per-item errors."""
        return f"{self.conversation_id}#{self.reply_index}"

    def case(self) -> dict[str, Any]:
        """A JSON-ready form (the HTTP prompt embeds it; the digest hashes it)."""
        return {"conversation_id": self.conversation_id, "reply_index": self.reply_index,
                "context": self.context, "request": self.request, "reply": self.reply,
                "passages": [p.model_dump(mode="json") for p in self.passages],
                "axes": list(self.axes)}

    @classmethod
    def from_case(cls, case: dict[str, Any]) -> "JudgeRequest":
        return cls(conversation_id=str(case.get("conversation_id", "")),
                   reply_index=int(case.get("reply_index", 0)),
                   context=str(case.get("context", "")), request=str(case.get("request", "")),
                   reply=str(case.get("reply", "")),
                   passages=tuple(Passage.model_validate(p) for p in case.get("passages", [])),
                   axes=tuple(case.get("axes") or CONTENT_AXES))

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the case."""
        return hashlib.sha256(json.dumps(self.case(), sort_keys=True, ensure_ascii=False,
                                         separators=(",", ":")).encode("utf-8")).hexdigest()


@runtime_checkable
class JudgeBackend(Protocol):
    name: str  # "local-lm:gemma-3-270m", "openai:<model>@<host>"
    version: str  # hash of backend kind + model identity + rubric/prompt version

    def score(self, requests: Sequence[JudgeRequest]) -> list[ScoreResult]:
        """One result per request, in order: the asked axes' scores, or an ItemError."""
        ...

    def close(self) -> None:
        ...


def backend_version(kind: str, model_identity: str, prompt_version: str = "") -> str:
    """sha256 of (backend kind, model identity, rubric version, prompt version)[:16]. Thresholds
    are not in it: they select from the scores, they do not change them."""
    blob = json.dumps([kind, model_identity, RUBRIC_VERSION, prompt_version])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def clip_rationale(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
