"""Prometheus metrics of the predictor, exposed by KServe's ``/metrics`` route (prometheus_client's
default registry, next to KServe's own ``request_*_seconds`` histograms).

Names and labels are a contract: the canary analysis (components/deploy/canary.py) reads them per
``model_version`` (the serving model's version tag, so a canary and the stable revision are told
apart even when scraped together):

* ``duplexalign_requests_total{model_version, endpoint="infer"|"stream", outcome="ok"|"error"}``
* ``duplexalign_request_seconds{model_version, endpoint}`` histogram — infer: a whole turn;
  stream: one frame's round trip inside the server (decode the message → reply sent)
* ``duplexalign_frame_step_seconds{model_version}`` histogram — one batched LMGen step
* ``duplexalign_step_batch_size{model_version}`` histogram — conversations in that step
* ``duplexalign_active_streams{model_version}`` gauge — open WebSocket conversations
* ``duplexalign_conversations_logged_total{model_version}``
* ``duplexalign_conversations_not_logged_total{model_version, reason}`` — reason: "no-consent",
  "logging-disabled", "empty", "error"

The metric objects are module-level (a name can be registered once per process); several servers
in one process (tests) are told apart by their model_version label.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Per-frame figures live around the 80 ms frame budget; turns last seconds.
_FRAME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.2, 0.5, 1.0)
_REQUEST_BUCKETS = _FRAME_BUCKETS + (2.0, 5.0, 10.0, 20.0, 60.0)

REQUESTS = Counter("duplexalign_requests", "Requests by endpoint and outcome",
                   ["model_version", "endpoint", "outcome"])
REQUEST_SECONDS = Histogram("duplexalign_request_seconds",
                            "infer: whole turn; stream: one frame's round trip in the server",
                            ["model_version", "endpoint"], buckets=_REQUEST_BUCKETS)
FRAME_STEP_SECONDS = Histogram("duplexalign_frame_step_seconds", "One batched LMGen step",
                               ["model_version"], buckets=_FRAME_BUCKETS)
STEP_BATCH_SIZE = Histogram("duplexalign_step_batch_size",
                            "Conversations stepped together in one LMGen step", ["model_version"],
                            buckets=(1, 2, 4, 8, 16, 32, 64))
ACTIVE_STREAMS = Gauge("duplexalign_active_streams", "Open WebSocket conversations",
                       ["model_version"])
LOGGED = Counter("duplexalign_conversations_logged", "Conversations written to raw/",
                 ["model_version"])
NOT_LOGGED = Counter("duplexalign_conversations_not_logged",
                     "Conversations not written to raw/, by reason", ["model_version", "reason"])


def on_step(model_version: str):
    """A BatchedLM ``on_step`` callback feeding the step histograms."""
    step = FRAME_STEP_SECONDS.labels(model_version=model_version)
    size = STEP_BATCH_SIZE.labels(model_version=model_version)

    def record(batch: int, seconds: float) -> None:
        step.observe(seconds)
        size.observe(batch)

    return record
