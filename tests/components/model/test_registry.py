"""The MLflow registry against the session's live MLflow + SeaweedFS (integration), and the
source resolution that needs no server (unit)."""

from __future__ import annotations

import filecmp
import json
import uuid
from pathlib import Path

import pytest

from components.common.config import Config
from components.model.checkpoint import CHECKPOINT_FILES, read_identity, upload_checkpoint
from components.model.registry import (
    ModelNotRegistered,
    model_version_tag,
    register_model,
    registry_ref,
    resolve_model,
)


def _same_files(a: Path, b: Path) -> bool:
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in CHECKPOINT_FILES)


def test_local_folder_resolves_to_itself(ci_cfg: Config, tiny_checkpoint: Path) -> None:
    assert registry_ref(ci_cfg, str(tiny_checkpoint)) is None  # no server contacted
    assert resolve_model(ci_cfg, str(tiny_checkpoint)) == tiny_checkpoint
    sha = read_identity(tiny_checkpoint).weights_sha256
    assert model_version_tag(ci_cfg, str(tiny_checkpoint)) == f"path:{sha[:12]}"


def test_bad_sources_are_refused(ci_cfg: Config, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a registry alias"):
        resolve_model(ci_cfg, str(tmp_path / "missing" / "dir"))
    with pytest.raises(ValueError, match="cannot parse model URI"):
        resolve_model(ci_cfg, "models:/a/b/c")
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        resolve_model(ci_cfg, str(tmp_path))


@pytest.fixture
def reg_cfg(services_config: Config, tmp_path: Path) -> Config:
    """The live services with a registered model name of its own and a fresh cache."""
    return services_config.model_copy(update={"model": services_config.model.model_copy(update={
        "registered_name": f"test-moshi-{uuid.uuid4().hex[:8]}",
        "cache_dir": str(tmp_path / "lm-cache")})})


@pytest.mark.integration
def test_no_champion_yet_is_a_clear_error(reg_cfg: Config) -> None:
    with pytest.raises(ModelNotRegistered, match=r"no champion registered yet.*duplexalign bootstrap"):
        resolve_model(reg_cfg, "champion")
    with pytest.raises(ModelNotRegistered, match="has no version 7"):
        resolve_model(reg_cfg, f"models:/{reg_cfg.model.registered_name}/7")


@pytest.mark.integration
def test_register_resolve_and_promote(reg_cfg: Config, tiny_checkpoint: Path, tmp_path: Path,
                                      tokenizer, codec) -> None:
    from mlflow import MlflowClient

    name = reg_cfg.model.registered_name
    v1 = register_model(reg_cfg, tiny_checkpoint, metrics={"loss": 1.5}, params={"steps": 10},
                        alias="champion", run_name="bootstrap test", tags={"origin": "test"})
    assert v1 == "1"
    client = MlflowClient(tracking_uri=reg_cfg.mlflow.tracking_uri)
    mv = client.get_model_version(name, v1)
    identity = read_identity(tiny_checkpoint)
    assert mv.tags["tokenizer_hash"] == identity.tokenizer_hash == tokenizer.hash
    assert mv.tags["codec_hash"] == identity.codec_hash
    assert mv.tags["num_codebooks"] == "4" and mv.tags["size"] == "tiny"
    assert mv.tags["weights_sha256"] == identity.weights_sha256 and mv.tags["origin"] == "test"
    run = client.get_run(mv.run_id)
    assert run.data.metrics["loss"] == 1.5 and run.data.params["steps"] == "10"

    folder = resolve_model(reg_cfg)  # cfg.model.source defaults to "champion"
    assert folder == Path(reg_cfg.model.cache_dir) / f"{name}-v1"
    assert _same_files(folder, tiny_checkpoint)
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(reg_cfg, f"models:/{name}@champion") == folder
    assert resolve_model(reg_cfg, f"models:/{name}/1") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime  # cache hit, no download
    assert model_version_tag(reg_cfg, "champion") == f"{name}/1"

    # A second version becomes the champion; version 1 stays addressable.
    from components.model.checkpoint import save_checkpoint
    from components.model.spec import build_lm, lm_kwargs
    from tests.components.model.helpers import Layout

    kw = lm_kwargs("tiny", Layout(4, tokenizer.text_card, codec.card), context=64)
    second = tmp_path / "second"
    save_checkpoint(build_lm(kw, seed=1), kw, tokenizer, codec, second,
                    {"size": "tiny", "version": "2", "parent": f"{name}/1"})
    v2 = register_model(reg_cfg, second, metrics={}, params={}, alias="champion", run_name="v2")
    assert v2 == "2"
    assert model_version_tag(reg_cfg, "champion") == f"{name}/2"
    assert client.get_model_version(name, v2).tags["parent"] == f"{name}/1"
    assert _same_files(resolve_model(reg_cfg, "champion"), second)
    assert model_version_tag(reg_cfg, f"models:/{name}/1") == f"{name}/1"

    # A damaged cache folder is fetched again rather than trusted.
    identity_file = folder / "duplexalign.json"
    data = json.loads(identity_file.read_text())
    identity_file.write_text(json.dumps({**data, "weights_sha256": "0" * 64}))
    assert _same_files(resolve_model(reg_cfg, f"models:/{name}/1"), tiny_checkpoint)


@pytest.mark.integration
def test_s3_checkpoint_is_downloaded_once(reg_cfg: Config, store, tiny_checkpoint: Path) -> None:
    uri = upload_checkpoint(store, tiny_checkpoint, "models/tiny")
    assert uri.startswith("s3://") and uri.endswith("/models/tiny/")
    folder = resolve_model(reg_cfg, uri)
    assert folder.parent == Path(reg_cfg.model.cache_dir) and _same_files(folder, tiny_checkpoint)
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(reg_cfg, uri) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    sha = read_identity(tiny_checkpoint).weights_sha256
    assert model_version_tag(reg_cfg, uri) == f"path:{sha[:12]}"
