"""A separable synthetic preference set on the tiny LM's stream layout, stored as a real pairs
dataset (plus the resynthesize-style manifest naming each pair's serving model), and the tiny
checkpoint to train on."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

from pathlib import Path

import numpy as np

from components.common.stagekit import ManifestWriter
from components.common.storage import ObjectStore
from components.contract import PairDatasetManifest
from components.streams.pairset import PairTensors, write_dataset
from components.streams.tokenizer import EPAD_ID, PAD_ID

CHOSEN_TOKEN = 11  # every chosen reply says this word token, every rejected one REJECTED_TOKEN
REJECTED_TOKEN = 17


def synthetic_pairs(n: int, *, q: int = 4, frames: int = 24, card: int = 256, seed: int = 0,
                    types: tuple[str, ...] = ("content", "interruption", "silence")
                    ) -> list[PairTensors]:
    """``n`` pairs: shared random audio, PAD text, and in the window [8, 16) the chosen side says
    CHOSEN_TOKEN where the rejected side says REJECTED_TOKEN (EPAD before each): separable."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        codes = rng.integers(0, card, size=(1 + 2 * q, frames), dtype=np.int64).astype(np.int32)
        codes[0] = PAD_ID
        chosen, rejected = codes.copy(), codes.copy()
        for t in (9, 12, 14):
            chosen[0, t - 1], rejected[0, t - 1] = EPAD_ID, EPAD_ID
            chosen[0, t], rejected[0, t] = CHOSEN_TOKEN, REJECTED_TOKEN
        chosen[0, 20] = -1  # a NO_TOKEN frame outside the windows, as scrub leaves them
        out.append(PairTensors(pair_id=f"pair-{seed}-{i:03d}", type=types[i % len(types)],
                               chosen=chosen, rejected=rejected,
                               windows=np.array([8, 16, 8, 16], dtype=np.int32)))
    return out


def store_dataset(store: ObjectStore, pairs: list[PairTensors], *, tokenizer_hash: str,
                  codec_hash: str, serving: dict[str, str] | str, q: int = 4,
                  context: int = 64) -> PairDatasetManifest:
    """Write ``pairs`` as a dataset whose input manifest says which model served each pair."""
    writer = ManifestWriter(store, "resynthesize", None)
    for p in pairs:
        version = serving if isinstance(serving, str) else serving[p.pair_id]
        writer.add_item({"pair": {"pair_id": p.pair_id, "serving_model_version": version}})
    input_id = writer.close({"synthetic": True}).manifest_id
    return write_dataset(store, pairs, input_manifest_id=input_id, tokenizer_hash=tokenizer_hash,
                         codec_hash=codec_hash, num_codebooks=q, context_frames=context,
                         trailing_pad_frames=0, pairs_per_shard=8)


def tiny_checkpoint(folder: Path, tokenizer, codec, seed: int = 0) -> Path:
    from components.model.checkpoint import save_checkpoint
    from components.model.spec import build_lm, lm_kwargs
    from components.streams.interleave import StreamLayout

    layout = StreamLayout(num_codebooks=codec.num_codebooks, text_card=tokenizer.text_card,
                          card=codec.card)
    kw = lm_kwargs("tiny", layout, context=64)
    save_checkpoint(build_lm(kw, seed=seed), kw, tokenizer, codec, folder, {"size": "tiny"})
    return folder
