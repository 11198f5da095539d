"""The HTTP backend end to end over real HTTP: OpenAIJudge -> ChatClient -> the project's
OpenAI-compatible server (components/judge/server.py) -> LocalLMJudge, the same scores as the
local backend directly; the Bearer key; per-request errors when the server is gone."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from components.common.config import load_config
from components.contract import CONTENT_AXES, ItemError, Passage
from components.judge.backends import JudgeRequest, make_backend
from components.judge.backends.openai_http import (OpenAIJudge, build_messages, judge_schema,
                                                   parse_case)
from components.judge.server import serve_in_thread

KEY = "sk-judge-test-key-42"
PASSAGES = (Passage(passage_id="billing#2", doc_id="billing", score=0.8,
                    text="If we do not receive your payment by the due date, a late fee of $7 is "
                         "added to your next bill."),)


def _requests() -> list[JudgeRequest]:
    return [JudgeRequest("conv-a", i, "User: Hi.\nAssistant: Hi! How can I help?",
                         "What's the late fee?", reply, PASSAGES)
            for i, reply in enumerate(["A late fee of $7 is added to your next bill.",
                                       "A late fee of $12 is added to your next bill.",
                                       "Ugh, whatever, just pay on time."])]


def test_messages_carry_the_case_as_fenced_json():
    req = _requests()[1]
    messages = build_messages(req)
    assert messages[0]["role"] == "system" and "Factual accuracy" in messages[0]["content"]
    case = parse_case(messages[-1]["content"])
    assert JudgeRequest.from_case(case) == req
    schema = judge_schema(req.axes)
    assert schema["required"] == list(CONTENT_AXES)


@pytest.fixture
def judge_server(judge_local_backend):
    cfg = load_config("ci")
    url, stop = serve_in_thread(cfg, backend=judge_local_backend, api_key=KEY)
    yield url
    stop()


def test_openai_backend_through_the_server_equals_local(judge_server, judge_local_backend,
                                                         monkeypatch):
    monkeypatch.setenv("DUPLEXALIGN_JUDGE_API_KEY", KEY)
    models = httpx.get(f"{judge_server}/models", headers={"Authorization": f"Bearer {KEY}"})
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "judge"
    assert httpx.get(f"{judge_server}/models").status_code == 401  # no key, no answer

    cfg = load_config("ci", overrides=["judge.backend=openai", f"judge.endpoint={judge_server}",
                                       "judge.cache=false", "judge.concurrency=3"])
    remote = make_backend(cfg)
    assert isinstance(remote, OpenAIJudge) and remote.name.startswith("openai:judge@127.0.0.1")
    assert remote.version != judge_local_backend.version
    reqs = _requests()
    over_http = remote.score(reqs)
    direct = judge_local_backend.score(reqs)
    remote.close()
    for a, b in zip(over_http, direct):
        assert not isinstance(a, ItemError), a
        assert set(a) == set(b) == set(CONTENT_AXES)
        for axis in CONTENT_AXES:
            assert a[axis].score == pytest.approx(b[axis].score, abs=1e-6)
            assert a[axis].level_probs == pytest.approx(b[axis].level_probs, abs=1e-9)
            assert a[axis].rationale == b[axis].rationale
    assert over_http[0]["factual_accuracy"].score > over_http[1]["factual_accuracy"].score


def test_wrong_key_and_dead_server_are_item_errors(judge_server, monkeypatch):
    monkeypatch.setenv("DUPLEXALIGN_JUDGE_API_KEY", "not-the-key")
    cfg = load_config("ci", overrides=["judge.backend=openai", f"judge.endpoint={judge_server}",
                                       "judge.cache=false", "judge.max_retries=1",
                                       "judge.backoff_s=0.01"])
    results = make_backend(cfg).score(_requests()[:2])
    assert all(isinstance(r, ItemError) and r.code == "judge-unavailable" for r in results)
    assert [r.item for r in results] == ["conv-a#0", "conv-a#1"]
    assert "not-the-key" not in json.dumps([r.model_dump() for r in results])

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config("ci", overrides=["judge.backend=openai",
                                       f"judge.endpoint=http://127.0.0.1:{port}/v1",
                                       "judge.cache=false", "judge.max_retries=1",
                                       "judge.backoff_s=0.01"])
    results = make_backend(cfg).score(_requests())
    assert [r.code for r in results] == ["judge-unavailable"] * 3
