"""The predictor over real HTTP and WebSocket on loopback (a tiny random Moshi LM with the real
embedded tokenizer and codec): OIP v2 health, metadata and infer; full-duplex streams batched
into one LMGen step; Prometheus metrics; consent-gated raw/ logging in the data contract; the
streamed conversation sealed and ingested with the serving model version; graceful shutdown."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from components.common.config import Config
from components.common.storage import ObjectStore
from components.contract import MODEL_TOKENS_OBJECT, ModelTokens
from serving.client import StreamFrame, StreamSession, infer_turn
from serving.engine import FRAME_SIZE
from serving.server import running_server
from serving.streaming import batch_name
from tests.serving.test_engine import user_audio
from tests.support.stage import grant

pytestmark = pytest.mark.integration

FRAMES = 12  # ~1 s per streamed conversation (ingest needs >= 0.5 s)


def _sum(text: str, name: str, labels: dict[str, str]) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


# Metrics live in prometheus_client's process-wide registry: every server of the same model
# version in this test process (evaluation, the bench) adds to the same series. Tests therefore
# assert what changed since they began (gauges: their value now).
_BASELINES: dict[str, str] = {}


def since(url: str) -> str:
    """Take the baseline of ``url``'s metrics (call before the test's traffic)."""
    _BASELINES[url] = httpx.get(f"{url}/metrics", timeout=10).text
    return url


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when absent), minus
    its value at ``since(url)`` for counters and histograms (gauges as they are)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    now = _sum(text, name, labels)
    if url in _BASELINES and not name.endswith("active_streams"):
        now -= _sum(_BASELINES[url], name, labels)
    return now


def keys(store: ObjectStore, prefix: str) -> list[str]:
    return [o.key for o in store.list(prefix)]


def stream(ws_url: str, user: str, audio: np.ndarray, out: list, **kw) -> StreamSession:
    s = StreamSession(ws_url, user, **kw)
    for k in range(len(audio) // FRAME_SIZE):
        out.append(s.step(audio[k * FRAME_SIZE:(k + 1) * FRAME_SIZE]))
    return s


def test_oip_v2_health_metadata_and_infer(serve_cfg: Config, tiny_checkpoint: Path) -> None:
    with running_server(serve_cfg, str(tiny_checkpoint)) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        base, name = since(srv.url), srv.model_name
        assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
        assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}
        assert httpx.get(f"{base}/v2/models/{name}/ready").json()["ready"] is True
        meta = httpx.get(f"{base}/v2/models/{name}").json()
        assert meta["name"] == name
        assert meta["inputs"] == [{"name": "audio", "datatype": "FP32", "shape": [-1]}]
        assert [o["name"] for o in meta["outputs"]] == ["audio", "text", "words", "latency_s",
                                                        "model_version"]
        t0 = time.monotonic()
        reply = infer_turn(base, name, user_audio(10, seed=4)[: 10 * FRAME_SIZE - 500],
                           max_reply_s=0.8)
        turn_s = time.monotonic() - t0
        assert reply.model_version == srv.model_version and reply.model_version.startswith("path:")
        # the reply channel: whole frames from the end of the user's audio, at most max_reply_s
        assert reply.audio.dtype == np.float32 and reply.audio.shape[0] % FRAME_SIZE == 0
        assert 0 < reply.audio.shape[0] <= 10 * FRAME_SIZE
        assert reply.text == " ".join(w["word"] for w in reply.words)
        if reply.words:
            assert reply.latency_s == pytest.approx(reply.words[0]["start"])
            assert all(w["start"] < w["end"] for w in reply.words)
        else:
            assert reply.latency_s is None
        # the raw OIP response: datatypes as documented
        body = {"inputs": [{"name": "audio", "datatype": "FP32", "shape": [FRAME_SIZE],
                            "data": [0.0] * FRAME_SIZE}], "parameters": {"max_reply_s": 0.16}}
        raw = httpx.post(f"{base}/v2/models/{name}/infer", json=body, timeout=60).json()
        types = {o["name"]: o["datatype"] for o in raw["outputs"]}
        assert types == {"audio": "FP32", "text": "BYTES", "words": "BYTES", "latency_s": "FP32",
                         "model_version": "BYTES"}
        # a bad request is a 400, counted as an error
        bad = httpx.post(f"{base}/v2/models/{name}/infer", timeout=60,
                         json={"inputs": [{"name": "pcm", "datatype": "FP32", "shape": [1],
                                           "data": [0.0]}]})
        assert bad.status_code == 400 and "audio" in bad.text
        v = srv.model_version
        assert metric(base, "duplexalign_requests_total", model_version=v, endpoint="infer",
                      outcome="ok") == 2
        assert metric(base, "duplexalign_requests_total", model_version=v, endpoint="infer",
                      outcome="error") == 1
        assert metric(base, "duplexalign_request_seconds_count", model_version=v,
                      endpoint="infer") == 3
        assert metric(base, "duplexalign_frame_step_seconds_count", model_version=v) >= 10
        print(f"\ninfer turn (10 user frames + reply) over HTTP: {turn_s:.2f}s")


def test_streams_batched_logged_with_consent_only(serve_cfg: Config,
                                                  tiny_checkpoint: Path) -> None:
    grant(serve_cfg, "alice")
    grant(serve_cfg, "bob", granted=False)
    store = ObjectStore.from_config(serve_cfg.storage)
    with running_server(serve_cfg, str(tiny_checkpoint)) as srv:
        v, base = srv.model_version, since(srv.url)
        before = metric(base, "duplexalign_frame_step_seconds_count", model_version=v)
        frames: dict[str, list[StreamFrame]] = {"alice": [], "bob": []}
        sessions: dict[str, StreamSession] = {}
        errors: list[BaseException] = []

        def run(user: str, seed: int) -> None:
            try:
                sessions[user] = stream(srv.ws_url, user, user_audio(FRAMES, seed=seed),
                                        frames[user])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(u, i)) for i, u in enumerate(frames)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert metric(base, "duplexalign_active_streams", model_version=v) == 2
        # frames in, frames out: one reply per frame, in order, with the model's 80 ms of audio
        q = srv.predictor.batcher.q_in
        for user, got in frames.items():
            assert [f.frame for f in got] == list(range(FRAMES))
            assert all(f.pcm is not None and f.pcm.shape == (FRAME_SIZE,) for f in got)
            assert all(f.model_codes.shape == (q,) and f.user_codes.shape == (q,) for f in got)
        # the two conversations shared LMGen steps: fewer steps than slot-steps
        stats = srv.predictor.batcher.stats
        assert stats.max_batch == 2 and stats.batch_sizes[2] >= FRAMES // 2, stats.snapshot()
        steps = metric(base, "duplexalign_frame_step_seconds_count", model_version=v) - before
        assert steps < 2 * (FRAMES + 1)  # 2 priming + 2 x FRAMES slot-steps, batched
        assert metric(base, "duplexalign_step_batch_size_count", model_version=v) >= steps
        closed = {u: s.close() for u, s in sessions.items()}
        assert closed["alice"]["logged"] is True and closed["alice"]["frames"] == FRAMES
        assert closed["bob"] == {**closed["bob"], "logged": False, "reason": "no-consent"}
        assert metric(base, "duplexalign_active_streams", model_version=v) == 0
        assert metric(base, "duplexalign_conversations_logged_total", model_version=v) == 1
        assert metric(base, "duplexalign_conversations_not_logged_total", model_version=v,
                      reason="no-consent") == 1
        assert metric(base, "duplexalign_requests_total", model_version=v, endpoint="stream",
                      outcome="ok") == 2
        assert metric(base, "duplexalign_request_seconds_count", model_version=v,
                      endpoint="stream") == 2 * FRAMES
    # alice's conversation is in raw/ with the exact tokens she was served; bob's is nowhere
    batch = batch_name(serve_cfg.serving.raw_batch_prefix, v, datetime.now(timezone.utc))
    cid = sessions["alice"].conversation_id
    prefix = f"raw/{batch}/{cid}/"
    names = sorted(k.rsplit("/", 1)[-1] for k in keys(store, prefix))
    assert names == ["metadata.json", "model.wav", "model_text.json", MODEL_TOKENS_OBJECT,
                     "user.wav", "user_codes.npz"]
    tokens = ModelTokens.from_bytes(store.get_bytes(prefix + MODEL_TOKENS_OBJECT))
    assert tokens.model_version == v
    assert tokens.text.tolist() == [f.text_token for f in frames["alice"]]
    assert np.array_equal(tokens.model_codes, np.stack([f.model_codes for f in frames["alice"]], 1))
    meta = store.get_json(prefix + "metadata.json")
    assert meta["user_id"] == "alice" and meta["model_version"] == v
    assert not list(keys(store, f"raw/{batch}/{sessions['bob'].conversation_id}/"))


def test_a_client_can_opt_out_of_logging_but_never_in(serve_cfg: Config,
                                                      tiny_checkpoint: Path) -> None:
    """log=0 (the evaluator, load tests): not logged even for a consenting user; log=1 does not
    override the registry (bob's refusal above stands whatever the client asks)."""
    grant(serve_cfg, "carol")
    store = ObjectStore.from_config(serve_cfg.storage)
    with running_server(serve_cfg, str(tiny_checkpoint)) as srv:
        since(srv.url)
        got: list[StreamFrame] = []
        session = stream(srv.ws_url, "carol", user_audio(4, seed=7), got, log=False)
        closed = session.close()
        assert closed["logged"] is False and closed["reason"] == "client-opt-out"
        assert metric(srv.url, "duplexalign_conversations_not_logged_total",
                      model_version=srv.model_version, reason="client-opt-out") == 1
    batch = batch_name(serve_cfg.serving.raw_batch_prefix, srv.model_version,
                       datetime.now(timezone.utc))
    assert not list(keys(store, f"raw/{batch}/{session.conversation_id}/"))


def test_streamed_conversation_is_sealed_and_ingested(serve_cfg: Config,
                                                      tiny_checkpoint: Path) -> None:
    """"The streaming endpoint writes a conversation that the next pipeline run ingests"."""
    from components.common.stagekit import iter_items
    from components.ingest.logic import ingest, seal_raw_batch

    grant(serve_cfg, "carol")
    store = ObjectStore.from_config(serve_cfg.storage)
    with running_server(serve_cfg, str(tiny_checkpoint)) as srv:
        got: list[StreamFrame] = []
        s = stream(srv.ws_url, "carol", user_audio(FRAMES, seed=7), got)
        assert s.close()["logged"] is True
        v = srv.model_version
    batches = {k.split("/")[1] for k in keys(store, "raw/")}
    assert len(batches) == 1
    (batch,) = batches
    assert batch.startswith(f"{serve_cfg.serving.raw_batch_prefix}-path-")
    manifest_id = seal_raw_batch(store, f"raw/{batch}/")
    result = ingest(serve_cfg, manifest_id)
    assert result.manifest.counts.get("items") == 1, result.manifest.counts
    (item,) = list(iter_items(store, result.manifest))
    assert item["conversation_id"] == s.conversation_id
    assert item["model_version"] == v
    assert item["duration_s"] == pytest.approx(FRAMES * FRAME_SIZE / 24000, abs=0.01)


def test_graceful_shutdown_drains_and_writes_the_logs(serve_cfg: Config,
                                                      tiny_checkpoint: Path) -> None:
    grant(serve_cfg, "dora", "erin")
    serve_cfg.serving.drain_timeout_s = 1.5
    store = ObjectStore.from_config(serve_cfg.storage)
    audio = user_audio(FRAMES, seed=9)
    with running_server(serve_cfg, str(tiny_checkpoint)) as srv:
        base = srv.url
        polite: list[StreamFrame] = []
        stubborn: list[StreamFrame] = []
        s1 = stream(srv.ws_url, "dora", audio[: 8 * FRAME_SIZE], polite)
        s2 = stream(srv.ws_url, "erin", audio[: 8 * FRAME_SIZE], stubborn)
        t0 = time.monotonic()
        srv.drain()  # what SIGTERM does
        while httpx.get(f"{base}/v2/health/ready").status_code == 200:
            assert time.monotonic() - t0 < 5, "readiness did not turn false"
            time.sleep(0.02)
        assert httpx.get(f"{base}/v2/models/{srv.model_name}/ready").status_code == 503
        with pytest.raises(RuntimeError, match="not ready"):  # no new streams while draining
            StreamSession(srv.ws_url, "frank")
        # open streams keep going until the deadline; dora finishes in time
        polite.append(s1.step(audio[8 * FRAME_SIZE: 9 * FRAME_SIZE]))
        assert {"type": "draining", "deadline_s": 1.5} in s1.notices
        assert s1.close()["logged"] is True
        # erin does not end: cut at the deadline, her log written anyway, then the server exits
        srv.thread.join(30)
        assert not srv.thread.is_alive()
        assert time.monotonic() - t0 >= 1.5
        assert srv.server.cut_streams == 1
        with pytest.raises((RuntimeError, ConnectionClosed)):
            for _ in range(3):
                s2.step(audio[:FRAME_SIZE])
    logged = {k.rsplit("/", 2)[-2] for k in keys(store, "raw/") if k.endswith("metadata.json")}
    assert logged == {s1.conversation_id, s2.conversation_id}


def test_sigterm_drains_a_served_process(serve_cfg: Config, tiny_checkpoint: Path,
                                         tmp_path: Path) -> None:
    """`python -m serving` as a pod runs it: a real SIGTERM drains (readiness false, the open
    stream finishes and is logged) and the process exits 0."""
    import re
    import signal
    import subprocess
    import sys

    import yaml

    grant(serve_cfg, "gina")
    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text(yaml.safe_dump(serve_cfg.model_dump(mode="json")))
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--config", str(cfg_file),
                             "--model-source", str(tiny_checkpoint), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        url, lines = None, []
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+) \(OIP v2\) and (ws://\S+)", line)
            if m:
                url, ws_url = m.group(1), m.group(2)
                break
        assert url is not None, "the server did not report its address:\n" + "".join(lines)
        audio = user_audio(FRAMES, seed=11)
        got: list[StreamFrame] = []
        s = stream(ws_url, "gina", audio[: 6 * FRAME_SIZE], got)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        while httpx.get(f"{url}/v2/health/ready").status_code == 200:
            assert time.monotonic() - t0 < 5, "readiness did not turn false"
            time.sleep(0.02)
        got.append(s.step(audio[6 * FRAME_SIZE: 7 * FRAME_SIZE]))
        closed = s.close()
        assert closed["logged"] is True and closed["frames"] == 7
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    store = ObjectStore.from_config(serve_cfg.storage)
    assert any(k.endswith(f"/{s.conversation_id}/metadata.json") for k in keys(store, "raw/"))


def test_stream_refusals(serve_cfg: Config, tiny_checkpoint: Path) -> None:
    """Bad requests close with 1008, a full server with 1013 (try again later)."""
    import json

    from websockets.sync.client import connect

    serve_cfg.serving.max_streams = 2
    with running_server(serve_cfg, str(tiny_checkpoint)) as srv:
        since(srv.url)
        with connect(srv.ws_url) as ws:  # no user_id
            assert "user_id" in json.loads(ws.recv(timeout=30))["message"]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1008
        with StreamSession(srv.ws_url, "hank") as s:  # a frame of the wrong size
            with pytest.raises(RuntimeError, match="1920 float32"):
                s._ws.send(np.zeros(100, "<f4").tobytes())
                s.step(np.zeros(FRAME_SIZE, np.float32))
        held = [StreamSession(srv.ws_url, f"user-{i}") for i in range(2)]
        with pytest.raises(RuntimeError, match="slots are taken"):
            StreamSession(srv.ws_url, "ivan")
        for s in held:
            s.close()
        StreamSession(srv.ws_url, "ivan").close()  # a slot given back is free again
        v = srv.model_version
        assert metric(srv.url, "duplexalign_requests_total", model_version=v, endpoint="stream",
                      outcome="error") == 1
