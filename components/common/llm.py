"""A client for OpenAI-compatible chat-completions endpoints that answer in a JSON schema.

Production judges and rewriters run behind such an endpoint: vLLM (`/v1/chat/completions` with
`response_format={"type": "json_schema", ...}` as guided decoding), KServe's OpenAI route, or a
hosted API. What this module adds around the HTTP call, and why:

* **the API key is a secret**: read from the environment variable or the file the config names
  (never a value in config), sent as `Authorization: Bearer ...`, and kept out of `repr`, log
  lines and exception texts (any text that would carry it is scrubbed);
* **structured output, checked locally**: the answer's `choices[0].message.content` must parse
  as JSON and validate against the schema (jsonschema); a server that ignores `response_format`
  or answers garbage is retried like a transient error, then reported as "judge-bad-output";
* **bounded retries** with exponential backoff and full jitter (`backoff_s`, doubling) on
  connection errors, timeouts, 429 and 5xx (honouring Retry-After, capped), and invalid JSON;
  other 4xx (a wrong key, an unknown model) are not transient: no retry;
* **a concurrency limit** (a semaphore of `concurrency` slots), so a stage with many threads never
  sends more than the endpoint is sized for;
* **a content cache** (`ContentCache`) in the bucket, keyed by the SHA-256 of the canonical
  request (endpoint, model, messages, schema, sampling settings), so a rerun after a crash pays
  nothing twice. Only validated answers are cached.

Failures surface as `LlmError(code, reason)` with code "judge-unavailable" (connection refused,
HTTP errors), "judge-timeout" (no answer within `timeout_s`, after the retries) or
"judge-bad-output" (no schema-valid JSON after the retries): the stage records them per item.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import httpx
import jsonschema

from components.contract import Keys

log = logging.getLogger(__name__)

LLM_ERROR_CODES = ("judge-unavailable", "judge-timeout", "judge-bad-output")
_MAX_RETRY_AFTER_S = 30.0
_MAX_REASON = 400


class LlmError(RuntimeError):
    """A request that failed after its retries; `code` is one of LLM_ERROR_CODES."""

    def __init__(self, code: str, reason: str) -> None:
        if code not in LLM_ERROR_CODES:
            raise ValueError(f"unknown LLM error code {code!r}")
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def read_api_key(api_key_env: str = "", api_key_file: str = "") -> str | None:
    """The API key from the file (when configured) or else the environment variable; None if
    neither is set (a local vLLM without auth). Raises LlmError if a configured file is unreadable
    (without printing its content)."""
    if api_key_file:
        try:
            key = Path(api_key_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LlmError("judge-unavailable",
                           f"cannot read the API key file {api_key_file!r}: "
                           f"{type(exc).__name__}") from None
        return key or None
    if api_key_env:
        return os.environ.get(api_key_env, "").strip() or None
    return None


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ContentCache:
    """Answers in the bucket at `Keys.judge_cache(digest)`; the digest covers the namespace, so
    the judge and the pair composer (or two prompt versions) never read each other's entries."""

    def __init__(self, store, namespace: str) -> None:
        self.store = store
        self.namespace = namespace

    def digest(self, request: Mapping[str, Any]) -> str:
        return sha256_hex(canonical_json({"namespace": self.namespace, "request": request}))

    def get(self, digest: str) -> Any | None:
        key = Keys.judge_cache(digest)
        try:
            if not self.store.exists(key):
                return None
            entry = self.store.get_json(key)
        except Exception as exc:  # a cache read problem must not fail the request: ask again
            log.warning("judge cache read failed for %s: %s", key, type(exc).__name__)
            return None
        if not isinstance(entry, dict) or entry.get("namespace") != self.namespace:
            return None
        return entry.get("answer")

    def put(self, digest: str, answer: Any, meta: Mapping[str, Any] | None = None) -> None:
        entry = {"namespace": self.namespace, "digest": digest, "answer": answer,
                 "created": time.time(), **(dict(meta) if meta else {})}
        try:
            self.store.put_json(Keys.judge_cache(digest), entry)
        except Exception as exc:  # losing a cache write costs a repeat call later, nothing more
            log.warning("judge cache write failed for %s: %s", digest, type(exc).__name__)


class _Attempt(Exception):
    """One failed attempt: the code it would end with, whether to retry, a wait hint."""

    def __init__(self, code: str, reason: str, retry: bool = True,
                 wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.retry, self.wait_s = code, reason, retry, wait_s


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def parse_json_content(content: str) -> Any:
    """JSON from a message content; tolerates one surrounding ``` fence (some servers add it)."""
    match = _FENCE.match(content)
    return json.loads(match.group(1) if match else content)


class ChatClient:
    """OpenAI-compatible chat completions with JSON-schema answers (see the module docstring)."""

    def __init__(self, endpoint: str, model: str, *, api_key: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 4, backoff_s: float = 1.0,
                 concurrency: int = 8, cache: ContentCache | None = None,
                 temperature: float = 0.0, max_tokens: int | None = 1024) -> None:
        if not endpoint:
            raise ValueError("ChatClient needs an endpoint (judge.endpoint, e.g. http://host/v1)")
        self.endpoint = endpoint.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self.cache = cache
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._slots = threading.BoundedSemaphore(concurrency)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency),
        )
        self.requests_sent = 0  # HTTP attempts (for benches and tests)
        self.cache_hits = 0
        self._count_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg, store=None, namespace: str = "judge") -> "ChatClient":
        """From a Config (or its JudgeConfig): endpoint, model, key source, limits, cache."""
        judge = getattr(cfg, "judge", cfg)
        cache = ContentCache(store, namespace) if (judge.cache and store is not None) else None
        return cls(judge.endpoint, judge.model,
                   api_key=read_api_key(judge.api_key_env, judge.api_key_file),
                   timeout_s=judge.timeout_s, max_retries=judge.max_retries,
                   backoff_s=judge.backoff_s, concurrency=judge.concurrency, cache=cache)

    def __repr__(self) -> str:  # never the key
        return (f"ChatClient(endpoint={self.endpoint!r}, model={self.model!r}, "
                f"auth={'bearer' if self._api_key else 'none'})")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the call ----------------------------------------------------------------------------

    def request_body(self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any],
                     name: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "temperature": self.temperature,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": name, "schema": dict(schema),
                                                "strict": True}},
        }
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        return body

    def complete_json(self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any],
                      name: str = "answer", meta: Mapping[str, Any] | None = None) -> Any:
        """The endpoint's answer as a JSON value that validates against `schema`.

        Cached by content hash when a cache is configured; ``meta`` is recorded in the cache
        entry (not part of its digest) — callers pass the ``conversation_id`` the request is
        about, so erasing a user finds their entries (components/erase). Raises LlmError after
        the retries."""
        body = self.request_body(messages, schema, name)
        digest = None
        if self.cache is not None:
            digest = self.cache.digest({"endpoint": self.endpoint, **body})
            cached = self.cache.get(digest)
            if cached is not None and self._valid(cached, schema):
                with self._count_lock:
                    self.cache_hits += 1
                return cached
        answer = self._with_retries(body, schema)
        if self.cache is not None and digest is not None:
            self.cache.put(digest, answer, {**(dict(meta) if meta else {}),
                                            "model": self.model, "schema_name": name})
        return answer

    def complete_text(self, messages: Sequence[Mapping[str, str]], name: str = "text") -> str:
        """A free-text answer, asked for as {"text": "..."} so it shares the checks above."""
        schema = {"type": "object", "properties": {"text": {"type": "string"}},
                  "required": ["text"], "additionalProperties": False}
        return str(self.complete_json(messages, schema, name)["text"])

    @staticmethod
    def _valid(value: Any, schema: Mapping[str, Any]) -> bool:
        try:
            jsonschema.validate(value, schema)
            return True
        except jsonschema.ValidationError:
            return False

    def _scrub(self, text: str) -> str:
        text = str(text)
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text[:_MAX_REASON]

    def _with_retries(self, body: dict[str, Any], schema: Mapping[str, Any]) -> Any:
        last: _Attempt | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_s * (2 ** (attempt - 1))
                delay = random.uniform(0.5 * delay, 1.5 * delay)  # jitter: no synchronised herd
                if last is not None and last.wait_s is not None:
                    delay = max(delay, min(last.wait_s, _MAX_RETRY_AFTER_S))
                time.sleep(delay)
            try:
                with self._slots:
                    return self._once(body, schema)
            except _Attempt as exc:
                last = exc
                log.warning("chat completion attempt %d/%d failed: %s (%s)", attempt + 1,
                            self.max_retries + 1, exc.code, exc.reason)
                if not exc.retry:
                    break
        assert last is not None
        raise LlmError(last.code, f"{last.reason} (after {attempt + 1} attempt(s))")

    def _once(self, body: dict[str, Any], schema: Mapping[str, Any]) -> Any:
        url = f"{self.endpoint}/chat/completions"
        with self._count_lock:
            self.requests_sent += 1
        try:
            response = self._http.post(url, content=canonical_json(body).encode("utf-8"))
        except httpx.TimeoutException as exc:
            raise _Attempt("judge-timeout",
                           f"no answer from {self.endpoint} within {self.timeout_s:g} s "
                           f"({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Attempt("judge-unavailable",
                           self._scrub(f"cannot reach {self.endpoint}: "
                                       f"{type(exc).__name__}: {exc}")) from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Attempt("judge-unavailable", f"HTTP {status} from {url}",
                           wait_s=_retry_after(response))
        if status >= 400:
            hint = " (check the API key)" if status in (401, 403) else ""
            raise _Attempt("judge-unavailable",
                           self._scrub(f"HTTP {status} from {url}{hint}: {response.text[:200]}"),
                           retry=False)
        try:
            payload = response.json()
            content = payload["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("message content is not a string")
            answer = parse_json_content(content)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Attempt("judge-bad-output",
                           self._scrub(f"answer is not JSON in the expected envelope: "
                                       f"{type(exc).__name__}: {exc}")) from None
        try:
            jsonschema.validate(answer, schema)
        except jsonschema.ValidationError as exc:
            raise _Attempt("judge-bad-output",
                           self._scrub(f"answer does not match the schema: {exc.message}")) \
                from None
        return answer


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
