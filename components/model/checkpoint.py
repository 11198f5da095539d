"""Checkpoints in Kyutai's stock format, so the models people train here load elsewhere.

A checkpoint is a folder::

    config.json          LMModel kwargs + moshi_name / mimi_name / tokenizer_name /
                         mimi_config_name + model_id (our identity fields): Kyutai's layout
    model.safetensors    the LM's weights, fp32 (LoRA merged)
    tokenizer.model      the SentencePiece text tokenizer
    mimi.safetensors     the Mimi codec's weights (byte-identical to the codec's own file, so its
                         content hash survives the round trip)
    mimi_config.json     the Mimi config (moshi.models.loaders._mimi_config's shape)
    duplexalign.json     ModelIdentity: what datasets and serving check before using the model

moshi's loader reads it with no network: ``CheckpointInfo.from_hf_repo`` downloads from the Hub
only for names given as plain strings; every file is passed to it as a ``Path`` here (see
:func:`stock_checkpoint_info`), which ``hf_get`` returns untouched.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models

import copy
import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel
from moshi.modules.lora import LoRALinear, replace_lora_with_linear
from safetensors.torch import save_file

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config
    from components.common.storage import ObjectStore
    from components.streams.codec import Codec
    from components.streams.tokenizer import TextTokenizer

MOSHI_NAME = "model.safetensors"
MIMI_NAME = "mimi.safetensors"
TOKENIZER_NAME = "tokenizer.model"
MIMI_CONFIG_NAME = "mimi_config.json"
CONFIG_NAME = "config.json"
IDENTITY_NAME = "duplexalign.json"
CHECKPOINT_FILES = (CONFIG_NAME, MOSHI_NAME, TOKENIZER_NAME, MIMI_NAME, MIMI_CONFIG_NAME,
                    IDENTITY_NAME)

# Keys of config.json that moshi's CheckpointInfo pops before the rest goes to LMModel.
_LOADER_KEYS = ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name",
                "model_type", "lm_gen_config", "tts_config", "stt_config", "model_id")
# LoRA switches of get_moshi_lm: a merged checkpoint must not ask the loader to add LoRA again.
_LORA_KEYS = ("lora", "lora_rank", "lora_scaling")


@dataclass
class ModelIdentity:
    """What a model was trained with: the stream format it speaks and where it came from."""

    tokenizer_hash: str
    codec_hash: str
    num_codebooks: int
    size: str
    weights_sha256: str
    version: str | None = None
    parent: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelIdentity":
        known = {k: data[k] for k in ("tokenizer_hash", "codec_hash", "num_codebooks", "size",
                                      "weights_sha256", "version", "parent") if k in data}
        extra = dict(data.get("extra") or {})
        extra.update({k: v for k, v in data.items() if k not in known and k != "extra"})
        return cls(**known, extra=extra)


@dataclass
class LoadedModel:
    lm: LMModel
    lm_kwargs: dict[str, Any]
    tokenizer: "TextTokenizer"
    codec: "Codec"
    identity: ModelIdentity
    path: Path


# --------------------------------------------------------------------------------------------
# Hashes (the same definitions as components/streams: "spm-"/"mimi-" + sha256[:16] of the file)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_hash_of(data: bytes) -> str:
    return "spm-" + hashlib.sha256(data).hexdigest()[:16]


def codec_hash_of(data: bytes) -> str:
    return "mimi-" + hashlib.sha256(data).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Save


def merged_lm(lm: LMModel) -> LMModel:
    """The LM with every moshi LoRA layer folded into a plain Linear (W + s·B·A), on a copy: the
    caller's (trainable) LoRA model is left as it is. Without LoRA layers, ``lm`` itself."""
    loras = [m for m in lm.modules() if isinstance(m, LoRALinear)]
    if not loras:
        return lm
    for m in loras:
        # moshi's replace_lora_with_linear builds bias-free Linears: a bias would be lost.
        if m.frozen_W.bias is not None:
            raise ValueError("cannot merge a LoRA layer whose frozen Linear has a bias")
    merged = copy.deepcopy(lm)
    with torch.no_grad():
        replace_lora_with_linear(merged)
    # As moshi's loader returns it: every parameter trainable. (Not cosmetic: on CPU, torch picks
    # another matmul kernel for a weight that requires grad, even under no_grad, and the logits
    # then differ in the last bit from the loaded model's.)
    for p in merged.parameters():
        p.requires_grad_(True)
    return merged


def lm_state_fp32(lm: LMModel) -> dict[str, torch.Tensor]:
    """State dict of the merged LM in fp32, contiguous, each tensor its own storage (safetensors
    refuses shared storage)."""
    state = merged_lm(lm).state_dict()
    return {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
            .contiguous().clone() for k, v in state.items()}


def stock_config(lm_kwargs: dict[str, Any], identity: ModelIdentity | None) -> dict[str, Any]:
    """config.json: the LM kwargs (without LoRA switches: weights are merged) + file names."""
    kwargs = {k: v for k, v in lm_kwargs.items() if k not in _LORA_KEYS and k not in _LOADER_KEYS}
    config: dict[str, Any] = json.loads(json.dumps(kwargs))  # plain JSON types only
    config.update({
        "moshi_name": MOSHI_NAME,
        "mimi_name": MIMI_NAME,
        "tokenizer_name": TOKENIZER_NAME,
        "mimi_config_name": MIMI_CONFIG_NAME,
        "model_type": "moshi",
    })
    if identity is not None:
        config["model_id"] = identity.to_dict()
    return config


def save_checkpoint_files(
    lm: LMModel,
    lm_kwargs: dict[str, Any],
    *,
    tokenizer_bytes: bytes,
    mimi_weights_bytes: bytes,
    mimi_config: dict[str, Any],
    out_dir: str | Path,
    size: str,
    version: str | None = None,
    parent: str | None = None,
    extra: dict[str, Any] | None = None,
) -> ModelIdentity:
    """Write a checkpoint folder from raw parts (what :func:`save_checkpoint` uses).

    Files go to a temporary sibling folder that is renamed into place at the end, so a crash
    never leaves a half-written checkpoint that looks complete."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(lm_state_fp32(lm), str(tmp / MOSHI_NAME))
        (tmp / TOKENIZER_NAME).write_bytes(tokenizer_bytes)
        (tmp / MIMI_NAME).write_bytes(mimi_weights_bytes)
        (tmp / MIMI_CONFIG_NAME).write_text(json.dumps(mimi_config, indent=2, sort_keys=True))
        identity = ModelIdentity(
            tokenizer_hash=tokenizer_hash_of(tokenizer_bytes),
            codec_hash=codec_hash_of(mimi_weights_bytes),
            num_codebooks=int(lm_kwargs["dep_q"]),
            size=size,
            weights_sha256=sha256_file(tmp / MOSHI_NAME),
            version=version,
            parent=parent,
            extra=dict(extra or {}),
        )
        (tmp / CONFIG_NAME).write_text(json.dumps(stock_config(lm_kwargs, identity), indent=2))
        (tmp / IDENTITY_NAME).write_text(json.dumps(identity.to_dict(), indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return identity


def save_checkpoint(
    lm: LMModel,
    lm_kwargs: dict[str, Any],
    tokenizer: "TextTokenizer",
    codec: "Codec",
    out_dir: str | Path,
    identity_extra: dict[str, Any] | None = None,
) -> ModelIdentity:
    """Export ``lm`` with its tokenizer and codec in Kyutai's stock format (LoRA merged).

    ``identity_extra`` may set ``size``, ``version``, ``parent``; other keys are kept in the
    identity's ``extra`` (e.g. the bootstrap's content hash)."""
    if codec.num_codebooks != int(lm_kwargs["dep_q"]):
        raise ValueError(f"the codec runs {codec.num_codebooks} codebooks, the LM predicts "
                         f"{lm_kwargs['dep_q']}: they must match")
    extra = dict(identity_extra or {})
    size = str(extra.pop("size", "custom"))
    version = extra.pop("version", None)
    parent = extra.pop("parent", None)
    identity = save_checkpoint_files(
        lm, lm_kwargs,
        tokenizer_bytes=tokenizer.model_bytes,
        mimi_weights_bytes=codec.weights_bytes,
        # None = moshi's default Mimi config (Kyutai's Mimi): written out all the same, so the
        # folder never depends on the defaults of the moshi version that reads it
        mimi_config=codec.mimi_config if codec.mimi_config is not None else loaders._mimi_config,
        out_dir=out_dir, size=size, version=version, parent=parent, extra=extra,
    )
    for what, expected, actual in (("tokenizer", tokenizer.hash, identity.tokenizer_hash),
                                   ("codec", codec.hash, identity.codec_hash)):
        if expected != actual:  # the hash definitions drifted apart: fail loudly, not later
            raise ValueError(f"{what} hash {expected} differs from the hash of the file written "
                             f"({actual}); components/streams and the checkpoint disagree")
    return identity


# --------------------------------------------------------------------------------------------
# Load


def stock_checkpoint_info(folder: str | Path) -> loaders.CheckpointInfo:
    """moshi's ``CheckpointInfo`` for a local checkpoint folder, with no network access.

    ``from_hf_repo`` only downloads names passed as strings; every file is given as a ``Path``.
    Works for our folders and for Kyutai's own (their config.json names the files; without a
    config.json, the moshiko defaults are assumed, as moshi does).
    """
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    raw = json.loads(config_path.read_text()) if config_path.is_file() else {}
    mimi_config_name = raw.get("mimi_config_name")
    return loaders.CheckpointInfo.from_hf_repo(
        "local",  # never used: every file below is a Path
        moshi_weights=folder / raw.get("moshi_name", loaders.MOSHI_NAME),
        mimi_weights=folder / raw.get("mimi_name", loaders.MIMI_NAME),
        tokenizer=folder / raw.get("tokenizer_name", loaders.TEXT_TOKENIZER_NAME),
        config_path=config_path if config_path.is_file() else None,
        mimi_config_path=folder / mimi_config_name if mimi_config_name else None,
    )


def read_identity(folder: str | Path) -> ModelIdentity | None:
    path = Path(folder) / IDENTITY_NAME
    return ModelIdentity.from_dict(json.loads(path.read_text())) if path.is_file() else None


def _s3_cache_dir(uri: str, cfg: "Config") -> Path:
    """An s3:// checkpoint folder, downloaded once (see storage.cached_s3_folder)."""
    from components.common.storage import cached_s3_folder

    return cached_s3_folder(uri, cfg.storage, Path(cfg.model.cache_dir), CONFIG_NAME)


def local_checkpoint_dir(path_or_uri: str | Path, cfg: "Config | None" = None) -> Path:
    """A local folder for a checkpoint given as a folder or an s3:// URI (downloaded once)."""
    text = str(path_or_uri)
    if text.startswith("s3://"):
        if cfg is None:
            raise ValueError(f"loading {text} needs a Config (storage and model.cache_dir)")
        return _s3_cache_dir(text, cfg)
    folder = Path(text).expanduser()
    if not (folder / MOSHI_NAME).is_file() and not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (no {CONFIG_NAME})")
    return folder


def _lm_kwargs_of(info: loaders.CheckpointInfo) -> dict[str, Any]:
    return dict(info.lm_config) if info.lm_config is not None else copy.deepcopy(loaders._lm_kwargs)


def load_checkpoint(
    path_or_uri: str | Path,
    cfg: "Config | None" = None,
    dtype: torch.dtype = torch.float32,
    verify_weights: bool = True,
) -> LoadedModel:
    """Load a checkpoint folder (ours or Kyutai's) through moshi's own loader.

    The tokenizer and codec files are checked against the hashes in duplexalign.json (a model
    must never be paired with a stream format it was not trained on); ``verify_weights`` also
    re-hashes model.safetensors against the recorded weights_sha256. A folder without
    duplexalign.json (a stock Kyutai checkpoint) gets its identity computed from its files.
    """
    from components.streams.codec import Codec
    from components.streams.tokenizer import TextTokenizer, TokenizerMismatch

    folder = local_checkpoint_dir(path_or_uri, cfg)
    info = stock_checkpoint_info(folder)
    tokenizer_bytes = Path(info.tokenizer).read_bytes()
    mimi_bytes = Path(info.mimi_weights).read_bytes()
    lm_kwargs = _lm_kwargs_of(info)
    recorded = read_identity(folder)
    weights_sha = None
    if recorded is None or verify_weights:
        weights_sha = sha256_file(Path(info.moshi_weights))
    if recorded is None:
        identity = ModelIdentity(
            tokenizer_hash=tokenizer_hash_of(tokenizer_bytes),
            codec_hash=codec_hash_of(mimi_bytes),
            num_codebooks=int(lm_kwargs["dep_q"]),
            size=str((info.model_id or {}).get("size", "imported")),
            weights_sha256=str(weights_sha),
        )
    else:
        identity = recorded
        actual_tok = tokenizer_hash_of(tokenizer_bytes)
        if actual_tok != identity.tokenizer_hash:
            raise TokenizerMismatch(
                f"checkpoint {folder}: {info.tokenizer.name} has hash {actual_tok}, but the model "
                f"was trained with tokenizer {identity.tokenizer_hash}")
        actual_codec = codec_hash_of(mimi_bytes)
        if actual_codec != identity.codec_hash:
            raise ValueError(
                f"checkpoint {folder}: {info.mimi_weights.name} has hash {actual_codec}, but the "
                f"model was trained with codec {identity.codec_hash}")
        if weights_sha is not None and weights_sha != identity.weights_sha256:
            raise ValueError(
                f"checkpoint {folder}: {info.moshi_weights.name} has sha256 {weights_sha[:12]}…, "
                f"duplexalign.json records {identity.weights_sha256[:12]}… (corrupt or replaced)")
    lm = info.get_moshi(device="cpu", dtype=dtype)
    mimi: MimiModel = info.get_mimi(device="cpu")
    tokenizer = TextTokenizer.from_bytes(tokenizer_bytes)
    codec = Codec.from_mimi(mimi, weights_bytes=mimi_bytes, mimi_config=info.mimi_config)
    return LoadedModel(lm=lm, lm_kwargs=lm_kwargs, tokenizer=tokenizer, codec=codec,
                       identity=identity, path=folder)


# --------------------------------------------------------------------------------------------
# Upload


def upload_checkpoint(store: "ObjectStore", local_dir: str | Path, prefix: str) -> str:
    """Upload a checkpoint folder under ``prefix`` of ``store``; returns its s3:// folder URI
    (what ``load_checkpoint`` and ``model.source`` accept). duplexalign.json goes last, so a
    reader that sees it sees a complete folder."""
    local = Path(local_dir)
    prefix = prefix.strip("/")
    files = sorted(p for p in local.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == IDENTITY_NAME)
    for path in files:
        rel = path.relative_to(local).as_posix()
        content_type = "application/json" if path.suffix == ".json" else "application/octet-stream"
        store.put_file(f"{prefix}/{rel}", path, content_type=content_type)
    return store.uri(prefix + "/")
