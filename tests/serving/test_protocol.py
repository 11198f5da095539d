"""The WebSocket frame message round-trips; the raw/ writer's model-audio metadata is the
simulator's (so both sides of the data contract tag model.wav the same way)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from components.common import rawlog
from components.simulate.generate import MODEL_AUDIO_METADATA
from serving.engine import FRAME_SIZE
from serving.streaming import FRAME_HEADER, batch_name, decode_frame, encode_frame


def test_frame_message_round_trip() -> None:
    mc, uc = np.array([1, 2, 3, 2047]), np.array([5, 6, 7, 8])
    pcm = np.linspace(-1, 1, FRAME_SIZE, dtype=np.float32)
    data = encode_frame(41, 17, " héllo", mc, uc, pcm)
    assert len(data) == FRAME_HEADER.size + 4 * 8 + len(" héllo".encode()) + 4 * FRAME_SIZE
    frame, tok, piece, mc2, uc2, pcm2 = decode_frame(data)
    assert (frame, tok, piece) == (41, 17, " héllo")
    assert np.array_equal(mc2, mc) and np.array_equal(uc2, uc) and np.array_equal(pcm2, pcm)
    assert decode_frame(encode_frame(0, 3, "", mc, uc, None))[5] is None  # audio=0


def test_raw_batch_name_and_model_audio_metadata() -> None:
    day = datetime(2026, 11, 27, 23, 59, tzinfo=timezone.utc)
    assert batch_name("serve", "duplexalign/3", day) == "serve-duplexalign-3-20261127"
    assert batch_name("serve", "path:0123abcd", day) == "serve-path-0123abcd-20261127"
    assert rawlog.MODEL_AUDIO_METADATA == MODEL_AUDIO_METADATA
