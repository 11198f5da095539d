"""`duplexalign submit` (pipelines/cluster/submit.py) against a fake KFP API server that is a real
HTTP server (tests/support/kfp_api.py) speaking the v2beta1 REST endpoints kfp.Client calls."""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.cluster.submit import (
    SubmitError,
    add_submit_arguments,
    load_package,
    submit,
    submit_from_args,
    validate_cron,
)
from pipelines.runner import COMPILED_PATH
from tests.support.kfp_api import API, ApiError, kfp_api_server

PACKAGE = load_package(COMPILED_PATH)
# The committed package's required parameters get a value wherever a run is started, whatever
# the pipeline declares at the time (read from the package, not hard-coded).
REQUIRED = {k: "x" for k in PACKAGE.required()}

EXTRA_PARAMS = {
    "max_items": {"parameterType": "NUMBER_INTEGER", "defaultValue": 10, "isOptional": True},
    "threshold": {"parameterType": "NUMBER_DOUBLE", "defaultValue": 0.5, "isOptional": True},
    "dry": {"parameterType": "BOOLEAN", "defaultValue": False, "isOptional": True},
    "tags": {"parameterType": "LIST", "defaultValue": [], "isOptional": True},
    "extra": {"parameterType": "STRUCT", "defaultValue": {}, "isOptional": True},
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer KFP context file, host, token or UI variables leak into the tests."""
    from kfp.client import client as kfp_client

    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT",
                        str(tmp_path / "kfp-context.json"))
    for var in ("KFP_HOST", "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_UI_ENDPOINT",
                "KF_PIPELINES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)


def variant(tmp_path: Path, name: str, params: dict[str, Any] | None = None,
            description: str | None = None) -> Path:
    """A modified copy of the committed package (same pipeline name, different content)."""
    docs = list(yaml.safe_load_all(COMPILED_PATH.read_text()))
    spec = docs[0]
    if params:
        spec["root"].setdefault("inputDefinitions", {}).setdefault("parameters", {}).update(params)
    if description is not None:
        spec["pipelineInfo"]["description"] = description
    out = tmp_path / name
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="duplexalign submit")
    add_submit_arguments(parser)
    return parser.parse_args(list(argv))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_first_submit_uploads_pipeline_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with kfp_api_server() as fake:
        out = submit_from_args(cli("--host", fake.url))
        assert capsys.readouterr().out == ""  # stdout stays for the CLI's JSON line
        name = PACKAGE.name
        assert out["pipeline"]["name"] == name and out["pipeline"]["created"] is True
        assert out["version"]["name"] == f"{name}-{PACKAGE.sha256[:12]}"
        assert out["version"]["created"] is True and out["experiment"]["created"] is True
        assert out["run"] is None and out["recurring_run"] is None
        # one pipeline (created without a version), one version upload carrying the package bytes
        assert len(fake.calls("POST", f"{API}/pipelines")) == 1
        assert fake.calls("POST", f"{API}/pipelines/upload") == []
        (upload,) = fake.calls("POST", f"{API}/pipelines/upload_version")
        assert upload.body["package"] == COMPILED_PATH.read_bytes()
        assert upload.query["name"] == out["version"]["name"]
        assert upload.query["pipelineid"] == out["pipeline"]["id"]
        (version,) = fake.versions.values()
        assert version["pipeline_spec"]["pipelineInfo"]["name"] == name
        pid, vid = out["pipeline"]["id"], out["version"]["id"]
        assert out["version"]["url"] == f"{fake.url}/#/pipelines/details/{pid}/version/{vid}"
        json.dumps(out)  # the CLI prints it as one JSON line


def test_second_identical_submit_uploads_nothing() -> None:
    with kfp_api_server() as fake:
        first = submit(fake.url)
        before = len(fake.requests)
        second = submit(fake.url)
        assert [r for r in fake.requests[before:] if r.method != "GET"] == []
        assert second.pipeline.created is False and second.version.created is False
        assert second.experiment.created is False
        assert (second.pipeline.id, second.version.id) == (first.pipeline.id, first.version.id)
        assert len(fake.versions) == 1 and len(fake.pipelines) == 1


def test_version_found_across_pages_when_server_ignores_filters() -> None:
    with kfp_api_server() as fake:
        first = submit(fake.url)
        for i in range(5):  # other versions listed before ours would be on later pages
            fake._create_version(first.pipeline.id, f"other-{i}", None,
                                 PACKAGE.spec)
        fake.honor_filters, fake.max_page_size = False, 2
        before = len(fake.requests)
        again = submit(fake.url)
        assert again.version.created is False and again.version.id == first.version.id
        assert fake.uploads()[1:] == []
        pages = [r for r in fake.requests[before:] if r.path.endswith("/versions")]
        assert len(pages) > 1 and pages[-1].query.get("page_token")


def test_changed_package_makes_a_new_version(tmp_path: Path) -> None:
    changed = variant(tmp_path, "alignment.yaml", description="changed")
    with kfp_api_server() as fake:
        first = submit(fake.url)
        second = submit(fake.url, changed)
        assert second.pipeline.id == first.pipeline.id and second.pipeline.created is False
        assert second.version.created is True and second.version.id != first.version.id
        sha = load_package(changed).sha256
        assert second.version.name == f"{PACKAGE.name}-{sha[:12]}" != first.version.name
        assert len(fake.versions_of(first.pipeline.id)) == 2
        assert len(fake.calls("POST", f"{API}/pipelines")) == 1


def test_run_has_typed_parameters_on_that_version(tmp_path: Path) -> None:
    package = variant(tmp_path, "typed.yaml", EXTRA_PARAMS)
    args = ["--host", "", "--package", str(package), "--run",
            "--param", "max_items=42", "--param", "threshold=0.25", "--param", "dry=true",
            "--param", 'tags=["a", "b"]', "--param", 'extra={"k": 1}']
    for key, value in REQUIRED.items():
        args += ["--param", f"{key}={value}"]
    with kfp_api_server() as fake:
        args[1] = fake.url
        out = submit_from_args(cli(*args))
        (post,) = fake.calls("POST", f"{API}/runs")
        params = post.body["runtime_config"]["parameters"]
        assert params["max_items"] == 42 and type(params["max_items"]) is int
        assert params["threshold"] == 0.25 and type(params["threshold"]) is float
        assert params["dry"] is True
        assert params["tags"] == ["a", "b"] and params["extra"] == {"k": 1}
        for key, value in REQUIRED.items():
            assert params[key] == value
        ref = post.body["pipeline_version_reference"]
        assert ref == {"pipeline_id": out["pipeline"]["id"],
                       "pipeline_version_id": out["version"]["id"]}
        assert post.body["experiment_id"] == out["experiment"]["id"]
        assert out["run"]["created"] is True
        assert out["run"]["url"] == f"{fake.url}/#/runs/details/{out['run']['id']}"
        assert out["parameters"]["max_items"] == 42


def test_committed_package_parameters_are_typed() -> None:
    """Whatever numeric parameters the committed pipeline declares arrive as numbers."""
    by_type: dict[str, str] = {}
    for key, decl in sorted(PACKAGE.parameters.items()):
        by_type.setdefault(decl.get("parameterType", ""), key)
    numeric = {t: k for t, k in by_type.items() if t in ("NUMBER_INTEGER", "NUMBER_DOUBLE")}
    if not numeric:
        pytest.skip("the committed pipeline declares no numeric parameters")
    given = {k: ("7" if t == "NUMBER_INTEGER" else "0.5") for t, k in numeric.items()}
    with kfp_api_server() as fake:
        submit(fake.url, run=True, params={**REQUIRED, **given})
        (post,) = fake.calls("POST", f"{API}/runs")
        sent = post.body["runtime_config"]["parameters"]
        for t, k in numeric.items():
            assert sent[k] == (7 if t == "NUMBER_INTEGER" else 0.5)
            assert type(sent[k]) is (int if t == "NUMBER_INTEGER" else float)


def test_runs_are_new_each_time_unless_named() -> None:
    with kfp_api_server() as fake:
        submit(fake.url, run=True, params=REQUIRED)
        submit(fake.url, run=True, params=REQUIRED)
        assert len(fake.calls("POST", f"{API}/runs")) == 2
        named = submit(fake.url, run=True, run_name="weekly-2026-48", params=REQUIRED)
        again = submit(fake.url, run=True, run_name="weekly-2026-48", params=REQUIRED)
        assert len(fake.calls("POST", f"{API}/runs")) == 3
        assert named.run and again.run and again.run.id == named.run.id
        assert again.run.created is False


def test_schedule_creates_one_recurring_run_and_keeps_it(tmp_path: Path) -> None:
    cron = "0 0 3 * * 1"
    with kfp_api_server() as fake:
        first = submit(fake.url, schedule=cron, params=REQUIRED)
        (post,) = fake.calls("POST", f"{API}/recurringruns")
        assert post.body["trigger"]["cron_schedule"]["cron"] == cron
        assert post.body["mode"] == "ENABLE" and post.body["no_catchup"] is True
        assert post.body["max_concurrency"] == 1
        assert post.body["pipeline_version_reference"]["pipeline_version_id"] == first.version.id
        assert first.recurring_run and first.recurring_run.created is True
        assert first.recurring_run.name == f"{PACKAGE.name}-recurring"

        before = len(fake.requests)
        again = submit(fake.url, schedule=cron, params=REQUIRED)
        assert [r for r in fake.requests[before:] if r.method != "GET"] == []
        assert again.recurring_run and again.recurring_run.id == first.recurring_run.id
        assert again.recurring_run.created is False and again.disabled_recurring_runs == []

        # a new version: a new recurring run, the old one disabled, both reported
        changed = variant(tmp_path, "alignment.yaml", description="v2")
        newer = submit(fake.url, changed, schedule=cron, params=REQUIRED)
        assert newer.recurring_run and newer.recurring_run.created is True
        assert [r.id for r in newer.disabled_recurring_runs] == [first.recurring_run.id]
        assert fake.recurring_runs[first.recurring_run.id]["status"] == "DISABLED"
        assert fake.recurring_runs[newer.recurring_run.id]["status"] == "ENABLED"
        assert len(fake.calls("POST", rf"{API}/recurringruns/[^/]+:disable")) == 1

        # and that is stable too
        before = len(fake.requests)
        submit(fake.url, changed, schedule=cron, params=REQUIRED)
        assert [r for r in fake.requests[before:] if r.method != "GET"] == []


@pytest.mark.parametrize("argv, message", [
    (["--param", "no_such_param=1"], "unknown parameter(s) no_such_param"),
    (["--param", "max_items=ten"], "expected an integer"),
    (["--param", "dry=maybe"], "expected true or false"),
    (["--param", "tags={}"], "expected a JSON array"),
    (["--param", "oops"], "expected KEY=VALUE"),
    (["--schedule", "0 3 * * 1"], "6 fields, seconds first"),
    (["--schedule", "0 0 25 * * 1"], "hours field '25': 25 is outside 0-23"),
    (["--schedule", "0 0 3 * * FUNDAY"], "day-of-week field 'FUNDAY'"),
    (["--schedule", "0 0 3 ? * */0"], "step after '/'"),
    (["--run", "--package", "REQUIRED"], "needs parameter(s) |needed"),
])
def test_bad_input_fails_clearly_before_any_request(tmp_path: Path, argv: list[str],
                                                    message: str) -> None:
    package = variant(tmp_path, "typed.yaml", EXTRA_PARAMS)
    needs = variant(tmp_path, "needs.yaml", {"needed": {"parameterType": "STRING"}})
    argv = [str(needs) if a == "REQUIRED" else a for a in argv]
    if "--package" not in argv:
        argv += ["--package", str(package)]
    with kfp_api_server() as fake:
        with pytest.raises(SystemExit) as exc:
            submit_from_args(cli("--host", fake.url, *argv))
        assert str(exc.value).startswith("duplexalign submit: ")
        for part in message.split("|"):
            assert part in str(exc.value)
        assert fake.requests == []


def test_unknown_param_error_lists_the_pipeline_parameters() -> None:
    with pytest.raises(SubmitError) as exc:
        submit("http://127.0.0.1:1", params={"nope": "1"}, dry_run=True)
    for key in PACKAGE.parameters:
        assert key in str(exc.value)


def test_cron_validation() -> None:
    assert validate_cron(" 0  0 3 * *  MON ") == "0 0 3 * * MON"
    for ok in ("0 0 3 ? * 1", "*/30 * * * * *", "0 0 0 1,15 JAN-JUN ?", "0 5/15 * * * 1-5"):
        assert validate_cron(ok)
    with pytest.raises(SubmitError, match=r"did you mean '0 0 3 \* \* 1'"):
        validate_cron("0 3 * * 1")
    with pytest.raises(SubmitError, match="range runs backwards"):
        validate_cron("0 0 5-3 * * *")
    with pytest.raises(SubmitError, match="6 fields"):
        validate_cron("@weekly")


def test_unreachable_host_fails_clearly() -> None:
    host = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as exc:
        submit_from_args(cli("--host", host))
    assert f"KFP host {host} is not reachable" in str(exc.value)
    with pytest.raises(SystemExit, match="expected an http:// or https:// URL"):
        submit_from_args(cli("--host", "ml-pipeline:8888"))


def test_dry_run_sends_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with kfp_api_server() as fake:
        out = submit_from_args(cli("--host", fake.url, "--dry-run", "--run",
                                   "--schedule", "0 0 3 * * 1",
                                   *sum((["--param", f"{k}={v}"] for k, v in REQUIRED.items()),
                                        [])))
        assert fake.requests == []
        assert out["dry_run"] is True and out["version"]["id"] is None
        assert out["version"]["name"] == f"{PACKAGE.name}-{PACKAGE.sha256[:12]}"
        assert any("upload" in a for a in out["actions"])
        assert any("recurring run" in a for a in out["actions"])
        err = capsys.readouterr().err
        assert "dry run: would" in err


def test_token_is_sent_and_a_refusal_is_clear(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    with kfp_api_server(token="tok-123") as fake:
        out = submit_from_args(cli("--host", fake.url, "--token-path", str(token)))
        assert out["version"]["created"] is True
        assert {r.headers.get("authorization") for r in fake.requests} == {"Bearer tok-123"}
        with pytest.raises(SystemExit, match=r"refused the request \(HTTP 401\)"):
            submit_from_args(cli("--host", fake.url))
    with pytest.raises(SystemExit, match="cannot read the KFP token file"):
        submit_from_args(cli("--host", "http://127.0.0.1:1", "--token-path",
                             str(tmp_path / "missing")))


def test_multi_user_uses_the_namespace() -> None:
    with kfp_api_server(multi_user=True) as fake:
        out = submit(fake.url, namespace="team-a", run=True, params=REQUIRED)
        assert out.multi_user is True and out.namespace == "team-a"
        (exp,) = fake.experiments.values()
        assert exp["namespace"] == "team-a"
        (pipeline,) = fake.pipelines.values()
        assert pipeline["namespace"] == "team-a"
        assert all(r.query.get("namespace") == "team-a"
                   for r in fake.calls("GET", f"{API}/experiments"))


def test_server_errors_are_reported() -> None:
    with kfp_api_server() as fake:
        served = fake.handle

        def broken(method: str, path: str, query: dict[str, str], body: Any) -> Any:
            if method == "POST" and path == f"{API}/runs":
                raise ApiError(500, "database is down")
            return served(method, path, query, body)

        fake.handle = broken  # type: ignore[method-assign]
        with pytest.raises(SubmitError, match=r"refused a request: HTTP 500 .*database is down"):
            submit(fake.url, run=True, params=REQUIRED)
        # two pipelines of one name: which one is meant is not guessed
        fake._create_pipeline(PACKAGE.name, None, "other")
        fake.pipelines[next(reversed(fake.pipelines))]["namespace"] = ""
        with pytest.raises(SubmitError, match="2 pipelines are named"):
            submit(fake.url)


def test_help_explains_cron_and_has_examples() -> None:
    parser = argparse.ArgumentParser(prog="duplexalign submit")
    add_submit_arguments(parser)
    text = parser.format_help()
    assert "6 fields" in text and "SECONDS first" in text
    assert "examples:" in text and "--dry-run" in text
    assert "KF_PIPELINES_SA_TOKEN_PATH" in text and "KFP_HOST" in text


def test_host_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFP_HOST", "http://kfp.example:8888")
    assert cli().host == "http://kfp.example:8888"
    monkeypatch.delenv("KFP_HOST")
    with pytest.raises(SystemExit):
        cli()


def test_cli_compile_uploads_the_configured_package_once(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """`duplexalign submit --compile` (the chart's registration Job): the pipeline compiled with
    the mounted configuration — here another registry and tag — is what is uploaded, and the
    same configuration a second time uploads nothing."""
    from pipelines.cli import main

    mounted = tmp_path / "config.yaml"
    mounted.write_text("profile: production\n"
                       "pipeline: {image_registry: registry.example.com/ml, image_tag: 2.1.0}\n")
    monkeypatch.setenv("DUPLEXALIGN_CONFIG", str(mounted))
    with kfp_api_server() as fake:
        assert main(["submit", "--compile", "--host", fake.url]) == 0
        first = json.loads(capsys.readouterr().out)
        (upload,) = fake.calls("POST", f"{API}/pipelines/upload_version")
        spec = next(yaml.safe_load_all(upload.body["package"]))
        images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
        assert images == {"registry.example.com/ml/duplexalign:2.1.0",
                          "registry.example.com/ml/duplexalign-cuda:2.1.0"}
        assert first["version"]["created"] is True
        assert main(["submit", "--compile", "--host", fake.url]) == 0
        second = json.loads(capsys.readouterr().out)
        assert second["version"] == {**first["version"], "created": False}
        assert len(fake.calls("POST", f"{API}/pipelines/upload_version")) == 1
    with pytest.raises(SystemExit, match="exclude each other"):
        main(["submit", "--compile", "--package", str(COMPILED_PATH), "--host", "http://x"])
