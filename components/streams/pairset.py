"""Pair-tensor datasets: written once by the tokenize stage, streamed shard by shard by a trainer.

A dataset version is an immutable `PairDatasetManifest` (``datasets/pairs/<version>/manifest.json``)
naming content-addressed shards (``datasets/pairs/shards/<sha256>.npz``). Shard layout (one npz,
``n`` pairs, pair ``i`` in 0..n-1)::

    pair_ids        <U..  [n]        the PreferencePair ids, in dataset order
    types           <U..  [n]        "content" | "interruption" | "silence"
    windows         int32 [n, 4]     chosen lo, hi, rejected lo, hi (frames, [lo, hi))
    chosen_<i>      int32 [1+2q, T_i]
    rejected_<i>    int32 [1+2q, T_i] (same shape as chosen_<i>: one shared context)

Rows are text, q model codebooks, q user codebooks (`interleave.assemble`), undelayed, NO_TOKEN
(-1) where there is no input. The two sides of a pair have the same length and the same user
rows; a side's text is scored inside its window only.

Why this shape:

* streaming — `write_dataset` holds one shard of pairs at a time and uploads it when full;
  `PairDataset` fetches one shard at a time, so neither side ever holds the whole dataset;
* determinism — shards are written as zip archives with fixed entry timestamps (numpy's
  ``savez`` stamps the current time into every entry), so the same pairs give the same bytes,
  the same shard keys and the same version id: an identical rerun produces the identical
  dataset and uploads nothing new (identical shards are stored once);
* one version per (input, shards, stream identity, settings) — ``version`` = "pairs-" +
  sha256 of those [:24].
"""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.common.storage import ObjectStore
from components.contract import (
    PAIRS_PER_SHARD,
    SCHEMA_VERSION,
    Keys,
    PairDatasetManifest,
    canonical_json,
)

# Every zip entry gets this timestamp (zip's epoch): the bytes must not depend on the clock.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Deflate at level 1: codes are small integers in int32, so even the fastest level shrinks a
# shard several-fold; higher levels cost more CPU than they save in bytes here.
_COMPRESSLEVEL = 1
PAIR_TYPES = ("content", "interruption", "silence")


@dataclass(frozen=True)
class PairTensors:
    """One preference pair as the trainer consumes it."""

    pair_id: str
    type: str
    chosen: np.ndarray  # int32 [1 + 2q, T]
    rejected: np.ndarray  # int32 [1 + 2q, T]
    windows: np.ndarray  # int32 [4]: chosen lo, hi, rejected lo, hi

    @property
    def chosen_window(self) -> tuple[int, int]:
        return int(self.windows[0]), int(self.windows[1])

    @property
    def rejected_window(self) -> tuple[int, int]:
        return int(self.windows[2]), int(self.windows[3])

    @property
    def frames(self) -> int:
        return int(self.chosen.shape[1])

    @property
    def num_codebooks(self) -> int:
        return (int(self.chosen.shape[0]) - 1) // 2

    def validate(self, num_codebooks: int | None = None) -> None:
        """Raise ValueError unless the pair is well formed (shapes, dtypes, windows in range)."""
        c, r, w = self.chosen, self.rejected, np.asarray(self.windows)
        if c.ndim != 2 or c.shape[0] < 3 or c.shape[0] % 2 == 0:
            raise ValueError(f"{self.pair_id}: chosen is {c.shape}, expected [1 + 2q, T]")
        if r.shape != c.shape:
            raise ValueError(f"{self.pair_id}: rejected {r.shape} and chosen {c.shape} differ")
        if num_codebooks is not None and self.num_codebooks != num_codebooks:
            raise ValueError(f"{self.pair_id}: {self.num_codebooks} codebooks, dataset has "
                             f"{num_codebooks}")
        if self.type not in PAIR_TYPES:
            raise ValueError(f"{self.pair_id}: unknown pair type {self.type!r}")
        if w.shape != (4,):
            raise ValueError(f"{self.pair_id}: windows {w.shape}, expected [4]")
        for lo, hi in (w[:2], w[2:]):
            if not 0 <= lo < hi <= c.shape[1]:
                raise ValueError(f"{self.pair_id}: window [{lo}, {hi}) outside [0, {c.shape[1]})")


# ----------------------------------------------------------------------------- shards


def _add_array(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED,
                compresslevel=_COMPRESSLEVEL)


def shard_bytes(pairs: Sequence[PairTensors]) -> bytes:
    """The npz bytes of one shard (layout in the module docstring); deterministic."""
    if not pairs:
        raise ValueError("a shard holds at least one pair")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _add_array(zf, "pair_ids", np.array([p.pair_id for p in pairs], dtype=np.str_))
        _add_array(zf, "types", np.array([p.type for p in pairs], dtype=np.str_))
        _add_array(zf, "windows", np.stack([np.asarray(p.windows, np.int32) for p in pairs]))
        for i, p in enumerate(pairs):
            _add_array(zf, f"chosen_{i}", np.asarray(p.chosen, np.int32))
            _add_array(zf, f"rejected_{i}", np.asarray(p.rejected, np.int32))
    return buf.getvalue()


def read_shard(data: bytes) -> list[PairTensors]:
    """Inverse of `shard_bytes`."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        ids, types, windows = z["pair_ids"], z["types"], z["windows"]
        return [PairTensors(pair_id=str(ids[i]), type=str(types[i]), chosen=z[f"chosen_{i}"],
                            rejected=z[f"rejected_{i}"], windows=windows[i].copy())
                for i in range(len(ids))]


# ----------------------------------------------------------------------------- writing


def dataset_version(*, input_manifest_id: str, shards: Sequence[str], tokenizer_hash: str,
                    codec_hash: str, num_codebooks: int, context_frames: int,
                    trailing_pad_frames: int) -> str:
    """"pairs-" + sha256 of (input, shard keys, stream identity, settings)[:24]."""
    body = {"schema_version": SCHEMA_VERSION, "input": input_manifest_id, "shards": list(shards),
            "tokenizer": tokenizer_hash, "codec": codec_hash, "q": num_codebooks,
            "context": context_frames, "trailing_pad": trailing_pad_frames}
    return "pairs-" + hashlib.sha256(canonical_json(body).encode()).hexdigest()[:24]


def write_dataset(store: ObjectStore, pairs: Iterable[PairTensors], *, input_manifest_id: str,
                  tokenizer_hash: str, codec_hash: str, num_codebooks: int, context_frames: int,
                  trailing_pad_frames: int, pairs_per_shard: int = PAIRS_PER_SHARD
                  ) -> PairDatasetManifest:
    """Pack ``pairs`` (any iterable, consumed once, in order) into shards of ``pairs_per_shard``,
    upload each shard as soon as it is full (skipped when that content is already stored), and
    write the dataset manifest (once: an existing version is never rewritten). At most one shard
    of pairs is in memory. Pair ids must be unique."""
    if pairs_per_shard < 1:
        raise ValueError("pairs_per_shard must be >= 1")
    shards: list[str] = []
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    batch: list[PairTensors] = []

    def flush() -> None:
        data = shard_bytes(batch)
        key = Keys.pair_dataset_shard(hashlib.sha256(data).hexdigest())
        if not store.exists(key):
            store.put_bytes(key, data, content_type="application/x-npz")
        shards.append(key)
        batch.clear()

    for pair in pairs:
        pair.validate(num_codebooks)
        if pair.pair_id in seen:
            raise ValueError(f"pair {pair.pair_id} appears twice")
        seen.add(pair.pair_id)
        counts[pair.type] += 1
        batch.append(pair)
        if len(batch) >= pairs_per_shard:
            flush()
    if batch:
        flush()
    version = dataset_version(input_manifest_id=input_manifest_id, shards=shards,
                              tokenizer_hash=tokenizer_hash, codec_hash=codec_hash,
                              num_codebooks=num_codebooks, context_frames=context_frames,
                              trailing_pad_frames=trailing_pad_frames)
    key = Keys.pair_dataset_manifest(version)
    if store.exists(key):  # immutable: an identical rerun returns the stored one (its created_at)
        return load_manifest(store, version)
    manifest = PairDatasetManifest(
        version=version, input_manifest_id=input_manifest_id, tokenizer_hash=tokenizer_hash,
        codec_hash=codec_hash, num_codebooks=num_codebooks, context_frames=context_frames,
        trailing_pad_frames=trailing_pad_frames, shards=shards, pairs=sum(counts.values()),
        counts={t: counts.get(t, 0) for t in PAIR_TYPES})
    store.put_json(key, manifest.model_dump(mode="json"))
    return manifest


# ----------------------------------------------------------------------------- reading


def load_manifest(store: ObjectStore, version: str) -> PairDatasetManifest:
    return PairDatasetManifest.model_validate(store.get_json(Keys.pair_dataset_manifest(version)))


class PairDataset:
    """A dataset version, streamed shard by shard (one shard in memory at a time).

    ``shards`` selects a subset of the manifest's shards by index (e.g. a held-out slice for
    evaluation). Iterating yields `PairTensors` in dataset order; `iter(shuffle_seed=...)`
    shuffles the shard order and the pairs inside each shard (the usual streaming shuffle)."""

    def __init__(self, store: ObjectStore, version: str, *, shards: Sequence[int] | None = None):
        self.store = store
        self.manifest = load_manifest(store, version)
        n = len(self.manifest.shards)
        self.shard_indices = list(range(n)) if shards is None else [int(i) for i in shards]
        for i in self.shard_indices:
            if not 0 <= i < n:
                raise IndexError(f"shard {i} of a dataset with {n} shards")

    @property
    def version(self) -> str:
        return self.manifest.version

    def __len__(self) -> int:
        if len(self.shard_indices) == len(self.manifest.shards):
            return self.manifest.pairs
        # pairs_per_shard is not recorded: count a subset by reading its pair ids only
        return sum(len(self._pair_ids(i)) for i in self.shard_indices)

    def _pair_ids(self, index: int) -> Any:
        return self.labels(index)[0]

    def labels(self, index: int) -> tuple[Any, Any]:
        """The pair ids and types of shard ``index`` (an index into the manifest's shards),
        without decompressing its tensors (npz entries are read lazily)."""
        data = self.store.get_bytes(self.manifest.shards[index])
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return z["pair_ids"], z["types"]

    def shard(self, index: int) -> list[PairTensors]:
        """The pairs of shard ``index`` (an index into the manifest's shards)."""
        return read_shard(self.store.get_bytes(self.manifest.shards[index]))

    def iter_shards(self, shuffle_seed: int | None = None) -> Iterator[list[PairTensors]]:
        order = list(self.shard_indices)
        rng = random.Random(shuffle_seed) if shuffle_seed is not None else None
        if rng:
            rng.shuffle(order)
        for index in order:
            pairs = self.shard(index)
            if rng:
                rng.shuffle(pairs)
            yield pairs

    def iter(self, shuffle_seed: int | None = None) -> Iterator[PairTensors]:
        for pairs in self.iter_shards(shuffle_seed):
            yield from pairs

    def __iter__(self) -> Iterator[PairTensors]:
        return self.iter()
