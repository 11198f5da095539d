"""The project's small OpenAI-compatible judge server, in front of the local LM backend.

It lets the HTTP backend (`backends/openai_http.py`) and `duplexalign bench judge` run for real
on a machine without a large model: `GET /v1/models`, `POST /v1/chat/completions`. A chat's last
user message must carry the case as a fenced ```json block (as `build_messages` writes it); the
case is scored by `LocalLMJudge` and answered as `choices[0].message.content` = the JSON object of
the judge schema, checked against the request's `response_format` schema when one is sent.

It binds loopback only (127.0.0.1; port 0 picks a free one): it is a test and bench fixture, not
a production server (production: vLLM / KServe). Requests are served by threads; the model runs
one case at a time behind the backend's lock (a 270M model on 2 cores gains nothing from
overlapping forwards). With `api_key` set, requests must carry `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import jsonschema

from components.contract import ItemError
from components.judge.backends.base import JudgeRequest
from components.judge.backends.local_lm import LocalLMJudge
from components.judge.backends.openai_http import parse_case

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class JudgeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], backend: LocalLMJudge, model_name: str,
                 api_key: str | None = None) -> None:
        super().__init__(address, _Handler)
        self.backend = backend
        self.model_name = model_name
        self.api_key = api_key
        self.requests_served = 0
        self.count_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: JudgeHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet; never log headers (the key)
        log.debug("judge server: " + fmt, *args)

    def _send(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind}})

    def _authorised(self) -> bool:
        if not self.server.api_key:
            return True
        given = self.headers.get("Authorization", "")
        expected = f"Bearer {self.server.api_key}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return True
        self._error(401, "missing or wrong API key", "authentication_error")
        return False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._authorised():
            return
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [
                {"id": self.server.model_name, "object": "model", "owned_by": "duplexalign",
                 "root": self.server.backend.name}]})
        elif self.path.rstrip("/") in ("/health", "/v1/health"):
            self._send(200, {"status": "ok"})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route {self.path}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not self._authorised():
            return
        try:
            body = json.loads(raw)
            messages = body["messages"]
            user = [m for m in messages if m.get("role") == "user"]
            if not user:
                raise ValueError("no user message")
            request = JudgeRequest.from_case(parse_case(str(user[-1].get("content", ""))))
        except (ValueError, KeyError, TypeError) as exc:
            self._error(400, f"cannot read the judge case: {type(exc).__name__}: {exc}")
            return
        result = self.server.backend.score_one(request)
        if isinstance(result, ItemError):
            status = 400 if result.code == "judge-empty-reply" else 500
            self._error(status, f"{result.code}: {result.reason}", "server_error")
            return
        answer = {axis: {"score": s.score, "rationale": s.rationale, "level_probs": s.level_probs}
                  for axis, s in result.items()}
        schema = (((body.get("response_format") or {}).get("json_schema") or {}).get("schema"))
        if schema:
            try:
                jsonschema.validate(answer, schema)
            except jsonschema.ValidationError as exc:
                self._error(400, f"the judge's answer cannot meet the requested schema: "
                                 f"{exc.message}")
                return
        with self.server.count_lock:
            self.server.requests_served += 1
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
            "created": int(time.time()), "model": self.server.model_name,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": json.dumps(answer)}}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        })


def make_server(cfg, port: int = 0, backend: LocalLMJudge | None = None,
                api_key: str | None = None) -> JudgeHTTPServer:
    """A server on 127.0.0.1:`port` (0 = free) in front of `backend` (default: from `cfg`)."""
    backend = backend or LocalLMJudge.from_config(cfg)
    return JudgeHTTPServer((LOOPBACK, port), backend, cfg.judge.model, api_key)


def serve_in_thread(cfg, port: int = 0, backend: LocalLMJudge | None = None,
                    api_key: str | None = None) -> tuple[str, Callable[[], None]]:
    """Start the server in a daemon thread; returns (base URL ".../v1", stop)."""
    server = make_server(cfg, port, backend, api_key)
    thread = threading.Thread(target=server.serve_forever, name="judge-server", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    return server.url, stop


def main(argv: list[str] | None = None, cfg=None) -> int:
    """`duplexalign judge serve [--port P]`: serve until interrupted (Ctrl-C)."""
    parser = argparse.ArgumentParser(prog="duplexalign judge serve",
                                     description="OpenAI-compatible judge server (loopback) in "
                                                 "front of the local LM judge")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0 = a free one)")
    parser.add_argument("--profile", default=None, help="config profile (default: demo)")
    parser.add_argument("--require-key", action="store_true",
                        help="require the API key named by judge.api_key_env / api_key_file")
    args = parser.parse_args(argv)
    if cfg is None:
        from components.common.config import load_config

        cfg = load_config(args.profile)
    api_key = None
    if args.require_key:
        from components.common.llm import read_api_key

        api_key = read_api_key(cfg.judge.api_key_env, cfg.judge.api_key_file)
        if not api_key:
            print("no API key found (judge.api_key_env / judge.api_key_file)", file=sys.stderr)
            return 2
    started = time.monotonic()
    server = make_server(cfg, args.port, api_key=api_key)
    print(f"judge server ({server.backend.name}, loaded in {time.monotonic() - started:.1f} s) "
          f"on {server.url}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
