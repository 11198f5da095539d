"""Reference log-probs, computed once per (dataset version, reference weights, scoring) and
cached in the bucket, so a training run never holds a second model.

The policy starts from the reference checkpoint, so the reference log-probs are the policy's own
log-probs before its first update: they are computed with the freshly loaded policy, in eval
mode, with the precision training uses, over every kept pair (training and held-out), then
stored as one npz under ``train/reference-logps/<dataset version>/<key>.npz``. The key hashes the
reference's weights sha256 and everything that changes a score (stream, audio weight, length
normalisation, autocast dtype, the policy class): a new dataset version or a new reference
checkpoint is a new object, never a stale hit.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from components.common.storage import ObjectStore
from components.contract import Keys
from components.train.step import score
from components.train.types import PreferencePolicy, SequenceLogps

PREFIX = Keys.REFERENCE_LOGPS


def reference_key(dataset_version: str, reference_sha256: str, scoring: dict[str, Any]) -> str:
    body = json.dumps({"ref": reference_sha256, "scoring": scoring}, sort_keys=True)
    return (Keys.reference_logps_prefix(dataset_version)
            + f"{hashlib.sha256(body.encode()).hexdigest()[:24]}.npz")


@dataclass
class ReferenceLogps:
    """pair id → (chosen, rejected, |y_w|, |y_l|) of the reference model."""

    values: dict[str, tuple[float, float, float, float]]
    key: str
    cached: bool
    seconds: float

    def batch(self, pair_ids: Sequence[str]) -> SequenceLogps:
        rows = [self.values[i] for i in pair_ids]
        cols = torch.tensor(rows, dtype=torch.float32).T if rows else torch.zeros(4, 0)
        return SequenceLogps(cols[0].contiguous(), cols[1].contiguous(), cols[2].contiguous(),
                             cols[3].contiguous())

    def to_bytes(self) -> bytes:
        ids = list(self.values)
        arr = np.array([self.values[i] for i in ids], dtype=np.float64).reshape(len(ids), 4)
        buf = io.BytesIO()
        np.savez(buf, pair_ids=np.array(ids, dtype=np.str_), logps=arr)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> "ReferenceLogps":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            ids, arr = z["pair_ids"], z["logps"]
            values = {str(i): (float(row[0]), float(row[1]), float(row[2]), float(row[3]))
                      for i, row in zip(ids, arr)}
        return cls(values=values, key=key, cached=True, seconds=0.0)


def compute_reference(policy: PreferencePolicy, groups: Sequence[Iterable[Any]], batch_size: int,
                      *, autocast_dtype: torch.dtype | None = None, progress: bool = True
                      ) -> dict[str, tuple[float, float, float, float]]:
    """Score every pair once, without gradient, in batches of ``batch_size``, each group of
    ``groups`` batched on its own: the held-out pairs form their own group
    (``TrainData.reference_groups``), batched exactly as the held-out evaluation batches them, so
    at step 0 (policy = reference) their rewards are exactly 0 rather than the float noise of
    another padding."""
    values: dict[str, tuple[float, float, float, float]] = {}
    batch: list[Any] = []
    t0 = time.monotonic()

    def flush() -> None:
        collated = policy.collate(batch)
        out = score(policy, collated, autocast_dtype=autocast_dtype)
        for k, pid in enumerate(collated.pair_ids):
            values[pid] = (float(out.chosen[k]), float(out.rejected[k]), float(out.chosen_len[k]),
                           float(out.rejected_len[k]))
        batch.clear()
        if progress:
            print(f"[train] reference log-probs: {len(values)} pairs ({time.monotonic() - t0:.1f}s)",
                  file=sys.stderr, flush=True)

    for group in groups:
        for pair in group:
            batch.append(pair)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    return values


def reference_logps(store: ObjectStore | None, policy: PreferencePolicy,
                    groups: Sequence[Iterable[Any]], *,
                    dataset_version: str, reference_sha256: str, scoring: dict[str, Any],
                    batch_size: int, autocast_dtype: torch.dtype | None = None,
                    use_cache: bool = True, progress: bool = True) -> ReferenceLogps:
    """The cached reference log-probs for this (dataset, reference, scoring), computed and
    stored on a miss. ``store`` None or ``use_cache`` False: computed, not stored."""
    key = reference_key(dataset_version, reference_sha256, scoring)
    if store is not None and use_cache and store.exists(key):
        ref = ReferenceLogps.from_bytes(store.get_bytes(key), key)
        if progress:
            print(f"[train] reference log-probs: cached {key} ({len(ref.values)} pairs)",
                  file=sys.stderr, flush=True)
        return ref
    t0 = time.monotonic()
    values = compute_reference(policy, groups, batch_size, autocast_dtype=autocast_dtype,
                               progress=progress)
    ref = ReferenceLogps(values=values, key=key, cached=False, seconds=time.monotonic() - t0)
    if store is not None and use_cache:
        store.put_bytes(key, ref.to_bytes(), content_type="application/x-npz")
    return ref
