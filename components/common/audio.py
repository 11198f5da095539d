"""WAV handling shared by the stages: header inspection without loading, decoding, resampling.

Header inspection reads only the first bytes of an object, so ingest can validate a one-hour
conversation in constant memory; decoding loads a (short) conversation into float32 arrays.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

# Enough for RIFF + fmt + a few metadata chunks before "data" in every writer we have seen.
HEADER_PROBE_BYTES = 64 * 1024

_FORMAT_PCM = 1
_FORMAT_FLOAT = 3
_FORMAT_EXTENSIBLE = 0xFFFE


class AudioFormatError(ValueError):
    """The bytes are not a WAV we can use; the message says why, for a per-item reject."""


@dataclass(frozen=True)
class WavInfo:
    channels: int
    sample_rate: int
    bits_per_sample: int
    format_tag: int
    data_offset: int
    data_bytes: int  # as declared by the header
    frames: int  # as declared by the header

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.bits_per_sample // 8

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0

    def expected_size(self) -> int:
        return self.data_offset + self.data_bytes


def parse_wav_header(head: bytes) -> WavInfo:
    """Parse a RIFF/WAVE header from the first bytes of a file (not the whole file)."""
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        raise AudioFormatError("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    while pos + 8 <= len(head):
        chunk_id = head[pos : pos + 4]
        (size,) = struct.unpack("<I", head[pos + 4 : pos + 8])
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(head):
                raise AudioFormatError("truncated fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", head[body : body + 16])
            if tag == _FORMAT_EXTENSIBLE and size >= 40 and body + 26 <= len(head):
                (tag,) = struct.unpack("<H", head[body + 24 : body + 26])
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioFormatError("data chunk before fmt chunk")
            tag, channels, rate, bits = fmt
            if tag not in (_FORMAT_PCM, _FORMAT_FLOAT):
                raise AudioFormatError(f"unsupported WAV encoding (format tag {tag})")
            if channels < 1 or rate < 1 or bits not in (8, 16, 24, 32, 64):
                raise AudioFormatError(f"invalid fmt: {channels} ch, {rate} Hz, {bits} bit")
            frame_bytes = channels * bits // 8
            # Streaming writers leave 0 or 0xFFFFFFFF for an unknown length.
            declared = size if size not in (0, 0xFFFFFFFF) else -1
            frames = declared // frame_bytes if declared >= 0 else -1
            return WavInfo(channels, rate, bits, tag, body, declared, frames)
        pos = body + size + (size & 1)
    raise AudioFormatError("no data chunk in the first %d bytes" % len(head))


def check_wav_object(head: bytes, object_size: int) -> WavInfo:
    """Header + the object's real size → WavInfo, or an AudioFormatError naming the defect."""
    info = parse_wav_header(head)
    available = object_size - info.data_offset
    if info.data_bytes < 0:  # unknown length: trust the object size
        frames = max(available, 0) // info.frame_bytes
        info = WavInfo(info.channels, info.sample_rate, info.bits_per_sample, info.format_tag,
                       info.data_offset, frames * info.frame_bytes, frames)
    elif available < info.data_bytes:
        raise AudioFormatError(
            f"truncated: header declares {info.data_bytes} data bytes, object has {max(available, 0)}"
        )
    if info.frames <= 0:
        raise AudioFormatError("zero-length audio")
    return info


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """WAV bytes → (float32 array [frames, channels], sample rate)."""
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises its own error types
        raise AudioFormatError(f"cannot decode WAV: {exc}") from None
    return audio, int(rate)


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """float32 array [frames] or [frames, channels] → PCM16 WAV bytes."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def quantize_pcm16(audio: np.ndarray) -> np.ndarray:
    """Onto the grid a PCM16 WAV holds (x = k / 32768), so a stored WAV decodes to exactly the
    samples that were streamed or encoded (and encoding it again gives exactly the same codes)."""
    return (np.clip(np.round(audio * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Polyphase resampling along axis 0 (exact rational ratio, no drift over long audio)."""
    if src_rate == dst_rate:
        return audio.astype(np.float32, copy=False)
    ratio = Fraction(dst_rate, src_rate)
    out = resample_poly(audio, ratio.numerator, ratio.denominator, axis=0)
    return out.astype(np.float32, copy=False)


def mute_spans(audio: np.ndarray, sample_rate: int, spans: list[tuple[float, float]]) -> float:
    """Zero the samples inside each (start_s, end_s) span, in place; returns seconds muted."""
    muted = 0
    for start, end in spans:
        a = max(0, int(math.floor(start * sample_rate)))
        b = min(len(audio), int(math.ceil(end * sample_rate)))
        if b > a:
            audio[a:b] = 0.0
            muted += b - a
    return muted / sample_rate
