"""A real HTTP server speaking the OpenAI chat-completions JSON, for the LLM composer tests.

It answers {"reply": ...} built from the prompt (the best-scoring passage's text in front of a
fixed phrase) — or garbage when the user message contains `garbage_when` — and records every
request body it received."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REWRITE_PREFIX = "Here is the right answer:"


@contextmanager
def chat_server(garbage_when: str = "\0") -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Yields (base URL ".../v1", the list of request bodies received)."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet test output
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(body)
            user = body["messages"][-1]["content"]
            if garbage_when in user:
                content = "I think the answer is probably fine, no JSON here"
            else:
                first = re.search(r"^\[[^\]]+\] (.+)$", user, re.M)  # the first passage line
                reply = f"{REWRITE_PREFIX} {first.group(1) if first else 'how can I help?'}"
                content = json.dumps({"reply": reply})
            payload = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant",
                                                           "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
