"""The component image (components/Dockerfile, CPU) and what both images share: the build
context (.dockerignore), the Dockerfile parser the checks rely on, `make images`.

Offline and Docker-free: hadolint lints the file, the parser reads it (tests/support/images.py).
Every rule is also run on a broken variant, so a check that could never fail cannot pass."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from components.common.config import PipelineConfig
from tests.support.images import (
    REPO,
    SECRET_PATH,
    Dockerfile,
    ImageRef,
    common_problems,
    context_files,
    context_problems,
    hadolint,
    hadolint_ignores,
    hadolint_problems,
    is_ignored,
    load_pyproject,
    package_data_files,
    parse_dockerignore,
    pinned_problem,
    secret_problems,
    shipped_packages,
    torch_install,
    user_problem,
)

DOCKERFILE = REPO / "components" / "Dockerfile"
# Rules that may be ignored inline, with a justification comment right above (docs/images.md).
ALLOWED_IGNORES = {"DL3008"}


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def df(text: str) -> Dockerfile:
    return Dockerfile(text)


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return load_pyproject()


@pytest.fixture(scope="module")
def ignore_patterns():
    return parse_dockerignore((REPO / ".dockerignore").read_text())


# --- the parser ---------------------------------------------------------------------------------

SAMPLE = """\
# syntax and comments are skipped
ARG BASE=python:3.11.17-slim-bookworm
ARG TOOL_IMAGE=ghcr.io/astral-sh/uv:0.13.9@sha256:""" + "a" * 64 + """
FROM ${TOOL_IMAGE} AS tool
FROM $BASE AS Build
ARG TORCH_VERSION=2.13.0+cpu
ENV A=1 \\
    # a comment inside a continuation

    B="two words"
ENV LEGACY value with spaces
COPY --from=tool --chmod=0755 /uv /bin/uv
RUN --mount=type=cache,target=/root/.cache echo "${TORCH_VERSION}" \\
 && true
FROM ${BASE}
LABEL org.opencontainers.image.version="${VERSION}" k=v
COPY --from=build /opt/venv /opt/venv
COPY ["a b.txt", "c", "/dst/"]
USER 10001:10001
CMD ["python", "-m", "x"]
"""


def test_parser_instructions_stages_args():
    df = Dockerfile(SAMPLE)
    assert [i.cmd for i in df.instructions][:4] == ["ARG", "ARG", "FROM", "FROM"]
    assert df.global_args["BASE"] == "python:3.11.17-slim-bookworm"
    assert [(s.name, df.base_of(s)) for s in df.stages] == [
        ("tool", "ghcr.io/astral-sh/uv:0.13.9@sha256:" + "a" * 64),
        ("build", "python:3.11.17-slim-bookworm"),
        (None, "python:3.11.17-slim-bookworm")]
    build = df.stage("build")
    assert build.env() == {"A": "1", "B": "two words", "LEGACY": "value with spaces"}
    assert df.stage_args(build) == {"TORCH_VERSION": "2.13.0+cpu"}
    run = build.of("RUN")[0]
    assert run.flags == {"mount": "type=cache,target=/root/.cache"}
    assert run.args == 'echo "${TORCH_VERSION}" && true'
    assert run.line == 13
    assert [(c.sources, c.dest, c.from_) for c in df.final.copies()] == [
        (("/opt/venv",), "/opt/venv", "build"), (("a b.txt", "c"), "/dst/", None)]
    assert df.final.labels() == {"org.opencontainers.image.version": "${VERSION}", "k": "v"}
    assert df.final_user() == "10001:10001"
    assert df.final.of("CMD")[0].exec_form() == ["python", "-m", "x"]
    # stages are not pulled; the tool image and the base are
    assert df.from_refs() == ["ghcr.io/astral-sh/uv:0.13.9@sha256:" + "a" * 64,
                              "python:3.11.17-slim-bookworm"]
    # --build-arg overrides the defaults
    assert Dockerfile(SAMPLE, {"BASE": "python:3.11.18-slim"}).base_of(df.final) == \
        "python:3.11.18-slim"


@pytest.mark.parametrize("bad", [
    "RUN echo no base\n",  # an instruction before the first FROM (only ARG may come first)
    "# only a comment\n",  # no FROM
    "FROM python:3.11.17 AS\n",  # AS without a stage name
    "FROM python:3.11.17\n3bad instruction\n",  # not an instruction
])
def test_parser_rejects_what_docker_rejects(bad: str):
    with pytest.raises(ValueError):
        Dockerfile(bad)
    with pytest.raises(ValueError):  # ENV A=1 B: B is not NAME=VALUE
        Dockerfile("FROM python:3.11.17\nENV A=1 B\n").final.env()


@pytest.mark.parametrize("ref,ok", [
    ("python:3.11.17-slim-bookworm", True),
    ("nvidia/cuda:12.6.3-base-ubuntu24.04", True),
    ("ghcr.io/astral-sh/uv:0.13.9", True),
    ("python:3.11.17-slim-bookworm@sha256:" + "0" * 64, True),
    ("python@sha256:" + "0" * 64, True),
    ("python:latest", False),
    ("python", False),
    ("python:3", False),
    ("python:3.11-slim", False),
    ("ubuntu:24.04", False),
    ("nvidia/cuda:12-base", False),
    ("localhost:5000/python", False),  # a registry port is not a tag
    ("python:3.11.17-slim@sha256:abc", False),
    ("python:${PY}", False),
])
def test_pinned_rule(ref: str, ok: bool):
    assert (pinned_problem(ref) is None) is ok, pinned_problem(ref)


def test_image_ref_parsing():
    assert ImageRef.parse("localhost:5000/a/b:1.2.3@sha256:x") == \
        ImageRef("localhost:5000/a/b", "1.2.3", "sha256:x")
    assert ImageRef.parse("localhost:5000/a") == ImageRef("localhost:5000/a", None, None)


@pytest.mark.parametrize("user,ok", [
    ("10001:10001", True), ("10001", True), (None, False), ("root", False), ("0", False),
    ("10001:0", False), ("0:10001", False), ("app", False), ("app:app", False),
])
def test_user_rule(user, ok: bool):
    assert (user_problem(user) is None) is ok


def test_secret_rule_catches_secret_names_files_and_inline_credentials():
    bad = Dockerfile("""\
ARG GITHUB_TOKEN
FROM python:3.11.17-slim-bookworm
ENV AWS_SECRET_ACCESS_KEY=abc DUPLEXALIGN_CONSENT_DSN=postgresql://x
ARG DB_PASSWORD=hunter2
LABEL signing-key=k
COPY .duplexalign/secrets/s3-credentials.json /app/
COPY deploy/id_rsa /root/.ssh/
ADD .env /app/.env
RUN pip download --index-url https://user:pa55@pypi.example.com/simple x
""")
    problems = secret_problems(bad)
    for needle in ("GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "DUPLEXALIGN_CONSENT_DSN",
                   "DB_PASSWORD", "signing-key", ".duplexalign/secrets", "id_rsa", ".env",
                   "inline in a URL"):
        assert any(needle in p for p in problems), (needle, problems)
    assert secret_problems(Dockerfile(
        "FROM python:3.11.17\nENV HOME=/tmp PATH=/opt/venv/bin:$PATH\nCOPY uv.lock /src/\n"
    )) == []


# --- the component image ------------------------------------------------------------------------

def test_hadolint_passes_with_only_justified_needed_ignores(text: str):
    assert hadolint_problems(text, ALLOWED_IGNORES) == []


def test_hadolint_can_fail():
    result = hadolint("FROM python:latest\nRUN apt-get install curl\n")
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3015" in result.stdout


def test_hadolint_ignore_rules_can_fail():
    assert hadolint_ignores("FROM a:1.2.3\n# hadolint ignore=DL3008\nRUN x\n")[0][2] is False
    unjustified = "FROM python:3.11.17\n# hadolint ignore=DL3008\nRUN apt-get update\n"
    assert any("justification" in p for p in hadolint_problems(unjustified, {"DL3008"}))
    assert any("allowed only" in p for p in hadolint_problems(
        "FROM python:3.11.17\n# a reason that is long enough here\n"
        "# hadolint ignore=DL3008\nRUN true\n", set()))
    # an ignore nothing needs
    assert any("without the pragmas" in p for p in hadolint_problems(
        "FROM python:3.11.17\n# a reason that is long enough here\n"
        "# hadolint ignore=DL3008\nRUN true\n", {"DL3008"}))


def test_component_image_rules(df: Dockerfile, pyproject: dict):
    assert common_problems(df, pyproject) == []


@pytest.mark.parametrize("old,new,expected", [
    ("USER 10001:10001", "USER root", "not numeric"),
    ("USER 10001:10001", "USER 0:0", "is root"),
    ("python:3.11.17-slim-bookworm", "python:3.11-slim-bookworm", "not an exact"),
    ("ghcr.io/astral-sh/uv:0.13.9", "ghcr.io/astral-sh/uv:latest", ":latest"),
    ("HOME=/tmp", "HOME=/home/app", "HOME"),
    ("PYTHONDONTWRITEBYTECODE=1", "PYTHONDONTWRITEBYTECODE=0", "PYTHONDONTWRITEBYTECODE"),
    ("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1", "HF_HUB_OFFLINE"),
    ("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=1 S3_SECRET_KEY=x", "looks like a secret"),
    ("COPY serving ./serving", "COPY serving ./serving\nCOPY tests ./tests", "copies packages"),
    ("COPY serving ./serving\n", "", "copies packages"),
    ('licenses="AGPL-3.0-or-later"', 'licenses="MIT"', "licenses"),
    ("ARG VERSION=0.1.0", "ARG VERSION=9.9.9", "version"),
    ("COPY --from=builder /opt/venv /opt/venv",
     "COPY --from=builder /opt/venv /opt/venv\nCOPY --from=uv /uv /bin/uv", "carries uv"),
])
def test_component_image_rules_can_fail(text: str, pyproject: dict, old: str, new: str,
                                        expected: str):
    assert old in text
    problems = common_problems(Dockerfile(text.replace(old, new)), pyproject)
    assert any(expected in p for p in problems), problems


def test_component_image_installs_cpu_torch(df: Dockerfile, pyproject: dict):
    version, index = torch_install(df)
    locked = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    assert version == locked.removeprefix("torch==") + "+cpu"
    assert index == "https://download.pytorch.org/whl/cpu"
    with pytest.raises(AssertionError):
        torch_install(Dockerfile(df.text.replace("--no-emit-package torch", "")))


def test_component_image_runtime(df: Dockerfile):
    builder, final = df.stage("builder"), df.final
    assert df.base_of(final) == df.base_of(builder)  # the venv's python is the base's python
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", df.base_of(final))
    assert final.of("WORKDIR")[-1].args == "/app"
    copies = {(c.sources, c.dest, c.from_) for c in final.copies()}
    assert (("/opt/venv",), "/opt/venv", "builder") in copies
    # the Feast feature server runs from the feature repository (chart: feast.server.repoDir)
    assert (("feature_repo",), "/app/feature_repo", None) in copies
    run = final.run_text()
    assert "--uid 10001 --gid 10001" in run and "espeak-ng" in run
    assert "rm -rf /var/lib/apt/lists/*" in run
    assert final.of("CMD")[-1].exec_form() == ["duplexalign", "--help"]
    # the builder installs the project non-editable, with its package data, and smoke-tests it
    brun = builder.run_text()
    assert re.search(r"uv pip install --no-config --no-deps \.(\s|$)", brun)
    assert "kfp.dsl.executor_main" in brun and "alignment.yaml" in brun


# --- the build context (shared by both images) --------------------------------------------------

@pytest.mark.parametrize("path", [
    ".git/HEAD", ".venv/bin/python", ".duplexalign/secrets/s3-credentials.json",
    ".duplexalign/wip/issue8-plan.md", "components/__pycache__/contract.cpython-311.pyc",
    "serving/__pycache__/x.pyc", "secrets/s3.json", "components/common/secrets/k",
    "tests/data/crds/x.yaml", "docs/images.md", "helm/duplexalign/values.yaml",
    "manifests/README.md", "duplexalign.egg-info/PKG-INFO", ".env", "serving/server.key",
    "Makefile",
])
def test_dockerignore_excludes(ignore_patterns, path: str):
    assert is_ignored(path, ignore_patterns)


@pytest.mark.parametrize("path", [
    "pyproject.toml", "uv.lock", "README.md", "LICENSE", "components/contract.py",
    "pipelines/alignment.yaml", "serving/__main__.py", "feature_repo/feature_store.yaml",
    "components/streams/assets/mimi-embedded.safetensors",
])
def test_dockerignore_keeps(ignore_patterns, path: str):
    assert not is_ignored(path, ignore_patterns)


def test_dockerignore_matcher_follows_docker():
    pats = parse_dockerignore("*\n!keep\n**/__pycache__\n/build/\n!build/keep.txt\n")
    assert is_ignored("a.txt", pats) and is_ignored("dir/a.txt", pats)
    assert not is_ignored("keep/a/b.py", pats)
    assert is_ignored("keep/a/__pycache__/b.pyc", pats)
    assert not is_ignored("build/keep.txt", pats) and is_ignored("build/x", pats)
    assert not is_ignored("x", parse_dockerignore("# nothing\n"))


def test_context_holds_package_data_and_no_secrets(ignore_patterns, pyproject: dict):
    files = context_files(REPO, ignore_patterns)
    data = package_data_files(pyproject)
    assert "pipelines/alignment.yaml" in data
    assert set(data) <= set(files)
    tops = {f.split("/")[0] for f in files}
    assert tops == {"pyproject.toml", "uv.lock", "README.md", "LICENSE", "feature_repo",
                    *shipped_packages(pyproject)}
    assert [f for f in files if SECRET_PATH.search(f) or "__pycache__" in f] == []


def test_copied_sources_are_in_the_context(df: Dockerfile, ignore_patterns):
    assert context_problems(df, ignore_patterns) == []
    broken = parse_dockerignore((REPO / ".dockerignore").read_text() + "\nREADME.md\nserving\n")
    problems = context_problems(df, broken)
    assert any("README.md" in p for p in problems) and any("serving/" in p for p in problems)
    assert any("does not exist" in p for p in context_problems(
        Dockerfile("FROM a:1.2.3\nCOPY no-such-file /x\n"), ignore_patterns))


# --- make images ---------------------------------------------------------------------------------

def _make_n(*args: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [ln for ln in out.splitlines() if ln.startswith(("docker ", "podman "))]


def test_make_images_builds_the_configured_names():
    builds = _make_n("images")
    cfg = PipelineConfig()  # the pipeline's defaults: pipeline.image_registry / image_tag
    assert len(builds) == 2
    assert "-f components/Dockerfile" in builds[0] and f"-t {cfg.image} ." in builds[0]
    assert "-f serving/Dockerfile" in builds[1] and f"-t {cfg.gpu_image} ." in builds[1]
    for b in builds:
        assert "--platform linux/amd64" in b and f"--build-arg VERSION={cfg.image_tag}" in b


def test_make_images_push_with_registry_and_tag():
    lines = _make_n("images-push", "REGISTRY=registry.example.com/team/", "TAG=1.2.3",
                    "CUDA_BUILD_ARGS=--build-arg CUDA_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04")
    assert lines[-2:] == ["docker push registry.example.com/team/duplexalign:1.2.3",
                          "docker push registry.example.com/team/duplexalign-cuda:1.2.3"]
    assert "--build-arg VERSION=1.2.3" in lines[0] and "CUDA_IMAGE" not in lines[0]
    assert "--build-arg CUDA_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04" in lines[1]
