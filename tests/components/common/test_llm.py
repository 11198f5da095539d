"""ChatClient against REAL HTTP servers started in the test (stdlib http.server on loopback):
a correct server, a flaky one (500 then success), one that hangs past the timeout, one that
answers garbage, a refused port; the API key as a Bearer header and never in errors or logs;
the content cache (a second identical call sends nothing) in the live bucket."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from components.common.config import load_config
from components.common.llm import ChatClient, ContentCache, LlmError, read_api_key
from components.contract import Keys

SECRET = "sk-test-0123456789-very-secret"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}},
          "required": ["answer"], "additionalProperties": False}
MESSAGES = [{"role": "user", "content": "What is 6 times 7?"}]


@dataclass
class Behaviour:
    mode: str = "ok"  # ok | fail-first | hang | garbage | wrong-schema | status
    failures: int = 0  # fail-first: how many 500s before answering
    status: int = 500  # status mode: always this HTTP status
    hang_s: float = 3.0
    requests: int = 0
    auth_headers: list[str] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(b: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with b.lock:
                b.requests += 1
                n = b.requests
                b.auth_headers.append(self.headers.get("Authorization", ""))
                b.bodies.append(body)
            content = json.dumps({"answer": 42})
            if b.mode == "fail-first" and n <= b.failures:
                self._send(500, b'{"error": {"message": "overloaded"}}')
                return
            if b.mode == "status":
                self._send(b.status, b'{"error": {"message": "nope"}}')
                return
            if b.mode == "hang":
                b.release.wait(b.hang_s)
            if b.mode == "garbage":
                content = "Sure! Here is the answer: {answer: forty-two"
            if b.mode == "wrong-schema":
                content = json.dumps({"answer": "forty-two"})
            reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": content}}]}
            self._send(200, json.dumps(reply).encode())

    return Handler


@pytest.fixture
def fake_server() -> Iterator[Any]:
    servers = []

    def start(behaviour: Behaviour) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(behaviour))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, behaviour))
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server, behaviour in servers:
        behaviour.release.set()
        server.shutdown()
        server.server_close()


def _client(url: str, **kw: Any) -> ChatClient:
    opts = dict(api_key=SECRET, timeout_s=5.0, max_retries=3, backoff_s=0.01, concurrency=4)
    opts.update(kw)
    return ChatClient(url, "judge-model", **opts)


def _no_secret(exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    assert SECRET not in str(exc) and SECRET not in repr(exc)
    assert SECRET not in caplog.text


def test_correct_answer_with_bearer_key_and_json_schema(fake_server):
    b = Behaviour()
    url = fake_server(b)
    with _client(url) as client:
        assert client.complete_json(MESSAGES, SCHEMA, "product") == {"answer": 42}
        assert SECRET not in repr(client)
    assert b.requests == 1 and b.auth_headers == [f"Bearer {SECRET}"]
    sent = b.bodies[0]
    assert sent["model"] == "judge-model" and sent["messages"] == MESSAGES
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == SCHEMA
    assert sent["response_format"]["json_schema"]["name"] == "product"


def test_500_then_success_is_retried(fake_server, caplog):
    b = Behaviour(mode="fail-first", failures=2)
    url = fake_server(b)
    with caplog.at_level(logging.WARNING), _client(url) as client:
        assert client.complete_json(MESSAGES, SCHEMA) == {"answer": 42}
    assert b.requests == 3  # two 500s, then the answer
    assert "HTTP 500" in caplog.text and SECRET not in caplog.text


def test_hanging_server_times_out(fake_server, caplog):
    b = Behaviour(mode="hang", hang_s=5.0)
    url = fake_server(b)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), _client(url, timeout_s=0.4, max_retries=1) as client:
        with pytest.raises(LlmError) as err:
            client.complete_json(MESSAGES, SCHEMA)
    assert err.value.code == "judge-timeout"
    assert b.requests == 2 and time.monotonic() - started < 4.0  # bounded: 2 x 0.4 s + backoff
    _no_secret(err.value, caplog)


@pytest.mark.parametrize("mode", ["garbage", "wrong-schema"])
def test_garbage_json_is_bad_output_after_max_retries(fake_server, caplog, mode):
    b = Behaviour(mode=mode)
    url = fake_server(b)
    with caplog.at_level(logging.WARNING), _client(url, max_retries=2) as client:
        with pytest.raises(LlmError) as err:
            client.complete_json(MESSAGES, SCHEMA)
    assert err.value.code == "judge-bad-output"
    assert b.requests == 3  # 1 + max_retries
    _no_secret(err.value, caplog)


def test_refused_connection_is_unavailable(caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with caplog.at_level(logging.WARNING), \
            _client(f"http://127.0.0.1:{port}/v1", max_retries=2) as client:
        with pytest.raises(LlmError) as err:
            client.complete_json(MESSAGES, SCHEMA)
    assert err.value.code == "judge-unavailable" and client.requests_sent == 3
    _no_secret(err.value, caplog)


def test_wrong_key_is_not_retried(fake_server, caplog):
    b = Behaviour(mode="status", status=401)
    url = fake_server(b)
    with caplog.at_level(logging.WARNING), _client(url) as client:
        with pytest.raises(LlmError) as err:
            client.complete_json(MESSAGES, SCHEMA)
    assert err.value.code == "judge-unavailable" and "401" in err.value.reason
    assert b.requests == 1  # a 4xx other than 429 is not transient
    _no_secret(err.value, caplog)


def test_429_is_retried(fake_server):
    b = Behaviour(mode="status", status=429)
    url = fake_server(b)
    with _client(url, max_retries=1) as client, pytest.raises(LlmError) as err:
        client.complete_json(MESSAGES, SCHEMA)
    assert err.value.code == "judge-unavailable" and b.requests == 2


def test_concurrency_limit_bounds_requests_in_flight(fake_server):
    b = Behaviour(mode="hang", hang_s=0.3)
    url = fake_server(b)
    in_flight = []
    with _client(url, concurrency=2) as client:
        def call() -> None:
            client.complete_json(MESSAGES, SCHEMA)

        threads = [threading.Thread(target=call) for _ in range(6)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        in_flight.append(time.monotonic() - started)
    # 6 requests of 0.3 s through 2 slots take at least 3 rounds.
    assert b.requests == 6 and in_flight[0] >= 0.85


def test_api_key_from_file_and_env(tmp_path, monkeypatch, fake_server):
    key_file = tmp_path / "judge-key"
    key_file.write_text(SECRET + "\n")
    cfg = load_config("ci", overrides=[f"judge.api_key_file={key_file}",
                                       "judge.endpoint=http://127.0.0.1:1/v1"])
    assert read_api_key(cfg.judge.api_key_env, cfg.judge.api_key_file) == SECRET
    assert SECRET not in cfg.to_json()  # the config names the file, never the value
    monkeypatch.setenv("DUPLEXALIGN_JUDGE_API_KEY", "from-env")
    assert read_api_key("DUPLEXALIGN_JUDGE_API_KEY", "") == "from-env"
    with pytest.raises(LlmError) as err:
        read_api_key("", str(tmp_path / "missing"))
    assert err.value.code == "judge-unavailable"
    b = Behaviour()
    url = fake_server(b)
    cfg = load_config("ci", overrides=[f"judge.api_key_file={key_file}", f"judge.endpoint={url}",
                                       "judge.cache=false"])
    with ChatClient.from_config(cfg) as client:
        client.complete_json(MESSAGES, SCHEMA)
    assert b.auth_headers == [f"Bearer {SECRET}"]


@pytest.mark.integration
def test_cache_answers_a_repeated_request_without_http(fake_server, store):
    b = Behaviour()
    url = fake_server(b)
    cache = ContentCache(store, "test-judge")
    with _client(url, cache=cache) as client:
        assert client.complete_json(MESSAGES, SCHEMA) == {"answer": 42}
        assert client.complete_json(MESSAGES, SCHEMA) == {"answer": 42}
        assert b.requests == 1 and client.cache_hits == 1
        # A different request (or namespace) is not served from the cache.
        client.complete_json([{"role": "user", "content": "And 7 times 6?"}], SCHEMA)
        assert b.requests == 2
    keys = [o.key for o in store.list(Keys.judge_cache("").rsplit("/", 1)[0] + "/")]
    assert len(keys) == 2
    entry = store.get_json(keys[0])
    assert entry["namespace"] == "test-judge" and SECRET not in json.dumps(entry)
    with _client(url, cache=ContentCache(store, "other")) as client:
        client.complete_json(MESSAGES, SCHEMA)
    assert b.requests == 3
    # A failed request is not cached: the next run asks again.
    bad = Behaviour(mode="garbage")
    bad_url = fake_server(bad)
    with _client(bad_url, cache=cache, max_retries=0) as client:
        for _ in range(2):
            with pytest.raises(LlmError):
                client.complete_json(MESSAGES, SCHEMA)
    assert bad.requests == 2
