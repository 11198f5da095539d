"""The LLM composer's endpoint for the tests, behind the OpenAI chat-completions JSON
(tests/support/openai_chat.py).

It answers {"reply": ...} built from the prompt (the best-scoring passage's text in front of a
fixed phrase) — or garbage when the user message contains `garbage_when` — and records every
request body it received."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.support.openai_chat import chat_completions_server

REWRITE_PREFIX = "Here is the right answer:"


@contextmanager
def chat_server(garbage_when: str = "\0") -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Yields (base URL ".../v1", the list of request bodies received)."""

    def answer(body: dict[str, Any]) -> str:
        user = body["messages"][-1]["content"]
        if garbage_when in user:
            return "I think the answer is probably fine, no JSON here"
        first = re.search(r"^\[[^\]]+\] (.+)$", user, re.M)  # the first passage line
        return json.dumps({"reply": f"{REWRITE_PREFIX} "
                                    f"{first.group(1) if first else 'how can I help?'}"})

    with chat_completions_server(answer) as served:
        yield served
