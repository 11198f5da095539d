"""The pair-tensor dataset: written shard by shard, streamed back identical, deterministic ids."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from components.contract import Keys, PairDatasetManifest
from components.streams.pairset import (
    PairDataset,
    PairTensors,
    dataset_version,
    load_manifest,
    read_shard,
    shard_bytes,
    write_dataset,
)

Q = 4
SETTINGS = dict(input_manifest_id="resynthesize-abc", tokenizer_hash="spm-x", codec_hash="mimi-y",
                num_codebooks=Q, context_frames=256, trailing_pad_frames=4)


def make_pairs(n: int, seed: int = 0) -> list[PairTensors]:
    rng = np.random.default_rng(seed)
    types = ("content", "interruption", "silence")
    out = []
    for i in range(n):
        t = int(rng.integers(20, 90))
        chosen = rng.integers(-1, 256, size=(1 + 2 * Q, t)).astype(np.int32)
        rejected = chosen.copy()
        rejected[0, t // 2:] = rng.integers(0, 1000, size=t - t // 2)
        lo = int(rng.integers(0, t // 2))
        windows = np.array([lo, t, lo, int(rng.integers(lo + 1, t + 1))], np.int32)
        out.append(PairTensors(pair_id=f"{i:024x}", type=types[i % 3], chosen=chosen,
                               rejected=rejected, windows=windows))
    return out


def same(a: PairTensors, b: PairTensors) -> bool:
    return (a.pair_id == b.pair_id and a.type == b.type and a.chosen.dtype == b.chosen.dtype == np.int32
            and np.array_equal(a.chosen, b.chosen) and np.array_equal(a.rejected, b.rejected)
            and np.array_equal(a.windows, b.windows))


def test_shard_bytes_are_deterministic_and_round_trip():
    pairs = make_pairs(5)
    data = shard_bytes(pairs)
    assert data == shard_bytes(make_pairs(5))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # no wall-clock time in the archive
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert {"pair_ids.npy", "types.npy", "windows.npy", "chosen_4.npy", "rejected_0.npy"} \
            <= set(zf.namelist())
    back = read_shard(data)
    assert len(back) == 5 and all(same(a, b) for a, b in zip(pairs, back))


def test_validate_refuses_malformed_pairs():
    p = make_pairs(1)[0]
    bad = [PairTensors(p.pair_id, p.type, p.chosen, p.rejected[:, :-1], p.windows),
           PairTensors(p.pair_id, p.type, p.chosen, p.rejected, np.array([5, 5, 0, 1], np.int32)),
           PairTensors(p.pair_id, p.type, p.chosen, p.rejected,
                       np.array([0, p.frames + 1, 0, 1], np.int32)),
           PairTensors(p.pair_id, "other", p.chosen, p.rejected, p.windows)]
    for pair in bad:
        with pytest.raises(ValueError):
            pair.validate(Q)
    with pytest.raises(ValueError):
        p.validate(8)


@pytest.mark.integration
def test_write_streams_shards_and_reads_them_back_identical(store):
    pairs = make_pairs(10)
    shard_prefix = "datasets/pairs/shards/"

    def produce():
        for i, pair in enumerate(pairs):
            # Streaming: every full shard of 4 is uploaded before the next pair is even asked for.
            assert sum(1 for _ in store.list(shard_prefix)) == i // 4
            yield pair

    manifest = write_dataset(store, produce(), pairs_per_shard=4, **SETTINGS)
    assert isinstance(manifest, PairDatasetManifest) and manifest.version.startswith("pairs-")
    assert len(manifest.shards) == 3 and manifest.pairs == 10
    assert manifest.counts == {"content": 4, "interruption": 3, "silence": 3}
    assert manifest.tokenizer_hash == "spm-x" and manifest.codec_hash == "mimi-y"
    assert all(k.startswith(shard_prefix) for k in manifest.shards)
    assert load_manifest(store, manifest.version) == manifest
    assert store.exists(Keys.pair_dataset_manifest(manifest.version))

    dataset = PairDataset(store, manifest.version)
    assert len(dataset) == 10
    assert [len(s) for s in dataset.iter_shards()] == [4, 4, 2]
    back = list(dataset)
    assert len(back) == 10 and all(same(a, b) for a, b in zip(pairs, back))
    # A subset of shards (a held-out slice) and a seeded shuffle (a permutation, reproducible).
    held_out = PairDataset(store, manifest.version, shards=[2])
    assert len(held_out) == 2 and [p.pair_id for p in held_out] == [p.pair_id for p in pairs[8:]]
    order = [p.pair_id for p in dataset.iter(shuffle_seed=3)]
    assert sorted(order) == sorted(p.pair_id for p in pairs)
    assert order == [p.pair_id for p in dataset.iter(shuffle_seed=3)]

    # An identical rerun: the identical version, nothing new stored, the manifest not rewritten.
    objects = sorted(o.key for o in store.list("datasets/"))
    again = write_dataset(store, iter(make_pairs(10)), pairs_per_shard=4, **SETTINGS)
    assert again == manifest and sorted(o.key for o in store.list("datasets/")) == objects
    assert again.version == dataset_version(shards=manifest.shards, **SETTINGS)
    # Other settings or other tensors: another version.
    other = write_dataset(store, iter(make_pairs(10)), pairs_per_shard=4,
                          **{**SETTINGS, "trailing_pad_frames": 2})
    assert other.version != manifest.version and other.shards == manifest.shards
    changed = write_dataset(store, iter(make_pairs(10, seed=1)), pairs_per_shard=4, **SETTINGS)
    assert changed.version != manifest.version


@pytest.mark.integration
def test_reading_fetches_one_shard_at_a_time(store):
    manifest = write_dataset(store, iter(make_pairs(6)), pairs_per_shard=2, **SETTINGS)
    dataset = PairDataset(store, manifest.version)
    it = iter(dataset)
    first = next(it)
    # The last shard is gone: the pairs before it still stream; only reaching it fails.
    store.delete(manifest.shards[-1])
    got = [first.pair_id] + [next(it).pair_id for _ in range(3)]
    assert got == [f"{i:024x}" for i in range(4)]
    with pytest.raises(Exception):
        next(it)


@pytest.mark.integration
def test_duplicate_pair_ids_and_empty_datasets(store):
    pairs = make_pairs(2)
    with pytest.raises(ValueError):
        write_dataset(store, iter([pairs[0], pairs[1], pairs[0]]), **SETTINGS)
    empty = write_dataset(store, iter([]), **SETTINGS)
    assert empty.pairs == 0 and empty.shards == [] and list(PairDataset(store, empty.version)) == []
