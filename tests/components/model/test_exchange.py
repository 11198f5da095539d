"""`duplexalign model export|import` against the live MLflow + SeaweedFS: the exported folder
loads with moshi's stock loader and gives the same fp32 logits; a stock folder imports as a new
registered version."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from components.common.config import Config
from components.model.checkpoint import IDENTITY_NAME, load_checkpoint, read_identity
from components.model.exchange import export_checkpoint, import_checkpoint, same_logits
from components.model.registry import model_version_tag, register_model

pytestmark = pytest.mark.integration


@pytest.fixture
def reg_cfg(services_config: Config, tmp_path: Path) -> Config:
    return services_config.model_copy(update={"model": services_config.model.model_copy(update={
        "registered_name": f"test-exchange-{uuid.uuid4().hex[:8]}",
        "cache_dir": str(tmp_path / "lm-cache")})})


def test_export_then_import_round_trip(reg_cfg: Config, tiny_checkpoint: Path, tmp_path: Path):
    name = reg_cfg.model.registered_name
    register_model(reg_cfg, tiny_checkpoint, metrics={}, params={}, alias="champion",
                   run_name="exchange test")
    out = export_checkpoint(reg_cfg, "champion", tmp_path / "export")
    original = load_checkpoint(tiny_checkpoint).lm
    assert same_logits(out, original) == 0.0  # moshi's loader, fp32: identical logits
    assert read_identity(out).weights_sha256 == read_identity(tiny_checkpoint).weights_sha256

    (out / IDENTITY_NAME).unlink()  # as a stock Kyutai release would come: no identity file
    version = import_checkpoint(reg_cfg, str(out), alias="imported")
    assert version == "2" and model_version_tag(reg_cfg, "imported") == f"{name}/2"
    reloaded = load_checkpoint(tiny_checkpoint).lm
    for a, b in zip(original.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)


def test_a_tampered_export_is_refused(reg_cfg: Config, tiny_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "bad"
    out.mkdir()
    for path in tiny_checkpoint.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-8:] = b"\x00" * 8  # flip the last weights
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt or replaced"):
        import_checkpoint(reg_cfg, str(out))
