"""Every CLI command has a helpful --help; configuration errors are clear."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.cli import build_parser

COMMANDS = ["services", "bootstrap", "simulate", "seal", "run", "compile", "demo", "bench", "evaluate-model",
            "model", "train", "trainjob", "validate", "features", "mix", "erase", "retention"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_top_level_help_lists_every_command():
    out = _run("--help")
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout
    assert "examples:" in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([command, "--help"])
    assert exc.value.code == 0


def test_a_typo_in_an_override_is_reported():
    out = _run("--set", "simulate.conversation=3", "compile", "--output", "/dev/null")
    assert out.returncode != 0 and "conversation" in out.stderr


def test_trainjob_prints_a_manifest_that_trains_the_dataset():
    import yaml

    out = _run("--profile", "production", "trainjob", "--dataset", "pairs-0123", "--nodes", "2",
               "--gpus-per-node", "4", "--kind", "PyTorchJob")
    assert out.returncode == 0, out.stderr
    job = yaml.safe_load(out.stdout)
    assert job["kind"] == "PyTorchJob"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "command"]
    assert command[:3] == ["torchrun", "-m", "pipelines.cli"]
    assert command[-3:] == ["train", "--dataset", "pairs-0123"]
