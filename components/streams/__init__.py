"""The Moshi stream format, owned in one place: text tokenizer, interleaving, (codec.py) codec.

The codec is imported from `components.streams.codec` directly: it pulls in torch and the moshi
models, which the tokenizer and interleaving do not need.
"""

from components.streams.interleave import (
    FRAME_RATE,
    MOSHI_DELAYS_8,
    StreamLayout,
    assemble,
    delay,
    left_truncate,
    moshi_delays,
    split,
    start_frame,
    text_stream,
    undelay,
    words_from_text_stream,
)
from components.streams.tokenizer import (
    EPAD_ID,
    PAD_ID,
    TextTokenizer,
    TokenizerMismatch,
    load_tokenizer,
    require_tokenizer,
    train_world_tokenizer,
    world_corpus,
)

__all__ = [
    "EPAD_ID", "FRAME_RATE", "MOSHI_DELAYS_8", "PAD_ID", "StreamLayout", "TextTokenizer",
    "TokenizerMismatch", "assemble", "delay", "left_truncate", "load_tokenizer", "moshi_delays",
    "require_tokenizer", "split", "start_frame", "text_stream", "train_world_tokenizer", "undelay",
    "words_from_text_stream", "world_corpus",
]
