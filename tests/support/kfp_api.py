"""A fake Kubeflow Pipelines API server for the tests: a REAL HTTP server on 127.0.0.1 (free
port) speaking the v2beta1 REST endpoints that ``kfp.Client`` 2.17 calls, with state in memory and
every request recorded.

Endpoints (paths and JSON field names as kfp_server_api 2.17 sends and reads them):
``GET /apis/v2beta1/healthz``; ``GET|POST /apis/v2beta1/pipelines``;
``POST /apis/v2beta1/pipelines/upload`` and ``/upload_version`` (multipart ``uploadfile``, the
package validated as KFP IR YAML by parsing it into the PipelineSpec/PlatformSpec protos);
``GET /apis/v2beta1/pipelines/{id}/versions``; ``GET|POST /apis/v2beta1/experiments``;
``GET|POST /apis/v2beta1/runs``; ``GET|POST /apis/v2beta1/recurringruns`` and
``POST /apis/v2beta1/recurringruns/{id}:disable|:enable``.

List calls honour ``filter`` (EQUALS predicates, as JSON), ``namespace``, ``experiment_id``,
``page_size`` and ``page_token``; ``honor_filters=False`` and ``max_page_size`` imitate a server
that ignores filters and pages small, to exercise a client's paging. Names are unique where the
real server makes them unique (pipelines; versions within a pipeline; experiments per namespace):
a duplicate is HTTP 409. Runs are checked like the real server: the version must exist, and the
parameters must be the version's declared ones. With ``token`` set, every request must carry
``Authorization: Bearer <token>`` (HTTP 401 otherwise).
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

API = "/apis/v2beta1"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # JSON body, or {"filename", "fields", "package"} for an upload
    headers: dict[str, str]


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def validate_ir(data: bytes) -> dict[str, Any]:
    """The PipelineSpec document of a KFP IR YAML package, or ApiError 400."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    try:
        docs = [d for d in yaml.safe_load_all(data) if d is not None]
    except yaml.YAMLError as exc:
        raise ApiError(400, f"invalid pipeline spec: not YAML: {exc}") from None
    if not docs or not isinstance(docs[0], dict):
        raise ApiError(400, "invalid pipeline spec: empty")
    try:
        json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
        for doc in docs[1:]:
            json_format.ParseDict(doc, pipeline_spec_pb2.PlatformSpec())
    except json_format.ParseError as exc:
        raise ApiError(400, f"invalid pipeline spec: {exc}") from None
    spec = docs[0]
    if not (spec.get("pipelineInfo", {}).get("name") and spec.get("root")
            and spec.get("schemaVersion")):
        raise ApiError(400, "invalid pipeline spec: pipelineInfo.name, root and schemaVersion "
                            "are required")
    return spec


@dataclass
class FakeKfp:
    multi_user: bool = False
    token: str | None = None
    honor_filters: bool = True
    max_page_size: int | None = None
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    recurring_runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._clock = itertools.count(0)

    # ---- helpers for tests
    def calls(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        """Recorded requests, optionally of one method and one path (exact, or a regex)."""
        return [r for r in self.requests
                if (method is None or r.method == method)
                and (path is None or r.path == path or re.fullmatch(path, r.path))]

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method != "GET"]

    def uploads(self) -> list[Recorded]:
        return self.calls("POST", f"{API}/pipelines/upload") + self.calls(
            "POST", f"{API}/pipelines/upload_version")

    def versions_of(self, pipeline_id: str) -> list[dict[str, Any]]:
        return [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids):04d}"

    def now(self) -> str:
        tick = next(self._clock)
        return f"2026-11-27T12:{tick // 60 % 60:02d}:{tick % 60:02d}Z"

    # ---- the API
    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Any:
        with self._lock:
            return self._route(method, path, query, body)

    def _route(self, method: str, path: str, q: dict[str, str], body: Any) -> Any:
        if not path.startswith(API + "/"):
            raise ApiError(404, f"no route {path}")
        rest = path[len(API):]
        if (method, rest) == ("GET", "/healthz"):
            return {"multi_user": self.multi_user, "pipeline_store": "database"}
        if rest == "/pipelines":
            if method == "GET":
                items = [p for p in self.pipelines.values()
                         if not q.get("namespace") or p.get("namespace") == q["namespace"]]
                return self._page("pipelines", items, q)
            if method == "POST":
                return self._create_pipeline(body.get("display_name") or body.get("name"),
                                             body.get("description"), body.get("namespace"))
        if (method, rest) == ("POST", "/pipelines/upload"):
            spec = validate_ir(body["package"])
            name = q.get("display_name") or q.get("name") or spec["pipelineInfo"]["name"]
            pipeline = self._create_pipeline(name, q.get("description"), q.get("namespace"))
            self._create_version(pipeline["pipeline_id"], name, None, spec)
            return pipeline
        if (method, rest) == ("POST", "/pipelines/upload_version"):
            spec = validate_ir(body["package"])
            pid = q.get("pipelineid") or ""
            if pid not in self.pipelines:
                raise ApiError(404, f"pipeline {pid!r} not found")
            name = q.get("display_name") or q.get("name") or body["filename"]
            return self._create_version(pid, name, q.get("description"), spec)
        m = re.fullmatch(r"/pipelines/([^/]+)/versions", rest)
        if m and method == "GET":
            if m.group(1) not in self.pipelines:
                raise ApiError(404, f"pipeline {m.group(1)!r} not found")
            return self._page("pipeline_versions", self.versions_of(m.group(1)), q)
        m = re.fullmatch(r"/pipelines/([^/:]+)", rest)
        if m and method == "GET":
            return self._get(self.pipelines, m.group(1), "pipeline")
        if rest == "/experiments":
            if method == "GET":
                items = [e for e in self.experiments.values()
                         if not q.get("namespace") or e.get("namespace") == q["namespace"]]
                return self._page("experiments", items, q)
            if method == "POST":
                return self._create_experiment(body)
        if rest == "/runs":
            if method == "GET":
                return self._page("runs", self._in_experiment(self.runs, q), q)
            if method == "POST":
                return self._create_run(body)
        if rest == "/recurringruns":
            if method == "GET":
                # The proto field is literally `recurringRuns` (so is its JSON name), unlike
                # every other list response's snake_case.
                return self._page("recurringRuns", self._in_experiment(self.recurring_runs, q), q)
            if method == "POST":
                return self._create_recurring(body)
        m = re.fullmatch(r"/recurringruns/([^/:]+):(disable|enable)", rest)
        if m and method == "POST":
            rr = self._get(self.recurring_runs, m.group(1), "recurring run")
            on = m.group(2) == "enable"
            rr["mode"], rr["status"] = ("ENABLE", "ENABLED") if on else ("DISABLE", "DISABLED")
            rr["updated_at"] = self.now()
            return {}
        raise ApiError(404, f"no route {method} {path}")

    def _get(self, table: dict[str, dict[str, Any]], key: str, what: str) -> dict[str, Any]:
        if key not in table:
            raise ApiError(404, f"{what} {key!r} not found")
        return table[key]

    def _in_experiment(self, table: dict[str, dict[str, Any]],
                       q: dict[str, str]) -> list[dict[str, Any]]:
        return [x for x in table.values()
                if not q.get("experiment_id") or x.get("experiment_id") == q["experiment_id"]]

    def _page(self, field_name: str, items: list[dict[str, Any]],
              q: dict[str, str]) -> dict[str, Any]:
        if self.honor_filters and q.get("filter"):
            items = [x for x in items if _matches(x, q["filter"])]
        size = int(q.get("page_size") or 20) or 20
        if self.max_page_size:
            size = min(size, self.max_page_size)
        start = int(q.get("page_token") or 0)
        page = items[start:start + size]
        out: dict[str, Any] = {field_name: page, "total_size": len(items)}
        if start + size < len(items):
            out["next_page_token"] = str(start + size)
        return out

    def _create_pipeline(self, name: str | None, description: str | None,
                         namespace: str | None) -> dict[str, Any]:
        if not name:
            raise ApiError(400, "pipeline name is required")
        if any(p["name"] == name and p.get("namespace") == (namespace or "")
               for p in self.pipelines.values()):
            raise ApiError(409, f"pipeline {name!r} already exists")
        pid = self.new_id("pipeline")
        self.pipelines[pid] = {"pipeline_id": pid, "name": name, "display_name": name,
                               "description": description or "", "namespace": namespace or "",
                               "created_at": self.now()}
        return self.pipelines[pid]

    def _create_version(self, pid: str, name: str, description: str | None,
                        spec: dict[str, Any]) -> dict[str, Any]:
        if any(v["name"] == name for v in self.versions_of(pid)):
            raise ApiError(409, f"pipeline version {name!r} already exists in {pid}")
        vid = self.new_id("version")
        self.versions[vid] = {"pipeline_id": pid, "pipeline_version_id": vid, "name": name,
                              "display_name": name, "description": description or "",
                              "created_at": self.now(), "pipeline_spec": spec}
        return self.versions[vid]

    def _create_experiment(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("display_name")
        if not name:
            raise ApiError(400, "experiment display_name is required")
        ns = body.get("namespace") or ""
        if self.multi_user and not ns:
            raise ApiError(400, "multi-user mode: experiments need a namespace")
        if any(e["display_name"] == name and e["namespace"] == ns
               for e in self.experiments.values()):
            raise ApiError(409, f"experiment {name!r} already exists")
        eid = self.new_id("experiment")
        self.experiments[eid] = {"experiment_id": eid, "display_name": name,
                                 "description": body.get("description") or "", "namespace": ns,
                                 "storage_state": "AVAILABLE", "created_at": self.now()}
        return self.experiments[eid]

    def _check_job(self, body: dict[str, Any]) -> tuple[str, str]:
        if body.get("experiment_id") not in self.experiments:
            raise ApiError(404, f"experiment {body.get('experiment_id')!r} not found")
        ref = body.get("pipeline_version_reference") or {}
        vid, pid = ref.get("pipeline_version_id"), ref.get("pipeline_id")
        if vid not in self.versions or self.versions[vid]["pipeline_id"] != pid:
            raise ApiError(404, f"pipeline version {vid!r} of {pid!r} not found")
        declared = (self.versions[vid]["pipeline_spec"]["root"].get("inputDefinitions") or {}
                    ).get("parameters") or {}
        params = (body.get("runtime_config") or {}).get("parameters") or {}
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise ApiError(400, f"unknown runtime parameters {unknown}")
        return pid, vid

    def _create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        pid, vid = self._check_job(body)
        rid = self.new_id("run")
        self.runs[rid] = {**body, "run_id": rid, "pipeline_version_id": vid, "state": "PENDING",
                          "storage_state": "AVAILABLE", "created_at": self.now()}
        return self.runs[rid]

    def _create_recurring(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check_job(body)
        cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron")
        if cron is not None and len(cron.split()) != 6:
            raise ApiError(400, f"invalid cron {cron!r}: 6 fields expected")
        rid = self.new_id("recurring")
        on = body.get("mode", "ENABLE") == "ENABLE"
        self.recurring_runs[rid] = {**body, "recurring_run_id": rid,
                                    "mode": "ENABLE" if on else "DISABLE",
                                    "status": "ENABLED" if on else "DISABLED",
                                    "max_concurrency": str(body.get("max_concurrency") or 1),
                                    "created_at": self.now(), "updated_at": self.now()}
        return self.recurring_runs[rid]


def _matches(item: dict[str, Any], filter_json: str) -> bool:
    spec = json.loads(filter_json)
    for pred in spec.get("predicates") or []:
        if pred.get("operation") not in ("EQUALS", 1):
            raise ApiError(400, f"unsupported filter operation {pred.get('operation')!r}")
        want = pred.get("stringValue", pred.get("string_value"))
        if item.get(pred["key"]) != want:
            return False
    return True


def _parse_upload(content_type: str, data: bytes) -> dict[str, Any]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + data)
    if not msg.is_multipart():
        raise ApiError(400, "expected multipart/form-data with an uploadfile")
    out: dict[str, Any] = {"fields": {}}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "uploadfile":
            out["filename"] = part.get_filename()
            out["package"] = payload
        else:
            out["fields"][name] = payload.decode()
    if "package" not in out:
        raise ApiError(400, "uploadfile is required")
    return out


def _handler(fake: FakeKfp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _serve(self, method: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            ctype = self.headers.get("Content-Type") or ""
            status, answer = 200, None
            try:
                if ctype.startswith("multipart/form-data"):
                    body: Any = _parse_upload(ctype, raw)
                else:
                    body = json.loads(raw) if raw else {}
                fake.requests.append(Recorded(method, url.path, query, body,
                                              {k.lower(): v for k, v in self.headers.items()}))
                if fake.token and self.headers.get("Authorization") != f"Bearer {fake.token}":
                    raise ApiError(401, "unauthenticated: a valid bearer token is required")
                answer = fake.handle(method, url.path, query, body)
            except ApiError as exc:
                status, answer = exc.status, {"error": exc.message, "code": exc.status,
                                              "message": exc.message}
            except (ValueError, KeyError) as exc:
                status, answer = 400, {"error": str(exc), "code": 400, "message": str(exc)}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._serve("DELETE")

        def do_PATCH(self) -> None:  # noqa: N802
            self._serve("PATCH")

    return Handler


@contextmanager
def kfp_api_server(**options: Any) -> Iterator[FakeKfp]:
    """A running fake KFP API on 127.0.0.1:<free port>; ``.url`` is its base URL."""
    fake = FakeKfp(**options)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-kfp-api", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
