"""A fake Kubernetes API server for InferenceServices (a third-party service we cannot run
here), on a real loopback HTTP server: bearer-token auth, create / get / replace with
resourceVersion conflicts and generation bumps on spec changes, like the API server does."""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PREFIX = "/apis/serving.kserve.io/v1beta1/namespaces/"


@dataclass
class FakeKube:
    token: str
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    revision: int = 0
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "deployer", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "deployer"}}]}))
        return path

    def set_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        """What the KServe controller would write after reconciling."""
        self.objects[(ns, name)]["status"] = status


def _handler(kube: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "reason": reason, "message": message, "code": code})

        def _route(self) -> tuple[str, str | None] | None:
            kube.requests.append((self.command, self.path))
            if self.headers.get("Authorization") != f"Bearer {kube.token}":
                self._status(401, "Unauthorized", "Unauthorized")
                return None
            path = self.path.split("?")[0]
            if not path.startswith(PREFIX):
                self._status(404, "NotFound", f"no route {path}")
                return None
            parts = path[len(PREFIX):].split("/")
            if len(parts) < 2 or parts[1] != "inferenceservices":
                self._status(404, "NotFound", f"no route {path}")
                return None
            return parts[0], (parts[2] if len(parts) > 2 else None)

        def _body(self) -> dict[str, Any]:
            return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        def do_GET(self) -> None:  # noqa: N802
            route = self._route()
            if route is None:
                return
            obj = kube.objects.get((route[0], route[1] or ""))
            if obj is None:
                self._status(404, "NotFound", f"inferenceservices {route[1]!r} not found")
            else:
                self._send(200, obj)

        def do_POST(self) -> None:  # noqa: N802
            route = self._route()
            if route is None:
                return
            body = self._body()
            key = (route[0], body["metadata"]["name"])
            if key in kube.objects:
                self._status(409, "AlreadyExists", "already exists")
                return
            kube.revision += 1
            body["metadata"].update({"resourceVersion": str(kube.revision), "generation": 1,
                                     "uid": f"uid-{kube.revision}"})
            kube.objects[key] = body
            self._send(201, body)

        def do_PUT(self) -> None:  # noqa: N802
            route = self._route()
            if route is None:
                return
            body = self._body()
            key = (route[0], route[1] or "")
            live = kube.objects.get(key)
            if live is None:
                self._status(404, "NotFound", "not found")
                return
            if body["metadata"].get("resourceVersion") != live["metadata"]["resourceVersion"]:
                self._status(409, "Conflict", "the object has been modified; please apply "
                                              "your changes to the latest version")
                return
            kube.revision += 1
            generation = live["metadata"]["generation"] + (body["spec"] != live["spec"])
            new = copy.deepcopy(body)
            new["metadata"].update({"resourceVersion": str(kube.revision),
                                    "generation": generation, "uid": live["metadata"]["uid"]})
            if "status" in live:  # the main resource's PUT does not change the status
                new["status"] = live["status"]
            kube.objects[key] = new
            self._send(200, new)

    return Handler


def start_fake_kube(token: str) -> FakeKube:
    kube = FakeKube(token)
    kube.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(kube))
    threading.Thread(target=kube.server.serve_forever, daemon=True).start()
    return kube
