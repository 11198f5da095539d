"""Live canary figures → recommendation: Prometheus text (made by prometheus_client with the
serving metric names) scraped from a real loopback HTTP server, judge verdicts written through
the contract into the live bucket, and the recommendation table."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from components.common.config import Config, load_config
from components.deploy.canary import (
    VersionFigures,
    canary_figures,
    figures_from_prometheus,
    histogram_quantile,
    judge_scores,
    recommend,
    scrape,
)
from tests.components.deploy.conftest import CHALLENGER, CHAMPION, live_object

STABLE, CANARY = CHAMPION.model_version, CHALLENGER.model_version


BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, float("inf"))


def exposition(version: str, ok: int, errors: int, seconds: list[float]) -> bytes:
    """One revision's /metrics as the serving process exposes it (Prometheus text format).

    Written out here rather than through prometheus_client objects: when a process runs in
    prometheus_client's multiprocess mode, values of same-named series are shared across
    registries, and earlier tests of the session would add to these."""
    lab = f'model_version="{version}",endpoint="infer"'
    lines = ["# HELP duplexalign_requests_total requests",
             "# TYPE duplexalign_requests_total counter",
             f'duplexalign_requests_total{{{lab},outcome="ok"}} {float(ok)}',
             f'duplexalign_requests_total{{{lab},outcome="error"}} {float(errors)}',
             "# HELP duplexalign_request_seconds latency",
             "# TYPE duplexalign_request_seconds histogram"]
    for le in BUCKETS:
        count = sum(1 for x in seconds if x <= le)
        edge = "+Inf" if le == float("inf") else repr(le)
        lines.append(f'duplexalign_request_seconds_bucket{{{lab},le="{edge}"}} {float(count)}')
    lines += [f"duplexalign_request_seconds_count{{{lab}}} {float(len(seconds))}",
              f"duplexalign_request_seconds_sum{{{lab}}} {float(sum(seconds))}"]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def metrics_server() -> Iterator[dict[str, bytes]]:
    """Serves ``pages[path]`` at http://127.0.0.1:<port><path>; yields pages with "url"."""
    pages: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            body = pages.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body or b"")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pages["url"] = f"http://127.0.0.1:{server.server_address[1]}".encode()
    yield pages
    server.shutdown()
    server.server_close()


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * 9 / 10)
    assert histogram_quantile(0.99, {0.1: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.99, {0.1: 1.0, float("inf"): 10.0}) == 0.1  # overflow bucket


def test_figures_from_scraped_revisions(metrics_server: dict[str, bytes]) -> None:
    metrics_server["/stable/metrics"] = exposition(STABLE, 95, 5, [0.08] * 99 + [0.3])
    metrics_server["/canary/metrics"] = exposition(CANARY, 18, 2, [0.4] * 20)
    base = metrics_server["url"].decode()
    figs = figures_from_prometheus(scrape([f"{base}/stable/metrics", f"{base}/canary/metrics"]))
    assert set(figs) == {STABLE, CANARY}
    assert (figs[STABLE].requests, figs[STABLE].errors) == (100, 5)
    assert figs[STABLE].error_rate == pytest.approx(0.05)
    assert figs[CANARY].error_rate == pytest.approx(0.1)
    assert figs[STABLE].latency_p99["infer"] == pytest.approx(0.1, abs=0.01)
    assert 0.25 < figs[CANARY].latency_p99["infer"] <= 0.5


def _fig(version: str, requests: float = 100, errors: float = 0, p99: float = 0.1,
         conversations: int = 30, score: float | None = 4.0) -> VersionFigures:
    return VersionFigures(version, requests, errors, {"infer": p99}, conversations, score)


CASES = [  # (canary, stable, action, a reason contains)
    (_fig(CANARY), _fig(STABLE), "promote", "within every threshold"),
    (_fig(CANARY, errors=5), _fig(STABLE, errors=1), "rollback", "error rate 0.050"),
    (_fig(CANARY, errors=1.5), _fig(STABLE, errors=1), "promote", "within"),  # +0.005 ≤ 0.01
    (_fig(CANARY, p99=0.2), _fig(STABLE, p99=0.1), "rollback", "infer p99 200 ms"),
    (_fig(CANARY, p99=0.12), _fig(STABLE, p99=0.1), "promote", "within"),  # × 1.2 ≤ 1.25
    (_fig(CANARY, score=3.7), _fig(STABLE, score=4.0), "rollback", "judge score 3.70"),
    (_fig(CANARY, score=3.95), _fig(STABLE, score=4.0), "promote", "within"),
    (_fig(CANARY, conversations=5), _fig(STABLE), "wait", "judged conversations: canary 5"),
    (_fig(CANARY, requests=3), _fig(STABLE), "wait", "requests: canary 3"),
    # too few conversations, but errors already beyond the threshold: roll back now
    (_fig(CANARY, errors=20, conversations=2), _fig(STABLE), "rollback", "error rate"),
    (_fig(CANARY, score=None), _fig(STABLE, score=None), "promote", "within"),
]


@pytest.mark.parametrize("canary,stable,action,reason", CASES)
def test_recommendation_table(canary: VersionFigures, stable: VersionFigures, action: str,
                              reason: str) -> None:
    rec = recommend(load_config("ci"), canary, stable)
    assert rec.action == action
    assert any(reason in r for r in rec.reasons), rec.reasons


def _judgement(cid: str, version: str, score: float):
    from components.contract import AxisScore, ConversationJudgement, ReplyJudgement

    reply = ReplyJudgement(index=0, user_turn=0, model_turn=0, request="q", text="a", start=1.0,
                           end=2.0, user_end=0.9, next_user_start=None, judged=True,
                           scores={"helpfulness": AxisScore(score=score, rationale="r"),
                                   "safety": AxisScore(score=5.0, rationale="r"),
                                   "tone": None})
    return ConversationJudgement(conversation_id=cid, model_version=version, backend="test",
                                 backend_version="v", user_turns=[], model_turns=[],
                                 replies=[reply], events=[])


@pytest.mark.integration
def test_status_recommends_from_live_metrics_and_judgements(
        metrics_server: dict[str, bytes], store, services_config: Config,
        tmp_path: Path) -> None:
    from components.contract import Keys
    from components.deploy.inferenceservice import canary_manifest, init_manifest
    from components.deploy.logic import deploy

    cfg = services_config.model_copy(deep=True)  # the session's live S3 and MLflow
    cfg.deploy = cfg.deploy.model_copy(update={"min_canary_conversations": 3})
    for i in range(4):  # stable replies score (h + 5) / 2 = 4.5, the canary's 3.5
        store.put_json(Keys.judgement(f"s{i}", "judge-a"),
                       _judgement(f"s{i}", STABLE, 4.0).model_dump(mode="json"))
        store.put_json(Keys.judgement(f"c{i}", "judge-a"),
                       _judgement(f"c{i}", CANARY, 2.0).model_dump(mode="json"))
    store.put_json(Keys.judgement("other", "judge-a"),
                   _judgement("other", "someone-else/1", 1.0).model_dump(mode="json"))
    scores = judge_scores(store, [STABLE, CANARY])
    assert scores == {STABLE: (4, pytest.approx(4.5)), CANARY: (4, pytest.approx(3.5))}

    metrics_server["/metrics"] = exposition(STABLE, 100, 0, [0.1] * 10) + exposition(
        CANARY, 20, 0, [0.1] * 10)
    url = metrics_server["url"].decode() + "/metrics"
    text = scrape([url])
    canary, stable = canary_figures(cfg, canary_version=CANARY, stable_version=STABLE,
                                    metrics_text=text, store=store)
    assert (canary.requests, canary.conversations) == (20, 4), text

    manifest = canary_manifest(cfg, init_manifest(cfg, CHAMPION), CHALLENGER, 10)
    status = tmp_path / "isvc.json"
    status.write_text(json.dumps(live_object(manifest, latest_percent=10)))
    result = deploy(cfg, "status", status_file=status, metrics_urls=[url], store=store)
    rec = result.recommendation
    assert rec["action"] == "rollback"
    assert rec["reasons"] == ["judge score 3.50 vs stable 4.50 (−1.00 > 0.1)"]
    assert rec["canary"]["judge_score"] == pytest.approx(3.5)
    assert result.finalize["step"] == "canary" and result.finalize["moved"] == {}
