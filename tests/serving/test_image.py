"""The CUDA image (serving/Dockerfile): GPU pipeline tasks, training jobs, the KServe predictor.

Offline and Docker-free (tests/support/images.py): hadolint, the rules both images share, and
what is specific to this one — a CUDA build of the locked torch matching the CUDA base, the same
Python as the component image, `python -m serving` as the entrypoint. Each rule is also run on a
broken variant so that it can fail."""

from __future__ import annotations

import re

import pytest

from tests.support.images import (
    REPO,
    Dockerfile,
    ImageRef,
    common_problems,
    context_problems,
    hadolint_problems,
    load_pyproject,
    parse_dockerignore,
    torch_install,
)

DOCKERFILE = REPO / "serving" / "Dockerfile"
ALLOWED_IGNORES = {"DL3008"}  # see the justification above the pragma and docs/images.md


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def df(text: str) -> Dockerfile:
    return Dockerfile(text)


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return load_pyproject()


def cuda_torch_problems(df: Dockerfile, pyproject: dict) -> list[str]:
    """The builder installs the locked torch version as a CUDA 12 build from the matching PyTorch
    index, and the CUDA base image has the same CUDA major.minor."""
    problems: list[str] = []
    version, index = torch_install(df)
    locked = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    base_version, _, local = version.partition("+")
    if base_version != locked.removeprefix("torch=="):
        problems.append(f"torch {version} is not the locked {locked}")
    m = re.fullmatch(r"cu(\d{2})(\d)", local)
    if not m:
        problems.append(f"torch {version} is not a CUDA build")
        return problems
    if m.group(1) != "12":
        problems.append(f"torch {version}: not a CUDA 12 build")
    if index != f"https://download.pytorch.org/whl/{local}":
        problems.append(f"index {index} does not serve torch +{local}")
    cuda = ImageRef.parse(df.base_of(df.final))
    if cuda.name not in ("nvidia/cuda", "docker.io/nvidia/cuda", "nvcr.io/nvidia/cuda"):
        problems.append(f"runtime base {cuda.name} is not NVIDIA's CUDA image")
    elif not (cuda.tag or "").startswith(f"{m.group(1)}.{m.group(2)}."):
        problems.append(f"CUDA base {cuda.tag} does not match torch +{local}")
    return problems


def test_hadolint_passes_with_only_justified_needed_ignores(text: str):
    assert hadolint_problems(text, ALLOWED_IGNORES) == []


def test_cuda_image_rules(df: Dockerfile, pyproject: dict):
    assert common_problems(df, pyproject) == []
    patterns = parse_dockerignore((REPO / ".dockerignore").read_text())
    assert context_problems(df, patterns) == []


@pytest.mark.parametrize("old,new,expected", [
    ("USER 10001:10001", "USER ubuntu", "not numeric"),
    ("nvidia/cuda:12.6.3-base-ubuntu24.04", "nvidia/cuda:12.6-base-ubuntu24.04", "not an exact"),
    ("HOME=/tmp", "HOME=/root", "HOME"),
    ("COPY components ./components\n", "", "copies packages"),
    ("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=1 HF_TOKEN=x", "looks like a secret"),
])
def test_cuda_image_rules_can_fail(text: str, pyproject: dict, old: str, new: str,
                                   expected: str):
    assert old in text
    problems = common_problems(Dockerfile(text.replace(old, new)), pyproject)
    assert any(expected in p for p in problems), problems


def test_cuda_image_installs_cuda_torch(df: Dockerfile, pyproject: dict):
    assert cuda_torch_problems(df, pyproject) == []
    version, _ = torch_install(df)
    assert "+cpu" not in version


@pytest.mark.parametrize("args,expected", [
    ({"TORCH_VERSION": "2.13.0+cpu"}, "not a CUDA build"),
    ({"TORCH_VERSION": "2.12.0+cu126"}, "not the locked"),
    ({"TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu"}, "does not serve"),
    ({"TORCH_VERSION": "2.13.0+cu130",
      "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cu130"}, "not a CUDA 12"),
    ({"TORCH_VERSION": "2.13.0+cu128",
      "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cu128"}, "does not match"),
    ({"CUDA_IMAGE": "python:3.11.17-slim-bookworm"}, "not NVIDIA's CUDA image"),
])
def test_cuda_torch_rule_can_fail(text: str, pyproject: dict, args: dict, expected: str):
    broken = text
    for name, value in args.items():
        broken = re.sub(rf"^ARG {name}=.*$", f"ARG {name}={value}", broken, flags=re.M)
    problems = cuda_torch_problems(Dockerfile(broken), pyproject)
    assert any(expected in p for p in problems), problems


def test_same_python_as_the_component_image(df: Dockerfile, pyproject: dict):
    cpu = Dockerfile.read(REPO / "components" / "Dockerfile")
    cpu_python = re.match(r"(\d+\.\d+\.\d+)", ImageRef.parse(cpu.base_of(cpu.final)).tag).group(1)
    python = df.stage_args(df.stage("builder"))["PYTHON_VERSION"]
    assert python == cpu_python
    assert python.startswith("3.11.")  # uv.lock's CPU/CUDA torch split is keyed on 3.11
    run = df.stage("builder").run_text()
    assert 'uv python install --no-bin "${PYTHON_VERSION}"' in run
    assert 'uv venv /opt/venv --python "${PYTHON_VERSION}"' in run
    # the uv-managed interpreter travels with the venv (its symlinks point into /opt/python)
    copies = {(c.sources, c.dest, c.from_) for c in df.final.copies()}
    assert (("/opt/python",), "/opt/python", "builder") in copies
    assert (("/opt/venv",), "/opt/venv", "builder") in copies
    assert df.stage("builder").env()["UV_PYTHON_INSTALL_DIR"] == "/opt/python"


def test_predictor_entrypoint(df: Dockerfile):
    final = df.final
    assert final.of("ENTRYPOINT")[-1].exec_form() == ["python", "-m", "serving"]
    assert final.of("EXPOSE")[-1].args == "8080"  # KServe's default container port
    # the same command the InferenceService gives the predictor (duplexalign deploy)
    assert '"command": ["python", "-m", "serving"]' in \
        (REPO / "components" / "deploy" / "inferenceservice.py").read_text()
    run = final.run_text()
    assert "--uid 10001 --gid 10001" in run and "espeak-ng" in run
    assert "ca-certificates" in run and "rm -rf /var/lib/apt/lists/*" in run
