"""`duplexalign submit`: the compiled pipeline onto a Kubeflow Pipelines (KFP) host.

Uploads the compiled package (default: the committed ``pipelines/alignment.yaml``, package data of
``pipelines``, so an installed image has it) as a pipeline *version*, optionally starts a run and
keeps a recurring run, all through the KFP client SDK (``kfp.Client``, REST ``/apis/v2beta1``).

Idempotent by names, so the chart's registration Job (and a person) can rerun it safely:

* pipeline: found by display name, created (without a version) the first time;
* version: named after the package's content hash by default (``<pipeline>-<sha256[:12]>``); an
  existing version of that name is reused, so rerunning with the same package uploads nothing and
  a changed package becomes a new version;
* experiment: found by name or created;
* run (``--run``): a run is an execution, so every call starts one, named
  ``<pipeline>-<UTC timestamp>``; with an explicit ``--run-name`` an existing run of that name in
  the experiment on the same version is reported instead of starting a second one (safe retries);
* recurring run (``--schedule``): an *enabled* recurring run named ``--schedule-name`` with the same
  version, cron, parameters (and service account) is kept; otherwise a new one is created and every
  other enabled recurring run of that name is disabled (both reported). Recurring runs never catch
  up missed intervals and run one at a time.

Everything the call would send is validated first (package, ``--param`` keys and types, cron), so
a mistake fails before any request; ``--dry-run`` contacts nothing at all.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

HOST_ENV = "KFP_HOST"
# kfp's own variable for the projected ServiceAccount token (multi-user KFP, in-cluster), and the
# path Kubeflow's PodDefault mounts it at.
TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
IN_CLUSTER_TOKEN = "/var/run/secrets/kubeflow/pipelines/token"
# Where links point when the API host is not the UI (in-cluster: ml-pipeline:8888 has no UI).
UI_ENV = "KF_PIPELINES_UI_ENDPOINT"
DEFAULT_NAMESPACE = "kubeflow"
DEFAULT_EXPERIMENT = "duplexalign"
SCHEDULE_SUFFIX = "-recurring"
PAGE_SIZE = 100
HEALTHZ = "/apis/v2beta1/healthz"

EPILOG = """\
examples:
  duplexalign submit --host http://localhost:8888
      upload pipelines/alignment.yaml as version <pipeline>-<sha256[:12]> (nothing if it exists)
  duplexalign submit --host http://localhost:8888 --run --param input_manifest_id=raw-20261127
      ... and start a run with that parameter (values typed by the pipeline's declared types)
  duplexalign submit --host http://ml-pipeline.kubeflow:8888 --schedule "0 0 3 * * 1"
      ... and keep a recurring run every Monday at 03:00:00 (KFP cron: 6 fields, seconds first)
  duplexalign submit --host http://localhost:8888 --run --dry-run
      validate everything and print what would happen; contacts nothing
  kubectl -n kubeflow port-forward svc/ml-pipeline 8888:8888   (to reach KFP from a laptop)

The output is one JSON line: ids, whether each object was created or found, UI links."""

CRON_HELP = ("a KFP cron expression: 6 fields, SECONDS first (seconds minutes hours day-of-month "
             "month day-of-week), e.g. '0 0 3 * * 1' = Mondays 03:00:00; a 5-field crontab line is "
             "refused (prefix it with '0 ')")


class SubmitError(RuntimeError):
    """A submission that cannot go ahead; the message says why and what to change."""


# --------------------------------------------------------------------------------------------
# The package


def default_package() -> Path:
    """The committed compiled pipeline, wherever the `pipelines` package is installed."""
    return Path(str(resources.files("pipelines").joinpath("alignment.yaml")))


@dataclasses.dataclass(frozen=True)
class Package:
    path: Path
    data: bytes
    spec: dict[str, Any]  # the PipelineSpec (first YAML document)

    @property
    def name(self) -> str:
        return str(self.spec["pipelineInfo"]["name"])

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        """The pipeline's run parameters: root inputDefinitions, name -> declaration."""
        root = self.spec.get("root") or {}
        return dict(((root.get("inputDefinitions") or {}).get("parameters")) or {})

    def required(self) -> list[str]:
        return sorted(k for k, d in self.parameters.items()
                      if "defaultValue" not in d and not d.get("isOptional"))


def load_package(path: str | os.PathLike[str] | None = None) -> Package:
    import yaml

    p = Path(path) if path else default_package()
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SubmitError(f"cannot read the pipeline package {p}: {exc.strerror or exc}") from None
    try:
        docs = [d for d in yaml.safe_load_all(data) if d is not None]
    except yaml.YAMLError as exc:
        raise SubmitError(f"{p} is not YAML: {exc}") from None
    spec = docs[0] if docs else None
    if not (isinstance(spec, dict) and isinstance(spec.get("pipelineInfo"), dict)
            and spec["pipelineInfo"].get("name") and isinstance(spec.get("root"), dict)
            and spec.get("schemaVersion")):
        raise SubmitError(f"{p} is not a compiled KFP pipeline (IR YAML with pipelineInfo, root "
                          "and schemaVersion); `duplexalign compile` writes one")
    return Package(p, data, spec)


# --------------------------------------------------------------------------------------------
# Parameters

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _param_type(decl: Mapping[str, Any]) -> str:
    return str(decl.get("parameterType") or decl.get("type") or "STRING").upper()


def _typed(key: str, ptype: str, value: Any) -> Any:
    """`value` (a CLI string, or already a Python value) as the declared type `ptype`."""
    def bad(why: str) -> SubmitError:
        return SubmitError(f"--param {key}={value!r}: {why} ({key} is declared {ptype})")

    raw = value.strip() if isinstance(value, str) else value
    if ptype == "STRING":
        if not isinstance(value, str):
            raise bad("expected a string")
        return value
    if ptype == "NUMBER_INTEGER":
        if isinstance(raw, bool):
            raise bad("expected an integer")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw):
            return int(raw)
        raise bad("expected an integer")
    if ptype in ("NUMBER_DOUBLE", "DOUBLE", "NUMBER"):
        if isinstance(raw, bool):
            raise bad("expected a number")
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise bad("expected a number") from None
        if not math.isfinite(number):
            raise bad("expected a finite number")
        return number
    if ptype == "BOOLEAN":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise bad("expected true or false")
    if ptype in ("LIST", "STRUCT"):
        want = list if ptype == "LIST" else dict
        parsed = raw
        if isinstance(raw, str):
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError:
                parsed = None
        if not isinstance(parsed, want):
            raise bad(f"expected a JSON {'array' if want is list else 'object'}")
        return parsed
    raise bad(f"parameters of type {ptype} cannot be set at submission")


def parse_param_args(pairs: Sequence[str] | None) -> dict[str, str]:
    """`--param KEY=VALUE` strings -> {KEY: VALUE} (a repeated key is an error)."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SubmitError(f"--param {pair!r}: expected KEY=VALUE")
        if key in out:
            raise SubmitError(f"--param {key} given twice")
        out[key] = value
    return out


def coerce_params(package: Package, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """`params` checked against the package's parameters and typed by their declared types."""
    declared = package.parameters
    unknown = sorted(set(params or {}) - set(declared))
    if unknown:
        known = ", ".join(f"{k} ({_param_type(d)})" for k, d in sorted(declared.items()))
        raise SubmitError(f"unknown parameter(s) {', '.join(unknown)} for pipeline "
                          f"{package.name!r} ({package.path}); its parameters: {known or 'none'}")
    return {k: _typed(k, _param_type(declared[k]), v) for k, v in sorted((params or {}).items())}


# --------------------------------------------------------------------------------------------
# Cron (KFP's scheduled workflows parse with robfig/cron: 6 fields, seconds first)

_MONTHS = {m: i + 1 for i, m in enumerate(
    "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}
_CRON_FIELDS = (("seconds", 0, 59, {}), ("minutes", 0, 59, {}), ("hours", 0, 23, {}),
                ("day-of-month", 1, 31, {}), ("month", 1, 12, _MONTHS),
                ("day-of-week", 0, 6, _DAYS))


def validate_cron(expr: str) -> str:
    """The expression with single spaces, or SubmitError saying what is wrong."""
    fields = (expr or "").split()
    if len(fields) != 6:
        hint = f" — did you mean '0 {' '.join(fields)}'?" if len(fields) == 5 else ""
        raise SubmitError(f"--schedule {expr!r}: KFP cron expressions have 6 fields, seconds "
                          f"first (seconds minutes hours day-of-month month day-of-week); got "
                          f"{len(fields)}{hint}")
    for text, (label, lo, hi, names) in zip(fields, _CRON_FIELDS):
        for item in text.split(","):
            _check_cron_item(expr, label, item, lo, hi, names)
    return " ".join(fields)


def _check_cron_item(expr: str, label: str, item: str, lo: int, hi: int,
                     names: Mapping[str, int]) -> None:
    def bad(why: str) -> SubmitError:
        return SubmitError(f"--schedule {expr!r}: {label} field {item!r}: {why}")

    def value(tok: str) -> int:
        if tok.upper() in names:
            return names[tok.upper()]
        if not tok.isdigit():
            raise bad(f"{tok!r} is not a number" + (f" or a name ({', '.join(names)})"
                                                    if names else ""))
        v = int(tok)
        if not lo <= v <= hi:
            raise bad(f"{v} is outside {lo}-{hi}")
        return v

    base, slash, step = item.partition("/")
    if slash and not (step.isdigit() and int(step) > 0):
        raise bad("the step after '/' must be a positive integer")
    if base == "?":
        if label not in ("day-of-month", "day-of-week") or slash:
            raise bad("'?' is only allowed alone in day-of-month or day-of-week")
        return
    if base == "*":
        return
    first, dash, last = base.partition("-")
    a = value(first)
    if dash and a > value(last):
        raise bad("the range runs backwards")


# --------------------------------------------------------------------------------------------
# The result


@dataclasses.dataclass
class Resource:
    name: str
    id: str | None = None
    created: bool | None = None  # None: not looked up (dry run)
    url: str | None = None


@dataclasses.dataclass
class SubmitResult:
    host: str
    namespace: str | None
    package: str
    package_sha256: str
    parameters: dict[str, Any]
    pipeline: Resource
    version: Resource
    experiment: Resource
    run: Resource | None = None
    recurring_run: Resource | None = None
    schedule: str | None = None
    disabled_recurring_runs: list[Resource] = dataclasses.field(default_factory=list)
    multi_user: bool | None = None
    dry_run: bool = False
    actions: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Talking to KFP


def _check_host(host: str) -> str:
    host = (host or "").strip().rstrip("/")
    if not host:
        raise SubmitError(f"no KFP host: pass --host URL or set ${HOST_ENV}")
    if not re.match(r"^https?://[^/\s]+", host):
        raise SubmitError(f"--host {host!r}: expected an http:// or https:// URL, e.g. "
                          "http://ml-pipeline.kubeflow:8888")
    return host


def _read_token(token_path: str | os.PathLike[str] | None) -> str | None:
    if not token_path:
        return None
    try:
        token = Path(token_path).read_text().strip()
    except OSError as exc:
        raise SubmitError(f"cannot read the KFP token file {token_path}: "
                          f"{exc.strerror or exc}") from None
    if not token:
        raise SubmitError(f"the KFP token file {token_path} is empty")
    return token


def check_reachable(host: str, token: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """GET /apis/v2beta1/healthz: the server's answer (multi_user, ...), or a SubmitError that
    tells an unreachable host, a refused token, a non-KFP URL and a login page apart."""
    url = host + HEALTHZ
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=timeout) as resp:
            body, ctype = resp.read(), resp.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise SubmitError(f"KFP host {host} refused the request (HTTP {exc.code}): in "
                              "multi-user KFP pass a ServiceAccount token (--token-path, or "
                              f"${TOKEN_ENV}) allowed in --namespace") from None
        if exc.code == 404:
            raise SubmitError(f"{host} is not a KFP v2 API server (HTTP 404 on {HEALTHZ}); "
                              "--host is the ml-pipeline API, e.g. "
                              "http://ml-pipeline.kubeflow:8888") from None
        raise SubmitError(f"KFP host {host} answered HTTP {exc.code} on {HEALTHZ}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SubmitError(f"KFP host {host} is not reachable ({reason}); check --host (in the "
                          "cluster: http://ml-pipeline.kubeflow:8888; from a laptop: kubectl -n "
                          "kubeflow port-forward svc/ml-pipeline 8888:8888 and "
                          "--host http://localhost:8888)") from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise SubmitError(f"{host} answered {HEALTHZ} with {ctype}, not KFP's JSON: a login page "
                          "of an auth proxy? Use the ml-pipeline service, or a token")
    return answer


def _eq_filter(name: str) -> str:
    return json.dumps({"predicates": [
        {"key": "display_name", "operation": "EQUALS", "stringValue": name}]})


def _pages(call: Callable[..., Any], field: str, **kwargs: Any) -> Iterator[Any]:
    """Every item of a paged KFP list call."""
    token, seen = "", set()
    while True:
        resp = call(page_token=token, page_size=PAGE_SIZE, **kwargs)
        yield from getattr(resp, field, None) or []
        token = getattr(resp, "next_page_token", None) or ""
        if not token or token in seen:
            return
        seen.add(token)


def _named(item: Any, name: str) -> bool:
    return name in (getattr(item, "display_name", None), getattr(item, "name", None))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """kfp.Client prints links to stdout and warns on construction: stdout is for our JSON."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    try:
        data = json.loads(body) if body else {}
        msg = data.get("message") or data.get("error") or body
    except (ValueError, AttributeError):
        msg = body
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    return f"HTTP {status} {reason}: {msg}" if status else str(exc)


def _enabled(rr: Any) -> bool:
    mode = str(getattr(rr, "mode", "") or "")
    if mode:
        return mode == "ENABLE"
    return str(getattr(rr, "status", "") or "") == "ENABLED"


def _version_of(obj: Any) -> str | None:
    ref = getattr(obj, "pipeline_version_reference", None)
    return getattr(ref, "pipeline_version_id", None) or getattr(obj, "pipeline_version_id", None)


def _cron_of(rr: Any) -> str | None:
    cron = getattr(getattr(getattr(rr, "trigger", None), "cron_schedule", None), "cron", None)
    return " ".join(cron.split()) if cron else None


def _params_of(obj: Any) -> dict[str, Any]:
    return dict(getattr(getattr(obj, "runtime_config", None), "parameters", None) or {})


def submit(
    host: str,
    package: str | os.PathLike[str] | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    pipeline_name: str | None = None,
    version: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run: bool = False,
    run_name: str | None = None,
    schedule: str | None = None,
    schedule_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    service_account: str | None = None,
    token_path: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    timeout: float = 10.0,
    log: Callable[[str], None] | None = None,
) -> SubmitResult:
    """Upload `package` as a pipeline version on the KFP API at `host` (idempotent by names),
    then optionally start a run (`run`) and keep a recurring run (`schedule`, 6-field cron).
    `params` values may be strings (parsed by the declared types) or typed values."""
    say = log or (lambda _msg: None)
    pkg = load_package(package)
    host = _check_host(host)
    typed = coerce_params(pkg, params)
    cron = validate_cron(schedule) if schedule is not None else None
    if (run or cron) and (missing := [k for k in pkg.required() if k not in typed]):
        raise SubmitError(f"pipeline {pkg.name!r} needs parameter(s) {', '.join(missing)} for a "
                          f"run: pass --param {missing[0]}=VALUE")
    pipeline_name = pipeline_name or pkg.name
    version = version or f"{pipeline_name}-{pkg.sha256[:12]}"
    explicit_run_name = run_name
    if run and not run_name:
        run_name = f"{pipeline_name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    schedule_name = schedule_name or f"{pipeline_name}{SCHEDULE_SUFFIX}"
    result = SubmitResult(
        host=host, namespace=namespace, package=str(pkg.path), package_sha256=pkg.sha256,
        parameters=typed, pipeline=Resource(pipeline_name), version=Resource(version),
        experiment=Resource(experiment), schedule=cron, dry_run=dry_run)
    if run:
        result.run = Resource(run_name or "")
    if cron:
        result.recurring_run = Resource(schedule_name)
    if dry_run:
        result.actions = [
            f"check {host}{HEALTHZ}",
            f"find pipeline {pipeline_name!r} or create it",
            f"find version {version!r} or upload {pkg.path} (sha256 {pkg.sha256[:12]})",
            f"find experiment {experiment!r} or create it",
        ]
        if run:
            result.actions.append(
                f"start run {run_name!r} with {json.dumps(typed)}" + (
                    " unless a run of that name exists on that version"
                    if explicit_run_name else ""))
        if cron:
            result.actions.append(
                f"keep recurring run {schedule_name!r} ({cron!r}) on that version or create it "
                "and disable other enabled recurring runs of that name")
        for action in result.actions:
            say(f"dry run: would {action}")
        return result

    token = _read_token(token_path)
    health = check_reachable(host, token, timeout)
    multi_user = bool(health.get("multi_user"))
    ns = namespace if multi_user else None
    result.multi_user, result.namespace = multi_user, ns
    try:
        import kfp
        import kfp_server_api
        import urllib3
    except ImportError as exc:  # pragma: no cover - kfp is a dependency
        raise SubmitError(f"the KFP SDK is not installed ({exc})") from None
    ui = (os.environ.get(UI_ENV) or host).rstrip("/")
    try:
        with _quiet():
            _submit(kfp, kfp_server_api, result, pkg, host, ui, ns, token_path, typed, run,
                    explicit_run_name, cron, service_account, say)
    except kfp_server_api.ApiException as exc:
        raise SubmitError(f"KFP API at {host} refused a request: {_api_message(exc)}") from None
    except (OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
        raise SubmitError(f"talking to KFP at {host} failed: {exc}") from None
    return result


def _submit(kfp: Any, api: Any, result: SubmitResult, pkg: Package, host: str, ui: str,
            ns: str | None, token_path: Any, params: dict[str, Any], run: bool,
            explicit_run_name: str | None, cron: str | None, service_account: str | None,
            say: Callable[[str], None]) -> None:
    credentials = (kfp.client.ServiceAccountTokenVolumeCredentials(path=str(token_path))
                   if token_path else None)
    client = kfp.Client(host=host, namespace=ns or DEFAULT_NAMESPACE, credentials=credentials)

    # The pipeline: by display name; created WITHOUT a version (KFP's upload would add one named
    # after the pipeline), so every version carries the content-hash name.
    name = result.pipeline.name
    found = [p for p in _pages(client.list_pipelines, "pipelines", filter=_eq_filter(name),
                               namespace=ns) if _named(p, name)]
    if len(found) > 1:
        raise SubmitError(f"{len(found)} pipelines are named {name!r} on {host}; "
                          "pass --pipeline-name to pick a unique one")
    if found:
        pipeline = found[0]
        result.pipeline.created = False
    else:
        pipeline = client.pipelines.pipeline_service_create_pipeline(
            pipeline=api.V2beta1Pipeline(
                display_name=name, namespace=ns,
                description=str(pkg.spec["pipelineInfo"].get("description") or "")[:1000]))
        result.pipeline.created = True
        say(f"created pipeline {name!r} ({pipeline.pipeline_id})")
    pid = pipeline.pipeline_id
    result.pipeline.id = pid
    result.pipeline.url = f"{ui}/#/pipelines/details/{pid}"

    vname = result.version.name
    versions = [v for v in _pages(client.list_pipeline_versions, "pipeline_versions",
                                  pipeline_id=pid, filter=_eq_filter(vname)) if _named(v, vname)]
    if versions:
        ver = versions[0]
        result.version.created = False
        say(f"version {vname!r} exists ({ver.pipeline_version_id}): nothing uploaded")
    else:
        ver = client.upload_pipeline_version(
            str(pkg.path), vname, pipeline_id=pid,
            description=f"{pkg.path.name} sha256 {pkg.sha256}")
        result.version.created = True
        say(f"uploaded version {vname!r} ({ver.pipeline_version_id})")
    vid = ver.pipeline_version_id
    result.version.id = vid
    result.version.url = f"{ui}/#/pipelines/details/{pid}/version/{vid}"

    ename = result.experiment.name
    exps = [e for e in _pages(client.list_experiments, "experiments", filter=_eq_filter(ename),
                              namespace=ns) if _named(e, ename)]
    if exps:
        exp = exps[0]
        result.experiment.created = False
    else:
        exp = client.create_experiment(ename, description="duplexalign pipeline runs",
                                       namespace=ns)
        result.experiment.created = True
        say(f"created experiment {ename!r} ({exp.experiment_id})")
    eid = exp.experiment_id
    result.experiment.id = eid
    result.experiment.url = f"{ui}/#/experiments/details/{eid}"

    if run and result.run is not None:
        rname = result.run.name
        existing = []
        if explicit_run_name:
            existing = [r for r in _pages(client.list_runs, "runs", experiment_id=eid,
                                          filter=_eq_filter(rname)) if _named(r, rname)]
            other = [r for r in existing if _version_of(r) != vid]
            existing = [r for r in existing if _version_of(r) == vid]
            if other and not existing:
                raise SubmitError(f"a run named {rname!r} already exists in experiment "
                                  f"{ename!r} on another pipeline version; choose another "
                                  "--run-name (or leave it out for a timestamped one)")
        if existing:
            r = existing[0]
            result.run.created = False
            say(f"run {rname!r} exists ({r.run_id}): not started again")
        else:
            r = client.run_pipeline(eid, rname, params=params, pipeline_id=pid, version_id=vid,
                                    service_account=service_account)
            result.run.created = True
            say(f"started run {rname!r} ({r.run_id})")
        result.run.id = r.run_id
        result.run.url = f"{ui}/#/runs/details/{r.run_id}"

    if cron and result.recurring_run is not None:
        sname = result.recurring_run.name
        same_name = [rr for rr in _pages(client.list_recurring_runs, "recurring_runs",
                                         experiment_id=eid, filter=_eq_filter(sname))
                     if _named(rr, sname)]

        def current(rr: Any) -> bool:
            return (_enabled(rr) and _version_of(rr) == vid and _cron_of(rr) == cron
                    and _params_of(rr) == params
                    and (not service_account or rr.service_account == service_account))

        keep = next((rr for rr in same_name if current(rr)), None)
        if keep is not None:
            result.recurring_run.created = False
            say(f"recurring run {sname!r} exists ({keep.recurring_run_id}): kept")
        else:
            keep = client.create_recurring_run(
                eid, sname, description=f"{result.pipeline.name} {result.version.name}",
                cron_expression=cron, max_concurrency=1, no_catchup=True, params=params,
                pipeline_id=pid, version_id=vid, enabled=True, service_account=service_account)
            result.recurring_run.created = True
            say(f"created recurring run {sname!r} ({keep.recurring_run_id}, {cron!r})")
        kid = keep.recurring_run_id
        result.recurring_run.id = kid
        result.recurring_run.url = f"{ui}/#/recurringrun/details/{kid}"
        for rr in same_name:
            if rr.recurring_run_id != kid and _enabled(rr):
                client.disable_recurring_run(rr.recurring_run_id)
                result.disabled_recurring_runs.append(Resource(
                    rr.display_name or sname, rr.recurring_run_id, False,
                    f"{ui}/#/recurringrun/details/{rr.recurring_run_id}"))
                say(f"disabled the replaced recurring run {rr.recurring_run_id}")


# --------------------------------------------------------------------------------------------
# CLI glue (pipelines/cli.py: `duplexalign submit`)


def add_submit_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `duplexalign submit` options on `parser` (the CLI's sub-command parser)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    env_host = os.environ.get(HOST_ENV)
    parser.add_argument("--host", default=env_host, required=not env_host,
                        help=f"the KFP API, e.g. http://ml-pipeline.kubeflow:8888 "
                             f"(default: ${HOST_ENV})")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                        help="the Kubeflow profile namespace in multi-user KFP (ignored by a "
                             "single-user deployment; default: %(default)s)")
    parser.add_argument("--package", metavar="FILE", default=None,
                        help="compiled pipeline IR YAML (default: the committed "
                             "pipelines/alignment.yaml, installed with the package)")
    parser.add_argument("--pipeline-name", default=None,
                        help="KFP pipeline name (default: the package's pipelineInfo.name)")
    parser.add_argument("--version", default=None,
                        help="version name (default: <pipeline>-<first 12 hex of the package's "
                             "sha256>, so the same package is never uploaded twice)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help="experiment for runs and recurring runs (default: %(default)s)")
    parser.add_argument("--run", action="store_true", help="start a run of the version")
    parser.add_argument("--run-name", default=None,
                        help="run name (default: <pipeline>-<UTC timestamp>, a new run each "
                             "time); an explicit name is started once: a run of that name on "
                             "the same version is reported, not repeated")
    parser.add_argument("--schedule", metavar="CRON", default=None,
                        help="keep a recurring run of the version: " + CRON_HELP)
    parser.add_argument("--schedule-name", default=None,
                        help=f"recurring run name (default: <pipeline>{SCHEDULE_SUFFIX}); one "
                             "enabled recurring run per name: a new version, cron or parameters "
                             "replace it (the old one is disabled)")
    parser.add_argument("--param", metavar="KEY=VALUE", action="append", default=[],
                        help="pipeline parameter for --run/--schedule (repeatable); keys are the "
                             "package's parameters, values typed by their declared types "
                             "(numbers, true/false, JSON lists/objects)")
    parser.add_argument("--service-account", default=None,
                        help="Kubernetes ServiceAccount the run's pods use (default: KFP's)")
    parser.add_argument("--token-path", default=os.environ.get(TOKEN_ENV),
                        help=f"ServiceAccount token file for multi-user KFP (default: ${TOKEN_ENV}"
                             f", else {IN_CLUSTER_TOKEN} when it exists)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and print what would happen; contacts nothing")
    return parser


def submit_from_args(args: argparse.Namespace, cfg: Any = None) -> dict[str, Any]:
    """`duplexalign submit`: the parsed options -> the result as a dict (the CLI prints it as
    one JSON line). Progress goes to stderr. `cfg` is unused: everything comes from the package
    and the options (the pipeline's pods read the cluster's own config)."""
    del cfg
    token_path = args.token_path
    if token_path is None and os.path.exists(IN_CLUSTER_TOKEN):
        token_path = IN_CLUSTER_TOKEN
    try:
        result = submit(
            args.host, args.package, namespace=args.namespace, pipeline_name=args.pipeline_name,
            version=args.version, experiment=args.experiment, run=args.run,
            run_name=args.run_name, schedule=args.schedule, schedule_name=args.schedule_name,
            params=parse_param_args(args.param), service_account=args.service_account,
            token_path=token_path, dry_run=args.dry_run,
            log=lambda msg: print(f"submit: {msg}", file=sys.stderr, flush=True))
    except SubmitError as exc:
        raise SystemExit(f"duplexalign submit: {exc}") from None
    return result.to_dict()
