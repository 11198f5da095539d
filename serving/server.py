"""The predictor's HTTP server: KServe's REST app (OIP v2, health, /metrics) plus the WebSocket
stream route, on ONE port (Knative routes one port per revision), served by uvicorn.

Why not ``kserve.ModelServer.start``: it binds 0.0.0.0 hard-coded and registers its routes on a
module-level FastAPI app. We build a fresh FastAPI app the way KServe's ``RESTServer`` builds
its own (its middlewares, v1/v2 endpoints, /metrics and exception handlers), add our WebSocket
route, and bind ``cfg.serving.host`` ourselves (loopback by default and in tests; 0.0.0.0 in a
pod). Routes (KServe's unless noted):

* ``GET /v2/health/live``, ``GET /v2/health/ready`` (false as soon as a drain starts),
  ``GET /v2/models/{name}/ready``, ``GET /v2/models/{name}`` (metadata),
  ``POST /v2/models/{name}/infer`` (turn-based OIP v2, serving/predictor.py), ``GET /metrics``;
* ``WS /v2/models/{name}/stream`` (ours: full duplex, serving/streaming.py).

Graceful shutdown: SIGTERM (or ``ServerHandle.stop``) starts a drain — readiness false at once,
new streams refused, open streams told and given ``cfg.serving.drain_timeout_s`` to finish; then
the rest are ended, every conversation's log is written, and uvicorn exits. A second signal
exits at once.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI

from serving.predictor import DuplexPredictor
from serving.streaming import STREAM_ROUTE, StreamHub, register_stream_route

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config

log = logging.getLogger("duplexalign.serving")


def _kserve_parts(predictor: DuplexPredictor, hub: StreamHub, port: int) -> tuple[Any, Any]:
    """KServe's data plane (readiness aware of our drain) and REST server builder."""
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    class DrainAwareDataPlane(DataPlane):
        async def ready(self) -> bool:  # /v2/health/ready: false once a drain started
            return (not hub.draining) and await self._model_registry.is_model_ready(
                predictor.name)

    repo = ModelRepository()
    repo.update(predictor)
    dataplane = DrainAwareDataPlane(model_registry=repo)
    rest = RESTServer(app="unused", data_plane=dataplane,
                      model_repository_extension=ModelRepositoryExtension(model_registry=repo),
                      http_port=port)
    return dataplane, rest


def build_app(cfg: "Config", predictor: DuplexPredictor,
              port: int = 0) -> tuple[FastAPI, StreamHub]:
    """KServe's REST app for a LOADED predictor, plus the WebSocket stream route."""
    executor = ThreadPoolExecutor(max_workers=cfg.serving.max_streams + 4,
                                  thread_name_prefix="serving-codec")
    hub = StreamHub(cfg, predictor, executor)
    _, rest = _kserve_parts(predictor, hub, port)
    app = FastAPI(title=f"duplexalign {predictor.name}", docs_url=None, redoc_url=None)
    # The three steps of kserve's RESTServer.create_application, on our own app object.
    rest._add_middlewares(app)
    rest._register_endpoints(app)
    rest._add_exception_handlers(app)
    register_stream_route(app, hub)
    app.state.hub = hub
    app.state.executor = executor
    return app, hub


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain before it exits (module docstring)."""

    def __init__(self, config: uvicorn.Config, hub: StreamHub, drain_timeout_s: float):
        super().__init__(config)
        self.hub = hub
        self.drain_timeout_s = drain_timeout_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self.drain_task: asyncio.Future | None = None
        self.cut_streams = 0

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_task is not None or self.loop is None:  # a second signal: exit now
            self.should_exit = self.force_exit = True
            return
        log.info("signal %s: draining (up to %.0fs)", sig, self.drain_timeout_s)
        self.loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self.drain_task is None:
            self.drain_task = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            self.cut_streams = await self.hub.drain(self.drain_timeout_s)
        finally:
            self.should_exit = True


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 = a free port), IPv4 or IPv6."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _uvicorn_server(cfg: "Config", app: FastAPI, hub: StreamHub) -> DrainingServer:
    config = uvicorn.Config(app, log_config=None, access_log=False, ws="websockets-sansio",
                            ws_max_size=1 << 20, timeout_graceful_shutdown=5,
                            lifespan="off")
    return DrainingServer(config, hub, cfg.serving.drain_timeout_s)


def load_predictor(cfg: "Config", model_source: str | None = None,
                   model_version: str | None = None) -> DuplexPredictor:
    predictor = DuplexPredictor(cfg, model_source, model_version=model_version)
    predictor.load()
    return predictor


@dataclass
class ServerHandle:
    """A server running in this process (tests, demo, bench)."""

    url: str  # http://host:port
    ws_url: str  # ws://host:port/v2/models/<name>/stream
    model_name: str
    model_version: str
    predictor: DuplexPredictor
    hub: StreamHub
    server: DrainingServer
    thread: threading.Thread

    def drain(self) -> None:
        """Start a graceful shutdown, as SIGTERM does (returns at once)."""
        self.server.handle_exit(signal.SIGTERM, None)

    def stop(self, timeout_s: float | None = None) -> None:
        """Graceful shutdown (drain, logs written, exit) and wait for it; idempotent."""
        if self.thread.is_alive():
            if self.server.drain_task is None:
                self.drain()
            self.thread.join(timeout_s if timeout_s is not None
                             else self.server.drain_timeout_s + 90)
        self.predictor.stop()


@contextlib.contextmanager
def running_server(cfg: "Config", model_source: str | None = None, *,
                   model_version: str | None = None) -> Iterator[ServerHandle]:
    """Serve ``model_source`` (default cfg.serving.model_source) on cfg.serving.host and
    cfg.serving.port (0 = a free port) in a background thread; stopped gracefully on exit."""
    predictor = load_predictor(cfg, model_source, model_version)
    sock = bind_socket(cfg.serving.host, cfg.serving.port)
    host, port = sock.getsockname()[:2]
    app, hub = build_app(cfg, predictor, port)
    server = _uvicorn_server(cfg, app, hub)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # surfaced by the caller's wait below
            failed.append(exc)

    thread = threading.Thread(target=run, name="serving-http", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        thread.join(0.02)
    if not server.started:
        predictor.stop()
        raise RuntimeError(f"the server did not start: {failed[0] if failed else 'unknown'}")
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    handle = ServerHandle(url=f"http://{netloc}",
                          ws_url=f"ws://{netloc}" + STREAM_ROUTE.format(model_name=predictor.name),
                          model_name=predictor.name, model_version=predictor.model_version,
                          predictor=predictor, hub=hub, server=server, thread=thread)
    try:
        yield handle
    finally:
        handle.stop()
        sock.close()
        app.state.executor.shutdown(wait=False)


def serve_main(cfg: "Config", model_source: str | None = None, *,
               model_version: str | None = None) -> int:
    """Serve in the foreground until SIGTERM/SIGINT (drained gracefully); returns an exit code.
    Binds cfg.serving.host:cfg.serving.port; prints the URLs on stderr once listening."""
    predictor = load_predictor(cfg, model_source, model_version)
    sock = bind_socket(cfg.serving.host, cfg.serving.port)
    host, port = sock.getsockname()[:2]
    app, hub = build_app(cfg, predictor, port)
    server = _uvicorn_server(cfg, app, hub)

    async def serve() -> None:
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            print(f"serving {predictor.name} ({predictor.model_version}) on http://{netloc} "
                  f"(OIP v2) and ws://{netloc}{STREAM_ROUTE.format(model_name=predictor.name)}",
                  file=sys.stderr, flush=True)
        await task

    try:
        asyncio.run(serve())
    finally:
        predictor.stop()
        sock.close()
        app.state.executor.shutdown(wait=False)
    if server.cut_streams:
        print(f"drain: {server.cut_streams} stream(s) cut at the deadline (logs written)",
              file=sys.stderr)
    return 0
