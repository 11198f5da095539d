"""The shared chain fixture (tests/support/chain.py) writes what the real stages write: every
manifest walks back to scrub, every item parses as its contract model, the dataset holds every
pair."""

from __future__ import annotations

import pytest

from components.common.stagekit import iter_items, load_manifest, manifest_chain
from components.contract import JudgedItem, PreferencePair, ResynthesizedPair, ScrubbedItem
from components.streams.pairset import PairDataset
from tests.support.chain import write_chain

pytestmark = pytest.mark.integration


def test_chain_is_contract_valid(stage_cfg, stage_store):
    chain = write_chain(stage_cfg)
    walked = manifest_chain(stage_store, chain.manifests["tokenize"])
    assert list(walked) == ["scrub", "judge", "pairs", "resynthesize", "tokenize"]
    models = {"scrub": ScrubbedItem, "judge": JudgedItem, "pairs": PreferencePair,
              "resynthesize": ResynthesizedPair}
    for stage, model in models.items():
        items = [model.model_validate(i) for i in iter_items(stage_store, walked[stage])]
        assert items, stage
    assert len(chain.conversations) == 5 and len(chain.pairs) == 10
    assert {p.type for p in chain.pairs.values()} == {"content", "interruption", "silence"}
    dataset = PairDataset(stage_store, chain.dataset_version)
    assert sorted(p.pair_id for p in dataset.iter()) == sorted(chain.pairs)
    for pair in dataset.iter():
        pair.validate(4)
    tokenize = load_manifest(stage_store, chain.manifests["tokenize"])
    assert tokenize.stats["pairs_dataset"] == chain.dataset_version
    assert set(chain.pairs_of("alice")) <= set(chain.pairs)
