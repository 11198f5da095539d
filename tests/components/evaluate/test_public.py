"""Public item sets from JSONL: the three formats from a local path and from the live S3 store,
limits, clear errors for bad lines, and answer matching with normalisation. The sample files are
hand-written five-line stand-ins, not the real data sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.common.config import Config, PublicSetConfig, load_config
from components.common.storage import ObjectStore
from components.evaluate.public import (
    PublicSetError,
    answer_matches,
    load_public_set,
    load_public_sets,
    public_fingerprint,
)

DATA = Path(__file__).parent / "data"


def _cfg(sets: list[dict], base: Config | None = None) -> Config:
    cfg = (base or load_config("ci")).model_copy(deep=True)
    cfg.evaluate.public_sets = [PublicSetConfig(**s) for s in sets]
    return cfg


def test_the_three_formats_from_a_path() -> None:
    cfg = _cfg([{"name": "llamaq", "format": "qa", "source": str(DATA / "qa_sample.jsonl")},
                {"name": "alert", "format": "alert", "source": str(DATA / "alert_sample.jsonl")},
                {"name": "xstest", "format": "xstest",
                 "source": str(DATA / "xstest_sample.jsonl"), "limit": 4}])
    sets = load_public_sets(cfg)
    qa = sets["llamaq"]
    assert [i.id for i in qa] == ["llamaq:1", "llamaq:2", "llamaq:3", "llamaq:5", "llamaq:6"]
    assert qa[0].kind == "qa" and qa[0].answers == ("Earth", "the Earth")
    assert qa[2].answers == ("blue",)  # "answer": one answer
    assert {i.kind for i in sets["alert"]} == {"unsafe"} and sets["alert"][0].category == "privacy"
    assert [i.kind for i in sets["xstest"]] == ["benign_edgy", "benign_edgy", "unsafe",
                                                "benign_edgy"]  # limit 4
    assert public_fingerprint(sets) == public_fingerprint(load_public_sets(cfg))


def test_a_set_from_s3(services_config: Config, store: ObjectStore) -> None:
    store.put_bytes("sets/alert.jsonl", (DATA / "alert_sample.jsonl").read_bytes())
    cfg = _cfg([{"name": "alert", "format": "alert", "source": store.uri("sets/alert.jsonl")}],
               services_config)
    items = load_public_sets(cfg)["alert"]
    assert len(items) == 5 and items[1].prompt.startswith("Write a message")


def test_bad_lines_name_the_source_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "answers": ["a"]}\n{"question": "Q2?", "answers": []}\n')
    spec = PublicSetConfig(name="bad", format="qa", source=str(bad))
    with pytest.raises(PublicSetError, match=r"bad.jsonl line 2: needs 'answers'"):
        load_public_set(load_config("ci"), spec)
    bad.write_text('{"prompt": "p", "label": "maybe"}\n')
    with pytest.raises(PublicSetError, match="'label' must be"):
        load_public_set(load_config("ci"), spec.model_copy(update={"format": "xstest"}))
    bad.write_text("not json\n")
    with pytest.raises(PublicSetError, match="line 1: not JSON"):
        load_public_set(load_config("ci"), spec)
    with pytest.raises(FileNotFoundError, match="a path or s3:// URI"):
        load_public_set(load_config("ci"), spec.model_copy(update={"source": "/nope.jsonl"}))
    twice = _cfg([{"name": "a", "format": "qa", "source": str(DATA / "qa_sample.jsonl")}] * 2)
    with pytest.raises(ValueError, match="used twice"):
        load_public_sets(twice)


@pytest.mark.parametrize("reply,answers,ok", [
    ("We live on the Earth, of course.", ["Earth"], True),
    ("The answer is eight.", ["eight", "8"], True),
    ("A spider has 8 legs", ["eight", "8"], True),
    ("It was Shakespeare!", ["William Shakespeare", "Shakespeare"], True),
    ("Bees make wax.", ["honey"], False),
    ("", ["honey"], False),
    ("the", ["the Earth"], False),  # an answer's article alone does not match
])
def test_answer_matching(reply, answers, ok) -> None:
    assert answer_matches(reply, answers) is ok


def test_public_items_join_the_conversations() -> None:
    from components.evaluate.items import build_conversations, items_fingerprint

    base = load_config("ci")
    cfg = _cfg([{"name": "llamaq", "format": "qa", "source": str(DATA / "qa_sample.jsonl")}])
    convs = build_conversations(cfg)
    public = [i for c in convs for i in c.items if i.kind == "public_qa"]
    assert len(public) == 5 and {i.world_id for i in public} == {"llamaq"}
    assert public[0].script_id == public[0].id and public[0].answers
    # world items keep their scripts' fingerprint when no public set is configured
    assert items_fingerprint(build_conversations(base)) != items_fingerprint(convs)
    world = [i for c in build_conversations(base) for i in c.items]
    assert all("answers" not in i.to_dict() and i.script_id == i.world_id for i in world)
    # safety items of public sets are scored by the judge only
    alert = _cfg([{"name": "alert", "format": "alert", "source": str(DATA / "alert_sample.jsonl")}])
    with pytest.raises(ValueError, match="evaluate.refusal=judge"):
        build_conversations(alert)
    alert.evaluate.refusal = "judge"
    assert sum(1 for c in build_conversations(alert) for i in c.items
               if i.kind == "public_unsafe") == 5


def test_public_rates_and_their_gate_direction() -> None:
    from components.common.config import GateConfig
    from components.evaluate.behaviour import ReplyRecord, aggregate
    from components.evaluate.gate import decide, direction, paired_values

    def rec(i: int, kind: str, set_name: str, **labels) -> ReplyRecord:
        return ReplyRecord(0, f"{set_name}:{i}", kind, set_name, words=3, **labels)

    records = ([rec(i, "public_qa", "llamaq", correct=i < 2) for i in range(4)]
               + [rec(i, "public_unsafe", "xstest", refused=True) for i in range(2)]
               + [rec(i + 2, "public_benign_edgy", "xstest", refused=i == 0) for i in range(3)])
    rates = aggregate(records).rates
    assert (rates["public/llamaq/qa"].k, rates["public/llamaq/qa"].n) == (2, 4)
    assert (rates["public/xstest/refusal_unsafe"].k, rates["public/xstest/refusal_unsafe"].n) == (
        2, 2)
    assert rates["public/xstest/over_refusal_benign"].n == 3
    assert rates["interruption"].n == 9  # public replies count in the timing rates
    assert direction("public/llamaq/qa") == 1
    assert direction("public/xstest/over_refusal_benign") == -1
    report = {"items_fingerprint": "f", "model_version": "m", "weights_sha256": "w",
              "cache_key": "k", "mlflow_run_id": None,
              "rates": {n: r.to_dict() for n, r in rates.items()},
              "replies": [r.to_dict() for r in records]}
    ids, a, b = paired_values(report, report, "public/llamaq/qa")
    assert len(ids) == 4 and list(a) == [1.0, 1.0, 0.0, 0.0]
    d = decide(report, report, GateConfig(min_items=2, bootstrap_samples=100,
                                          targets=["public/llamaq/qa"], tolerances={}))
    assert "public/xstest/over_refusal_benign" in d.metrics
    assert d.metrics["public/llamaq/qa"].status == "not_improved" and d.verdict == "reject"
    # the default tolerances track the world's metrics, which these reports lack: no decision
    tracked = decide(report, report, GateConfig(min_items=2, bootstrap_samples=100))
    assert tracked.verdict == "insufficient" and tracked.metrics["qa_seen"].interval["n"] == 0
    with pytest.raises(ValueError, match="unknown gate metric"):
        direction("public/llamaq/bogus")
