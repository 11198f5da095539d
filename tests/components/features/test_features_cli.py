"""`duplexalign features apply|materialize|build` and `duplexalign mix` against the live
services: one JSON object on stdout (Feast's progress goes to stderr)."""

from __future__ import annotations

import json

import pytest

from components.common.featurestore import store as fstore
from components.common.featurestore.definitions import PAIR_FEATURES
from pipelines.cli import main
from tests.components.features.support import passed_gate
from tests.support.chain import write_chain

pytestmark = pytest.mark.integration


def _cli(cfg, capsys, *args: str) -> dict:
    sets = [f"services.state_dir={cfg.services.state_dir}", f"storage.bucket={cfg.storage.bucket}",
            f"consent.dsn={cfg.consent.dsn}", f"scrub.pseudonym_key_file={cfg.scrub.pseudonym_key_file}"]
    argv = ["--profile", "ci"]
    for item in sets:
        argv += ["--set", item]
    capsys.readouterr()
    assert main([*argv, *args]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # nothing but the result on stdout
    return json.loads(out[0])


def test_features_and_mix_from_the_command_line(stage_cfg, capsys):
    chain = write_chain(stage_cfg, users={"alice": 1, "bob": 1})
    validate_id = passed_gate(stage_cfg, chain.manifests["tokenize"], chain.dataset_version)

    applied = _cli(stage_cfg, capsys, "features", "apply")
    assert applied["feature_views"] == ["conversation_stats", "user_consent", "pair_features"]
    assert _cli(stage_cfg, capsys, "features", "materialize")["views"] == []  # no rows yet

    built = _cli(stage_cfg, capsys, "features", "build", "--validate-manifest", validate_id)
    assert built["manifest_id"].startswith("features-")
    assert built["dataset_version"] == chain.dataset_version

    online = fstore.online_features(stage_cfg, PAIR_FEATURES, list(chain.pairs))
    assert online["type"].notna().all()  # build materialised
    end = max(chain.conversation_end.values())
    done = _cli(stage_cfg, capsys, "features", "materialize", "--end", end.isoformat())
    assert done["materialized_until"] == end.isoformat()
    assert done["views"] == ["conversation_stats", "user_consent", "pair_features"]

    mixed = _cli(stage_cfg, capsys, "mix", "--latest", "--model-version", "duplexalign-moshi/1")
    assert mixed["manifest_id"].startswith("mix-") and mixed["pairs"] == len(chain.pairs)
    assert mixed["dataset_version"] == chain.dataset_version
