"""`duplexalign model export|import`: checkpoints people can use elsewhere.

Our checkpoint folders already ARE Kyutai's stock format (components/model/checkpoint.py), so
export is: resolve the model (registry alias, version, folder or S3), copy its files, and prove
that moshi's own loader reads the copy and computes the same logits as our loader did. Import is
the reverse: verify a stock folder (ours or Kyutai's) loads, then register it as a new version.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from components.model.checkpoint import (
    CHECKPOINT_FILES,
    IDENTITY_NAME,
    load_checkpoint,
    local_checkpoint_dir,
    stock_checkpoint_info,
)

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config


def probe_codes(lm: torch.nn.Module, frames: int = 24, seed: int = 0) -> torch.Tensor:
    """Deterministic random codes [1, K, T] inside the model's vocabularies."""
    gen = torch.Generator().manual_seed(seed)
    k = lm.num_codebooks
    codes = torch.randint(0, lm.card, (1, k, frames), generator=gen)
    codes[:, 0] = torch.randint(0, lm.text_card, (1, frames), generator=gen)
    return codes


@torch.no_grad()
def logits_of(lm: torch.nn.Module, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text and audio logits in fp32 with the masked (NaN) positions zeroed, for comparison."""
    out = lm(codes)
    text = torch.where(out.text_mask[..., None], out.text_logits.float(), torch.zeros(()))
    audio = torch.where(out.mask[..., None], out.logits.float(), torch.zeros(()))
    return text, audio


def same_logits(folder: Path, reference: torch.nn.Module) -> float:
    """Load ``folder`` with moshi's stock loader (fp32: its default would cast to bf16) and
    return the largest absolute logit difference against ``reference`` on probe codes."""
    stock = stock_checkpoint_info(folder).get_moshi(device="cpu", dtype=torch.float32)
    codes = probe_codes(reference)
    ref_text, ref_audio = logits_of(reference, codes)
    got_text, got_audio = logits_of(stock, codes)
    return float(max((ref_text - got_text).abs().max(), (ref_audio - got_audio).abs().max()))


def export_checkpoint(cfg: "Config", source: str, target: Path, tolerance: float = 1e-5) -> Path:
    """Copy the model named by ``source`` to ``target`` in Kyutai's stock format and verify the
    copy with moshi's loader; returns the target folder."""
    from components.model.registry import resolve_model

    folder = resolve_model(cfg, source)
    loaded = load_checkpoint(folder, cfg)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, target / name)
    diff = same_logits(target, loaded.lm)
    if diff > tolerance:
        raise RuntimeError(f"exported checkpoint at {target} gives logits {diff:.2e} away from "
                           "the model it was exported from")
    return target


def import_checkpoint(cfg: "Config", source: str, alias: str | None = None) -> str:
    """Verify a stock checkpoint folder (local or s3://) and register it as a new version of
    ``cfg.model.registered_name``; returns the version. A folder without our identity file (a
    Kyutai release) gets one computed from its files."""
    from components.model.registry import register_model

    folder = local_checkpoint_dir(source, cfg)
    loaded = load_checkpoint(folder, cfg)
    if not (folder / IDENTITY_NAME).is_file():  # stock release: record what we computed
        staged = Path(cfg.model.cache_dir) / f"import-{loaded.identity.weights_sha256[:16]}"
        staged.mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            if path.is_file():
                shutil.copy2(path, staged / path.name)
        (staged / IDENTITY_NAME).write_text(json.dumps(loaded.identity.to_dict(), indent=2))
        folder = staged
    return register_model(cfg, folder, metrics={}, params={"imported_from": str(source)},
                          alias=alias, run_name=f"import {Path(str(source)).name}",
                          tags={"origin": "import"})
