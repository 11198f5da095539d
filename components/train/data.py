"""Which pairs a training run sees, in which order: the on-policy filter, the held-out split and
a deterministic, resumable epoch order over a streamed pairs dataset.

* On-policy: a pair's rejected side is what some model version said; with ``train.on_policy``
  only pairs served by the policy's own version are kept (after a promotion, the new champion
  trains on its own mistakes). The version of each pair is read from the dataset's input
  manifest (resynthesize's items carry the PreferencePair) — never by loading pair tensors.
* Held-out: a pair is held out when sha256(seed, pair id) falls below ``heldout_fraction``:
  stable across runs and dataset versions (the same pair is never trained on in one round and
  held out in the next with the same seed), independent of order.
* Order: epoch e streams the dataset's shards in the order ``PairDataset.iter_shards`` gives for
  shuffle seed (seed, e), filtered; the data position is (epoch, pairs consumed). Resuming
  replays the same stream and skips what was consumed, so it needs no index of the dataset.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from components.common.stagekit import iter_items, load_manifest
from components.common.storage import ObjectStore
from components.streams.pairset import PairDataset, PairTensors


class NotEnoughPairs(ValueError):
    """Fewer pairs than ``train.min_pairs`` are left to train on."""


def _heldout_hash(pair_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"heldout:{seed}:{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(pair_id: str, fraction: float, seed: int) -> bool:
    return fraction > 0 and _heldout_hash(pair_id, seed) < fraction


def balance_timing(ids: list[str], type_of: dict[str, str], share: float,
                   seed: int) -> tuple[list[str], int]:
    """(``ids`` with the over-represented timing type downsampled so that interruption pairs are
    ``share`` of the interruption + silence pairs, how many were left out). The pairs kept are
    those whose hash is lowest (stable across runs and machines); order and other types are
    kept."""
    by = {t: [i for i in ids if type_of[i] == t] for t in ("interruption", "silence")}
    n_int, n_sil = len(by["interruption"]), len(by["silence"])
    if n_int + n_sil == 0:
        return list(ids), 0
    keep = {"interruption": n_int, "silence": n_sil}
    if n_int < share * (n_int + n_sil):  # too few interruption pairs: fewer silence ones
        keep["silence"] = round(n_int * (1 - share) / share)
    elif n_sil < (1 - share) * (n_int + n_sil):  # too few silence pairs: fewer interruption ones
        keep["interruption"] = round(n_sil * share / (1 - share))
    kept: set[str] = set()
    for t, members in by.items():
        ranked = sorted(members, key=lambda i: hashlib.sha256(
            f"balance:{seed}:{i}".encode()).digest())
        kept.update(ranked[:min(keep[t], len(members))])
    out = [i for i in ids if type_of[i] not in by or i in kept]
    return out, len(ids) - len(out)


def serving_versions(store: ObjectStore, input_manifest_id: str) -> dict[str, str]:
    """pair id → the model version that served its rejected side, from the dataset's input
    manifest (the resynthesize stage's items: ResynthesizedPair records)."""
    manifest = load_manifest(store, input_manifest_id)
    out: dict[str, str] = {}
    for item in iter_items(store, manifest):
        pair = item.get("pair") if isinstance(item, dict) else None
        if not pair or "pair_id" not in pair:
            raise ValueError(f"{input_manifest_id}: items carry no PreferencePair; cannot tell "
                             "which model served each pair (set train.on_policy=false)")
        out[pair["pair_id"]] = pair.get("serving_model_version", "")
    return out


@dataclass
class TrainData:
    """The pairs of one run: ids kept for training and held out, and how to stream them."""

    dataset: PairDataset
    train_ids: list[str]  # in dataset order
    heldout_ids: list[str]
    dropped_off_policy: int = 0
    by_type: dict[str, int] = field(default_factory=dict)  # training pairs by type
    seed: int = 0
    not_in_mix: int = 0  # pairs of the dataset the training mix left out
    other_types: int = 0  # pairs of a type the run does not train on (train.pair_types)
    balanced_out: int = 0  # timing pairs downsampled to train.interruption_share

    @property
    def version(self) -> str:
        return self.dataset.version

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[PairTensors]:
        """Training pairs of ``epoch`` in their shuffled order, the first ``skip`` left out."""
        keep = set(self.train_ids)
        seen = 0
        for pairs in self.dataset.iter_shards(shuffle_seed=self.seed * 1000 + epoch):
            for pair in pairs:
                if pair.pair_id not in keep:
                    continue
                seen += 1
                if seen > skip:
                    yield pair

    def heldout(self) -> list[PairTensors]:
        """The held-out pairs (kept in memory: a bounded slice)."""
        keep = set(self.heldout_ids)
        return [p for p in self.dataset.iter() if p.pair_id in keep]

    def all_pairs(self) -> Iterator[PairTensors]:
        """Every kept pair (training and held-out), in dataset order."""
        keep = set(self.train_ids) | set(self.heldout_ids)
        return (p for p in self.dataset.iter() if p.pair_id in keep)

    def reference_groups(self) -> list[Iterable[PairTensors]]:
        """What the reference scores, in two groups batched apart: the held-out pairs in the
        order ``heldout()`` gives them (the held-out evaluation batches them the same way), then
        the training pairs."""
        keep = set(self.train_ids)
        return [self.heldout(), (p for p in self.dataset.iter() if p.pair_id in keep)]

    def summary(self) -> dict[str, Any]:
        return {"dataset_version": self.version, "train_pairs": len(self.train_ids),
                "heldout_pairs": len(self.heldout_ids),
                "dropped_off_policy": self.dropped_off_policy, "not_in_mix": self.not_in_mix,
                "other_types": self.other_types, "balanced_out": self.balanced_out,
                "train_by_type": self.by_type}


def load_train_data(store: ObjectStore, version: str, *, model_version: str | None,
                    on_policy: bool, heldout_fraction: float, seed: int, min_pairs: int,
                    max_heldout: int = 256, selected: set[str] | None = None,
                    types: set[str] | None = None,
                    interruption_share: float | None = None) -> TrainData:
    """Select the pairs of dataset ``version`` a run trains on (see the module docstring).

    ``selected``: the pair ids a training mix chose (components/mix); the others are left out
    before any other rule (counted in ``not_in_mix``). None = every pair of the dataset.
    ``types``: keep only pairs of these types (``train.pair_types``, the data-type ablation;
    counted in ``other_types``); None = every type.
    ``interruption_share``: the share of interruption pairs among the timing training pairs
    (``balance_timing``; held-out pairs are kept as they are, so rows stay comparable).

    Raises NotEnoughPairs when fewer than ``min_pairs`` remain (training and held-out
    together): a run on a handful of pairs would register a model that moved on noise."""
    dataset = PairDataset(store, version)
    versions = serving_versions(store, dataset.manifest.input_manifest_id) if on_policy else {}
    train_ids: list[str] = []
    heldout_ids: list[str] = []
    type_of: dict[str, str] = {}
    dropped = not_in_mix = other_types = 0
    for index in range(len(dataset.manifest.shards)):
        # ids and types decide: the shards' tensors are not decompressed here
        ids, kinds = dataset.labels(index)
        for pair_id, pair_type in zip(ids.tolist(), kinds.tolist()):
            if selected is not None and pair_id not in selected:
                not_in_mix += 1
                continue
            if types is not None and pair_type not in types:
                other_types += 1
                continue
            if on_policy and versions.get(pair_id) != model_version:
                dropped += 1
                continue
            type_of[pair_id] = pair_type
            if len(heldout_ids) < max_heldout and is_heldout(pair_id, heldout_fraction, seed):
                heldout_ids.append(pair_id)
            else:
                train_ids.append(pair_id)
    if heldout_fraction > 0 and not heldout_ids and len(train_ids) >= 2:
        # a small dataset can draw no held-out pair at all: hold out the one whose hash is
        # lowest (still stable), so held-out accuracy is always measured
        first = min(train_ids, key=lambda i: _heldout_hash(i, seed))
        train_ids.remove(first)
        heldout_ids.append(first)
    balanced_out = 0
    if interruption_share is not None:
        train_ids, balanced_out = balance_timing(train_ids, type_of, interruption_share, seed)
    kept = len(train_ids) + len(heldout_ids)
    if kept < min_pairs:
        why = f" ({dropped} dropped: served by another model than {model_version})" if dropped else ""
        if selected is not None:
            why += f" ({not_in_mix} not in the training mix)"
        if types is not None:
            why += f" ({other_types} of other types than {sorted(types)})"
        raise NotEnoughPairs(f"dataset {version}: {kept} pairs to train on{why}, fewer than "
                             f"train.min_pairs={min_pairs}")
    if not train_ids:
        raise NotEnoughPairs(f"dataset {version}: every kept pair is held out")
    by_type = dict(Counter(type_of[i] for i in train_ids))  # what the run trains on, by type
    return TrainData(dataset=dataset, train_ids=train_ids, heldout_ids=heldout_ids,
                     dropped_off_policy=dropped, by_type=by_type, seed=seed,
                     not_in_mix=not_in_mix, other_types=other_types, balanced_out=balanced_out)
