"""The embedded Mimi codec: it carries signal on every level, streaming == whole encode, identity.

Speech comes from the simulated world's piper voices (cached on disk after the first run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from components.common.audio import resample
from components.common.config import load_config
from components.streams import build_codec as B
from components.streams.codec import (
    EMBEDDED_ASSET,
    EMBEDDED_CONFIG,
    FRAME_SIZE,
    SAMPLE_RATE,
    Codec,
    build_mimi,
    codec_hash,
    embedded_codec,
    load_codec,
)

SPEECH_DBFS = -35.0  # frames above this RMS are "speech" frames


@pytest.fixture(scope="module")
def voices() -> B._Voices:
    return B._Voices()


@pytest.fixture(scope="module")
def clips(voices: B._Voices) -> dict[str, np.ndarray]:
    """Two different utterances (one per voice) at 24 kHz."""
    return {
        "user": voices.say("user", "How much is the Unlimited Plus plan?"),
        "model": voices.say("model", "Unlimited Plus is 65 dollars per month for one line, before taxes."),
    }


@pytest.fixture(scope="module")
def speech(clips: dict[str, np.ndarray]) -> np.ndarray:
    """~6 s: the user's question, a pause, the model's reply, with the simulator's noise floor."""
    gap = np.zeros(int(0.5 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([clips["user"], gap, clips["model"]])
    floor = np.random.default_rng(0).standard_normal(audio.shape[0]).astype(np.float32) * 10 ** (-70 / 20)
    return audio + floor


def speech_mask(audio: np.ndarray, n_frames: int) -> np.ndarray:
    x = np.pad(audio, (0, n_frames * FRAME_SIZE - audio.shape[0]))
    rms = np.sqrt((x.reshape(n_frames, FRAME_SIZE) ** 2).mean(1) + 1e-20)
    return 20 * np.log10(rms) > SPEECH_DBFS


def entropy_bits(codes: np.ndarray) -> float:
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


# ------------------------------------------------------------------------------ the asset


def test_asset_is_small_and_identified() -> None:
    codec = embedded_codec(8)
    size = EMBEDDED_ASSET.stat().st_size
    assert size <= 8_000_000
    assert codec.hash == codec_hash(EMBEDDED_ASSET.read_bytes())
    assert codec.hash.startswith("mimi-") and len(codec.hash) == 5 + 16
    facts = json.loads((EMBEDDED_ASSET.parent / B.FACTS_NAME).read_text())
    assert facts["hash"] == codec.hash  # the recorded facts describe the shipped file
    assert json.loads(EMBEDDED_CONFIG.read_text()) == B.EMBEDDED_MIMI_CONFIG
    assert (codec.card, codec.total_codebooks, codec.num_codebooks) == (256, 8, 8)
    assert (codec.sample_rate, codec.frame_rate, codec.frame_size) == (24000, 12.5, 1920)
    # frozen
    assert not codec.mimi.training
    assert not any(p.requires_grad for p in codec.mimi.parameters())
    # every level initialised: no all-zero codebook, distinct entries
    for rvq in (codec.mimi.quantizer.rvq_first, codec.mimi.quantizer.rvq_rest):
        for layer in rvq.vq.layers:
            emb = layer._codebook.embedding
            assert bool(layer._codebook._initialized.item())
            assert torch.unique(emb, dim=0).shape[0] == 256


# ------------------------------------------------------------------------ codes, per level


@pytest.mark.parametrize("q", [4, 8])
def test_codes_vary_on_every_level(q: int, speech: np.ndarray) -> None:
    codec = embedded_codec(q)
    codes = codec.encode(speech, SAMPLE_RATE)
    assert codes.dtype == np.int64
    assert codes.shape == (q, math.ceil(speech.shape[0] / FRAME_SIZE))
    assert codes.min() >= 0 and codes.max() < codec.card
    mask = speech_mask(speech, codes.shape[1])
    assert mask.sum() >= 40
    report = []
    for lv in range(q):
        sp = codes[lv, mask]
        distinct, bits = np.unique(sp).size, entropy_bits(sp)
        report.append(f"level {lv}: {distinct} distinct, {bits:.2f} bits")
        assert distinct >= 16, report[-1]
        assert bits >= 3.0, report[-1]
    print(f"q={q}, {int(mask.sum())} speech frames: " + "; ".join(report))


def test_fewer_codebooks_are_a_prefix(speech: np.ndarray) -> None:
    eight = embedded_codec(8).encode(speech, SAMPLE_RATE)
    four = embedded_codec(4).encode(speech, SAMPLE_RATE)
    np.testing.assert_array_equal(four, eight[:4])


def test_speech_and_silence_encode_differently(speech: np.ndarray) -> None:
    codec = embedded_codec(8)
    codes = codec.encode(speech, SAMPLE_RATE)
    mask = speech_mask(speech, codes.shape[1])
    floor = np.random.default_rng(1).standard_normal(4 * SAMPLE_RATE).astype(np.float32) * 10 ** (-70 / 20)
    for name, silence in (("zeros", np.zeros(4 * SAMPLE_RATE, np.float32)), ("noise floor", floor)):
        sil = codec.encode(silence, SAMPLE_RATE)[:, 13:]  # past the first second (start-up)
        for lv in range(codec.num_codebooks):
            vals, counts = np.unique(sil[lv], return_counts=True)
            code = vals[counts.argmax()]
            purity = counts.max() / counts.sum()
            shared = float((codes[lv, mask] == code).mean())
            assert purity >= 0.9, (name, lv, purity)  # silence: one code per level
            assert shared <= 0.2, (name, lv, shared)  # speech: mostly not that code


def test_different_utterances_differ_and_same_is_identical(clips: dict[str, np.ndarray]) -> None:
    codec = embedded_codec(8)
    a = codec.encode(clips["user"], SAMPLE_RATE)
    b = codec.encode(clips["model"], SAMPLE_RATE)
    n = min(a.shape[1], b.shape[1])
    for lv in range(codec.num_codebooks):
        assert (a[lv, :n] == b[lv, :n]).mean() < 0.3, lv
    np.testing.assert_array_equal(a, codec.encode(clips["user"], SAMPLE_RATE))


# --------------------------------------------------------------------- streaming == whole


def test_streaming_encoder_gives_the_encode_codes(speech: np.ndarray) -> None:
    codec = embedded_codec(8)
    clip = speech[: 5 * SAMPLE_RATE]
    whole = codec.encode(clip, SAMPLE_RATE)
    assert whole.shape[1] == math.ceil(clip.shape[0] / FRAME_SIZE)
    padded = np.pad(clip, (0, whole.shape[1] * FRAME_SIZE - clip.shape[0]))
    # two encoders open at once (two live sessions): each has its own streaming state
    with codec.stream_encoder() as enc, codec.stream_encoder() as other:
        streamed = []
        for t in range(whole.shape[1]):
            frame = padded[t * FRAME_SIZE : (t + 1) * FRAME_SIZE]
            streamed.append(enc.push(frame))
            other.push(np.zeros(FRAME_SIZE, np.float32))
    np.testing.assert_array_equal(np.stack(streamed, axis=1), whole)


def test_encode_resamples_and_checks_input(clips: dict[str, np.ndarray]) -> None:
    codec = embedded_codec(4)
    at16k = resample(clips["user"], SAMPLE_RATE, 16000)
    np.testing.assert_array_equal(codec.encode(at16k, 16000),
                                  codec.encode(resample(at16k, 16000, SAMPLE_RATE), SAMPLE_RATE))
    assert codec.encode(np.zeros(0, np.float32), SAMPLE_RATE).shape == (4, 0)
    assert codec.encode(np.zeros(1, np.float32), SAMPLE_RATE).shape == (4, 1)
    with pytest.raises(ValueError):
        codec.encode(np.zeros((2, 100), np.float32), SAMPLE_RATE)
    with codec.stream_encoder() as enc, pytest.raises(ValueError):
        enc.push(np.zeros(FRAME_SIZE - 1, np.float32))


def test_decode_and_stream_decoder(speech: np.ndarray) -> None:
    codec = embedded_codec(8)
    codes = codec.encode(speech[: 2 * SAMPLE_RATE], SAMPLE_RATE)
    audio = codec.decode(codes)
    assert audio.dtype == np.float32 and audio.shape == (codes.shape[1] * FRAME_SIZE,)
    assert np.isfinite(audio).all()
    with codec.stream_decoder() as dec:
        frames = [dec.push(codes[:, t]) for t in range(codes.shape[1])]
    assert all(f.shape == (FRAME_SIZE,) and np.isfinite(f).all() for f in frames)
    with pytest.raises(ValueError):
        codec.decode(codes[:4])


# ------------------------------------------------------------- loading and round trips


def test_save_load_round_trip_through_get_mimi(tmp_path: Path, speech: np.ndarray) -> None:
    codec = embedded_codec(8)
    state = {k: v.contiguous() for k, v in codec.mimi.state_dict().items()}
    path = tmp_path / "mimi.safetensors"
    save_file(state, str(path))
    again = build_mimi(path, json.loads(EMBEDDED_CONFIG.read_text()), 8)
    for mine, theirs in zip(codec.mimi.quantizer.rvq_rest.vq.layers, again.quantizer.rvq_rest.vq.layers):
        assert torch.equal(mine._codebook.embedding, theirs._codebook.embedding)
    reloaded = Codec.from_mimi(again, weights_bytes=path.read_bytes(),
                               mimi_config=json.loads(EMBEDDED_CONFIG.read_text()))
    np.testing.assert_array_equal(reloaded.encode(speech, SAMPLE_RATE), codec.encode(speech, SAMPLE_RATE))


def test_load_codec_from_config(tmp_path: Path) -> None:
    cfg = load_config("ci", overrides={"streams.num_codebooks": 4, "streams.cache_dir": str(tmp_path)})
    codec = load_codec(cfg)
    assert codec is load_codec(cfg)  # cached in-process
    assert codec.num_codebooks == 4 and codec.hash == embedded_codec(8).hash
    by_path = load_codec(load_config("ci", overrides={
        "streams.num_codebooks": 4, "streams.codec_source": str(EMBEDDED_ASSET),
        "streams.codec_config": str(EMBEDDED_CONFIG)}))
    assert by_path.hash == codec.hash and by_path.mimi_config == codec.mimi_config
    with pytest.raises(ValueError, match="codebooks"):
        load_codec(load_config("ci", overrides={"streams.num_codebooks": 9}))


@pytest.mark.integration
def test_load_codec_from_s3(store, services_config, tmp_path: Path) -> None:  # noqa: ANN001
    store.put_bytes("codec/mimi.safetensors", EMBEDDED_ASSET.read_bytes())
    store.put_bytes("codec/mimi.json", EMBEDDED_CONFIG.read_bytes())
    cfg = services_config.model_copy(deep=True)
    cfg.streams.codec_source = store.uri("codec/mimi.safetensors")
    cfg.streams.codec_config = store.uri("codec/mimi.json")
    cfg.streams.cache_dir = str(tmp_path)
    cfg.streams.num_codebooks = 2
    codec = load_codec(cfg)
    assert codec.hash == embedded_codec(8).hash and codec.num_codebooks == 2


# ---------------------------------------------------------------------- the builder


def test_build_is_deterministic(tmp_path: Path, voices: B._Voices) -> None:
    params = B.BuildParams(frames=300, kmeans_iters=5, channel_s=30.0)
    one = B.build(params, tmp_path / "one", progress=False, voices=voices)
    two = B.build(params, tmp_path / "two", progress=False, voices=voices)
    assert one.weights.read_bytes() == two.weights.read_bytes()
    assert one.hash == two.hash and one.frames >= 300
    assert [lv["used"] for lv in one.levels][:2] == [256, 256]
    # the built file is what moshi's loader reads, with the k-means centroids in place
    codec = Codec.from_files(one.weights, json.loads(one.config.read_text()), 8)
    assert not torch.equal(codec.mimi.quantizer.rvq_first.vq.layers[0]._codebook.embedding,
                           torch.zeros(256, 64))


def test_kmeans_is_deterministic_and_uses_every_entry() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(500, 8, generator=g), torch.zeros(300, 8)])  # a block of "silence"
    c1, n1 = B.kmeans(x, 64, 10, seed=3)
    c2, n2 = B.kmeans(x, 64, 10, seed=3)
    assert torch.equal(c1, c2) and torch.equal(n1, n2)
    assert int((n1 > 0).sum()) == 64
    assert int(n1.sum()) == 800
