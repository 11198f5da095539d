"""Reading one side of a logged conversation, whatever its audio layout (contract rules).

The stereo layout of the public Moshi fine-tuning format puts the model on the left channel and
the user on the right; the separate layout has one mono file per side.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from components.common.audio import decode_wav
from components.common.storage import ObjectStore
from components.contract import IngestedItem

Side = Literal["model", "user"]
_STEREO_CHANNEL = {"model": 0, "user": 1}


def channel_ref(item: IngestedItem, side: Side):
    return item.objects["audio.wav"] if item.audio_layout == "stereo" else item.objects[f"{side}.wav"]


def read_channel(store: ObjectStore, item: IngestedItem, side: Side) -> tuple[np.ndarray, int]:
    """One side's audio as float32 mono at the source rate, from the pinned object version."""
    ref = channel_ref(item, side)
    audio, rate = decode_wav(store.get_bytes(ref.key, version_id=ref.version_id))
    column = _STEREO_CHANNEL[side] if item.audio_layout == "stereo" else 0
    return np.ascontiguousarray(audio[:, column]), rate
