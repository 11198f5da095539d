"""The judge stage against the live S3 server with the real local content judge (Gemma-3-270M)
and the real MiniLM retrieval: judgements written, planted timing problems found and selected,
bad input rejected per item while the others complete, and reruns that repay nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from components.common.audio import encode_wav
from components.common.stagekit import ManifestWriter, iter_items, iter_rejects
from components.common.storage import ObjectStore
from components.contract import (
    CONTENT_AXES,
    MODEL_SAMPLE_RATE,
    ConversationJudgement,
    JudgedItem,
    Keys,
    ObjectRef,
    ScrubbedItem,
    Transcript,
    WordStamp,
)
from components.judge.calibration.calibrate import load_kb_documents
from components.judge.logic import STAGE, judge

pytestmark = pytest.mark.integration


def words(text: str, start: float, step: float = 0.3) -> list[WordStamp]:
    return [WordStamp(word=w, start=round(start + i * step, 3), end=round(start + i * step + 0.25, 3))
            for i, w in enumerate(text.split())]


def put_conversation(store: ObjectStore, cid: str, user: list[WordStamp], model: list[WordStamp],
                     duration: float, audio_s: float | None = None) -> ScrubbedItem:
    """What scrub leaves behind: redacted transcript, model audio, scrubbed metadata."""
    t = Transcript(conversation_id=cid, redacted=True, asr_model="hand", duration_s=duration,
                   user_words=user, model_words=model)
    refs = {}
    key = Keys.transcript(cid)
    refs["transcript"] = ObjectRef(key=key, version_id=store.put_json(key, t.model_dump(mode="json")))
    key = Keys.conversation_audio(cid)
    audio = np.zeros(int((audio_s or duration) * MODEL_SAMPLE_RATE), np.float32)
    refs["model_audio"] = ObjectRef(key=key, version_id=store.put_bytes(
        key, encode_wav(audio, MODEL_SAMPLE_RATE), content_type="audio/wav"))
    key = Keys.conversation_metadata(cid)
    refs["metadata"] = ObjectRef(key=key, version_id=store.put_json(key, {"conversation_id": cid}))
    return ScrubbedItem(conversation_id=cid, user_pseudonym=f"p-{cid}", model_version="policy-v1",
                        started_at=datetime(2026, 1, 1, tzinfo=timezone.utc), duration_s=duration,
                        redactions={}, **refs)


def build_batch(store: ObjectStore) -> str:
    for doc in load_kb_documents():
        store.put_json(Keys.kb_document(doc.doc_id), doc.model_dump(mode="json"))
    items = []
    # A: greeting; clean reply; INTERRUPTION (0.8 s before the user's end); UNANSWERED (the user
    # asks again 4 s later); then a clean reply and a late one that are never judged (stop).
    user_a = (words("How much is the Unlimited Plus plan", 2.0)      # 2.0 .. 3.75
              + words("What's the late fee", 6.0)                     # 6.0 .. 7.15
              + words("How long do I have to return a phone", 10.0)   # 10.0 .. 12.35
              + words("Hello are you there", 16.4)                    # 16.4 .. 17.55
              + words("When is my bill due", 21.0))                   # 21.0 .. 22.45
    model_a = (words("Hi this is Nova", 0.2)
               + words("Unlimited Plus is $65 per month", 4.2)
               + words("The late fee is $7", 6.35)                    # starts 0.8 s early
               + words("You have 30 days", 18.0)
               + words("Your bill is due 21 days after it's issued", 26.0))  # 3.55 s late
    items.append(put_conversation(store, "conv-a", user_a, model_a, duration=30.0))
    # B: two clean exchanges: judged to the end, nothing selected.
    user_b = words("What's your name", 1.0) + words("How much is device protection", 5.0)
    model_b = words("I'm Nova nice to meet you", 2.1) + words("Device protection is $15 per month", 6.6)
    items.append(put_conversation(store, "conv-b", user_b, model_b, duration=10.0))
    # C: bad timestamps (overlapping user words); D: audio shorter than the alignments;
    # E: no user words.
    items.append(put_conversation(store, "conv-c", [WordStamp(word="a", start=1.0, end=2.0),
                                                    WordStamp(word="b", start=1.5, end=2.5)],
                                  [], duration=5.0))
    items.append(put_conversation(store, "conv-d", words("hello there", 1.0),
                                  words("hi how can I help", 7.0), duration=9.0, audio_s=5.0))
    items.append(put_conversation(store, "conv-e", [], words("hello", 0.5), duration=3.0))
    writer = ManifestWriter(store, "scrub", None)
    for item in items:
        writer.add_item(item.model_dump(mode="json"))
    return writer.close().manifest_id


@pytest.fixture
def judge_cfg(stage_cfg):
    cfg = stage_cfg.model_copy(deep=True)
    # Content thresholds at 0: the content judge runs (and is cached) but cannot flag anything,
    # so the selection below depends only on the planted timing problems.
    cfg.judge.thresholds = {**{a: 0.0 for a in CONTENT_AXES},
                            "interruption": 2.5, "unresponsiveness": 2.5}
    cfg.judge.max_extra_replies = 1
    cfg.judge.stop_when_selected = True
    return cfg


def test_judge_stage_end_to_end(judge_cfg, stage_store):
    s = stage_store
    scrub_id = build_batch(s)
    run = judge(judge_cfg, scrub_id)
    m = run.manifest
    assert run.processed == 5 and m.counts["items"] == 2
    rejects = {r.item: r.code for r in iter_rejects(s, m)}
    assert rejects == {"conv-c": "bad-timestamps", "conv-d": "audio-shorter-than-alignments",
                       "conv-e": "empty-transcript"}
    out = {i["conversation_id"]: JudgedItem.model_validate(i) for i in iter_items(s, m)}

    a = out["conv-a"]
    assert a.judgement.key.startswith("judgements/conv-a/") and a.judgement.version_id
    j = ConversationJudgement.model_validate(s.get_json(a.judgement.key, a.judgement.version_id))
    assert j.backend.startswith("local") and j.backend_version == m.stats["judge_key"]
    assert [r.user_turn for r in j.replies] == [None, 0, 1, 2, 3, 4]
    assert [(e.kind, e.user_turn) for e in j.events] == [
        ("interruption", 1), ("unresponsiveness", 2), ("unresponsiveness", 4)]
    greeting, clean, interrupted, unanswered, nudge, late = j.replies
    assert greeting.judged is False and greeting.text == "Hi this is Nova"
    assert clean.judged and clean.problems == [] and not clean.selected
    assert all(clean.scores[ax] is not None for ax in CONTENT_AXES)
    assert any(p.doc_id == "plans" for p in clean.passages)
    assert interrupted.problems == ["interruption"] and interrupted.selected
    assert interrupted.scores["interruption"].score == 2
    assert interrupted.events[0].seconds == pytest.approx(0.8)
    assert unanswered.text == "" and unanswered.problems == ["unresponsiveness"]
    assert unanswered.selected and all(unanswered.scores[ax] is None for ax in CONTENT_AXES)
    assert unanswered.scores["unresponsiveness"].score == 1
    assert j.stopped_after == unanswered.index
    assert not nudge.judged and not late.judged and not late.selected
    assert late.events and late.events[0].kind == "unresponsiveness"  # found, just not judged
    assert a.selected == [2, 3] and a.problems == {"interruption": 1, "unresponsiveness": 1}
    assert a.replies == 6 and a.judge_failures == 0 and a.user_pseudonym == "p-conv-a"

    b = out["conv-b"]
    jb = ConversationJudgement.model_validate(s.get_json(b.judgement.key, b.judgement.version_id))
    assert jb.events == [] and jb.stopped_after is None and b.selected == []
    assert all(r.judged for r in jb.replies)

    st = m.stats
    assert st["conversations"] == 2 and st["selected"] == 2 and st["judge_failures"] == 0
    assert st["events:interruption"] == 1 and st["events:unresponsiveness"] == 2
    assert st["problems:interruption"] == 1 and st["problems:unresponsiveness"] == 1
    # content requests: A's clean and interrupted replies, B's two replies (A's empty reply is
    # never sent; A stops after its second selected reply)
    assert st["backend_requests"] == 4 and st["cache_hits"] == 0
    assert st["replies_content_judged"] == 4 and st["seconds_per_reply"] > 0

    # A rerun finds every marker: nothing processed, the backend is never even loaded.
    again = judge(judge_cfg, scrub_id)
    assert again.processed == 0 and again.skipped == 5
    assert again.manifest.manifest_id == m.manifest_id
    assert again.manifest.stats["backend"] is None and again.manifest.stats["backend_requests"] == 0
    assert again.manifest.stats["selected"] == 2  # totals still cover every conversation

    # A crash after the judgement but before the markers: redone from the content cache.
    for cid in ("conv-a", "conv-b"):
        s.delete_all_versions(Keys.item_state(STAGE, scrub_id, cid))
    redo = judge(judge_cfg, scrub_id)
    assert redo.processed == 2
    assert redo.manifest.stats["backend_requests"] == 0 and redo.manifest.stats["cache_hits"] == 4
    a2 = next(JudgedItem.model_validate(i) for i in iter_items(s, redo.manifest)
              if i["conversation_id"] == "conv-a")
    j2 = ConversationJudgement.model_validate(s.get_json(a2.judgement.key, a2.judgement.version_id))
    assert j2.model_dump(exclude={"replies"}) == j.model_dump(exclude={"replies"})
    assert [r.scores for r in j2.replies] == [r.scores for r in j.replies]


# ----------------------------------------------------------------------------- judge failures


class _ScriptedEndpoint(BaseHTTPRequestHandler):
    """A real OpenAI-compatible chat-completions endpoint (the kind of third-party service the
    production judge is), scripted: a reply containing "garble" gets garbage (not JSON) back,
    a reply starting "Ugh" gets tone 1, anything else 5 on every asked axis."""

    calls: list[str] = []

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        message = body["messages"][-1]["content"]
        case = json.loads(message[message.rfind("```json") + 7:].split("```")[0])
        _ScriptedEndpoint.calls.append(case["reply"])
        if "garble" in case["reply"]:
            content = "I think this reply is fine overall."
        else:
            content = json.dumps({a: {"score": 1 if a == "tone" and case["reply"].startswith("Ugh")
                                      else 5, "rationale": "scripted", "level_probs": None}
                                  for a in case["axes"]})
        out = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                          "choices": [{"index": 0, "finish_reason": "stop", "message": {
                              "role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def scripted_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _ScriptedEndpoint.calls = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_judge_failures_are_recorded_and_never_selected(stage_cfg, stage_store, scripted_endpoint):
    s = stage_store
    cfg = stage_cfg.model_copy(deep=True)
    cfg.judge.backend = "openai"
    cfg.judge.endpoint = scripted_endpoint
    cfg.judge.max_retries = 1
    cfg.judge.backoff_s = 0.0
    cfg.judge.max_extra_replies = 0
    user = (words("What's the late fee", 1.0) + words("And the restocking fee", 5.0)
            + words("How much is device protection", 9.0))
    model = (words("garble garble garble", 2.4) + words("Ugh fine it is $35", 6.5)
             + words("Device protection is $15 per month", 10.8))
    item = put_conversation(s, "conv-f", user, model, duration=14.0)
    writer = ManifestWriter(s, "scrub", None)
    writer.add_item(item.model_dump(mode="json"))
    run = judge(cfg, writer.close().manifest_id)
    (out,) = [JudgedItem.model_validate(i) for i in iter_items(s, run.manifest)]
    j = ConversationJudgement.model_validate(s.get_json(out.judgement.key, out.judgement.version_id))
    failed, rude, third = j.replies
    assert [f.item for f in j.failures] == ["conv-f#0"]
    assert j.failures[0].code == "judge-bad-output"
    assert failed.judged and not failed.selected
    assert all(failed.scores[a] is None for a in CONTENT_AXES)
    assert failed.scores["interruption"].score == 5  # timing is still known
    assert rude.problems == ["tone"] and rude.selected and j.stopped_after == 1
    assert not third.judged
    assert out.judge_failures == 1 and out.selected == [1]
    assert run.manifest.stats["judge_failures"] == 1 and j.backend.startswith("openai:")
    # one try + one retry for the garbled reply, one call for the rude one; never the third
    assert _ScriptedEndpoint.calls == ["garble garble garble"] * 2 + ["Ugh fine it is $35"]
    # every cached answer names the conversation it is about: erasure finds it by that
    cached = [s.get_json(o.key) for o in s.list("cache/judge/")]
    assert cached and {entry["conversation_id"] for entry in cached} == {"conv-f"}
