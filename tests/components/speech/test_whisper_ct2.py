"""The CTranslate2 -> openai-whisper converter: binary parser, exactness, caching, atomicity."""

from __future__ import annotations

import base64
import gzip
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper

from components.speech import whisper_ct2
from components.speech.whisper_ct2 import (
    apply_alignment_heads,
    convert_ct2_to_openai_whisper,
    parse_ct2_model_bin,
    read_ct2_model,
)

TINY_EN_PARAMS = 37_184_256  # OpenAI's published count for tiny.en


# ---------------------------------------------------------------- synthetic model.bin


def _str(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _var(name: str, arr: np.ndarray, code: int, raw: bytes | None = None) -> bytes:
    raw = arr.tobytes() if raw is None else raw
    head = _str(name) + struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape)
    return head + struct.pack("<BI", code, len(raw)) + raw


def _model_bin(variables: list[bytes], aliases: list[tuple[str, str]], version: int = 6) -> bytes:
    out = struct.pack("<I", version) + _str("WhisperSpec") + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables)) + b"".join(variables)
    out += struct.pack("<I", len(aliases)) + b"".join(_str(a) + _str(t) for a, t in aliases)
    return out


F32 = np.arange(6, dtype="<f4").reshape(2, 3) / 4
F16 = np.array([1.5, -2.25, 65504.0, 0.0], dtype="<f2")
I16 = np.array(6, dtype="<i2")  # a scalar, like */num_heads
I8 = np.array([-3, 7], dtype="i1")
I32 = np.array([[123456789, -5]], dtype="<i4")
BF16_VALUES = np.array([1.0, -0.5, 3.140625], dtype="<f4")  # exactly representable in bf16
BF16_RAW = (BF16_VALUES.view("<u4") >> 16).astype("<u2").tobytes()


def _synthetic() -> bytes:
    return _model_bin(
        [
            _var("encoder/conv1/weight", F32, 0),
            _var("decoder/embeddings/weight", F16, 4),
            _var("decoder/num_heads", I16, 2),
            _var("decoder/flags", I8, 1),
            _var("encoder/ids", I32, 3),
            _var("decoder/bf16", BF16_VALUES, 5, raw=BF16_RAW),
        ],
        [("decoder/projection/weight", "decoder/embeddings/weight"),
         ("decoder/proj_alias2", "decoder/projection/weight")],
    )


def test_parser_reads_every_dtype_and_resolves_aliases(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(_synthetic())
    ct2 = whisper_ct2._read_ct2(tmp_path)
    assert (ct2.binary_version, ct2.spec_name, ct2.spec_revision) == (6, "WhisperSpec", 3)
    v = read_ct2_model(tmp_path)
    np.testing.assert_array_equal(v["encoder/conv1/weight"], F32)
    assert v["encoder/conv1/weight"].dtype == np.float32
    np.testing.assert_array_equal(v["decoder/embeddings/weight"], F16)
    assert v["decoder/embeddings/weight"].dtype == np.float16
    assert v["decoder/num_heads"].shape == () and int(v["decoder/num_heads"]) == 6
    np.testing.assert_array_equal(v["decoder/flags"], I8)
    np.testing.assert_array_equal(v["encoder/ids"], I32)
    np.testing.assert_array_equal(v["decoder/bf16"], BF16_VALUES)  # bf16 widened exactly
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]
    assert v["decoder/proj_alias2"] is v["decoder/embeddings/weight"]  # alias of an alias


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-7], "truncated"),
        (lambda b: struct.pack("<I", 5) + b[4:], "binary version 5"),
        (lambda b: b + b"\0", "trailing bytes"),
    ],
)
def test_parser_rejects_malformed_files(mutate, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ct2_model_bin(mutate(_synthetic()))


def test_parser_rejects_size_mismatch_and_dangling_alias() -> None:
    bad_size = _model_bin([_var("x", F32, 0, raw=F32.tobytes()[:-4])], [])
    with pytest.raises(ValueError, match="needs 24 bytes"):
        parse_ct2_model_bin(bad_size)
    dangling = _model_bin([_var("x", F32, 0)], [("y", "missing")])
    with pytest.raises(ValueError, match="missing variable"):
        parse_ct2_model_bin(dangling)


# ---------------------------------------------------------------- real tiny.en


def test_converted_tiny_en_is_exact_and_strict_loads(tiny_en_checkpoint: Path,
                                                     tiny_en_ct2_dir: Path) -> None:
    model = whisper.load_model(str(tiny_en_checkpoint), device="cpu")  # strict load_state_dict
    assert sum(p.numel() for p in model.parameters()) == TINY_EN_PARAMS
    ck = torch.load(tiny_en_checkpoint, map_location="cpu", weights_only=True)
    assert ck["dims"] == {
        "n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6,
        "n_audio_layer": 4, "n_vocab": 51864, "n_text_ctx": 448, "n_text_state": 384,
        "n_text_head": 6, "n_text_layer": 4,
    }
    result = whisper.model.Whisper(whisper.model.ModelDimensions(**ck["dims"])).load_state_dict(
        ck["model_state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    sd = ck["model_state_dict"]
    assert all(t.dtype == torch.float16 for t in sd.values())  # stored precision kept
    # Lossless un-fusing: q/k/v rows of the fused CT2 matrix, k bias slot dropped.
    src = read_ct2_model(tiny_en_ct2_dir)
    fused = src["decoder/layer_2/self_attention/linear_0/weight"]
    for i, name in enumerate(("query", "key", "value")):
        np.testing.assert_array_equal(sd[f"decoder.blocks.2.attn.{name}.weight"].numpy(),
                                      fused[384 * i: 384 * (i + 1)])
    kv = src["decoder/layer_3/attention/linear_1/bias"]
    np.testing.assert_array_equal(sd["decoder.blocks.3.cross_attn.value.bias"].numpy(), kv[384:])
    np.testing.assert_array_equal(sd["decoder.token_embedding.weight"].numpy(),
                                  src["decoder/embeddings/weight"])


def test_alignment_heads_come_from_config_json(tiny_en_checkpoint: Path, tiny_en_ct2_dir: Path,
                                               tiny_en_model) -> None:
    pairs = json.loads((tiny_en_ct2_dir / "config.json").read_text())["alignment_heads"]
    ck = torch.load(tiny_en_checkpoint, map_location="cpu", mmap=True, weights_only=True)
    assert ck["alignment_heads"] == pairs
    # whisper.load_model(<path>) keeps the default heads (the buffer is not persistent) ...
    plain = whisper.load_model(str(tiny_en_checkpoint), device="cpu")
    default = plain.alignment_heads.to_dense()
    assert default[2:].all() and not default[:2].any()
    # ... so the converter's heads are applied on top; they equal OpenAI's tiny.en heads.
    assert apply_alignment_heads(plain, pairs)
    openai = np.frombuffer(gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS["tiny.en"])),
                           dtype=bool).reshape(4, 6)
    np.testing.assert_array_equal(plain.alignment_heads.to_dense().numpy(), openai)
    np.testing.assert_array_equal(tiny_en_model.alignment_heads.to_dense().numpy(), openai)


def test_second_conversion_is_a_cache_hit(tiny_en_checkpoint: Path, tiny_en_ct2_dir: Path) -> None:
    before = tiny_en_checkpoint.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = convert_ct2_to_openai_whisper(tiny_en_ct2_dir, tiny_en_checkpoint)
    assert again == tiny_en_checkpoint
    assert time.perf_counter() - t0 < 1.0
    assert tiny_en_checkpoint.stat().st_mtime_ns == before
    side = json.loads(Path(str(tiny_en_checkpoint) + ".json").read_text())
    assert side["source_sha256"] == whisper_ct2.ct2_content_sha256(tiny_en_ct2_dir)


def _linked_copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).symlink_to(f)
    return dst


def test_changed_config_reconverts_and_crash_leaves_no_half_file(
        tmp_path: Path, tiny_en_ct2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = _linked_copy(tiny_en_ct2_dir, tmp_path / "ct2")
    out = tmp_path / "out" / "tiny.pt"

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        convert_ct2_to_openai_whisper(model_dir, out)
    assert list(out.parent.iterdir()) == []  # no checkpoint, no temp file, no sidecar
    monkeypatch.undo()

    convert_ct2_to_openai_whisper(model_dir, out)
    config = json.loads((tiny_en_ct2_dir / "config.json").read_text())
    config["alignment_heads"] = [[3, 5]]
    (model_dir / "config.json").unlink()
    (model_dir / "config.json").write_text(json.dumps(config))
    convert_ct2_to_openai_whisper(model_dir, out)  # new content hash -> rewritten
    ck = torch.load(out, map_location="cpu", mmap=True, weights_only=True)
    assert ck["alignment_heads"] == [[3, 5]]
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.pt", "tiny.pt.json"]


def test_not_a_ct2_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model.bin"):
        convert_ct2_to_openai_whisper(tmp_path, tmp_path / "x.pt")
