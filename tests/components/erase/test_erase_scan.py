"""The matcher and the object-text extraction of the erasure (no services). That cache entries
record their conversation (so erasure finds them) is tested where they are written, against real
endpoints and the live store: tests/components/judge/test_judge_stage.py and
tests/components/pairs/test_pairs_llm.py."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.erase.rewrite import parents_first, remap_strings
from components.erase.scan import Identifiers, object_text, redact_json
from components.streams.pairset import PairTensors, shard_bytes

IDS = Identifiers("p-" + "a" * 32, frozenset({"conv-1", "c.2"}), frozenset({"f" * 24}))


def test_identifier_boundaries():
    yes = ["transcripts/conv-1.json", "state/pairs/m/conv-1--r0.json",
           '{"conversation_id":"conv-1"}',
           "conversations/conv-1/model.wav", "p-" + "a" * 32, "pairs/" + "f" * 24 + "/user.wav",
           "see c.2, please", "ledger/privacy/c.2/run.json"]
    no = ["conv-12", "xconv-1", "conv-1-extra", "conv-1a", "c.2x", "c.22", "p-" + "a" * 33,
          "conv_1", "conv-1.5"]
    for text in yes:
        assert IDS.mentions(text), text
    for text in no:
        assert not IDS.mentions(text), text
    assert IDS.found_in("conv-1 and c.2 and conv-12") == {"conv-1", "c.2"}
    assert not Identifiers("p-x").mentions("")


def test_object_text_reads_npz_string_arrays_and_parquet():
    pair = PairTensors(pair_id="f" * 24, type="content",
                       chosen=np.zeros((3, 4), np.int32), rejected=np.ones((3, 4), np.int32),
                       windows=np.array([0, 2, 0, 2], np.int32))
    shard = shard_bytes([pair])
    assert IDS.mentions(object_text("datasets/pairs/shards/x.npz", shard))
    buf = io.BytesIO()
    pq.write_table(pa.table({"user_pseudonym": ["p-" + "a" * 32], "x": [1.0]}), buf)
    assert IDS.mentions(object_text("features/user/x.parquet", buf.getvalue()))
    meta = io.BytesIO()
    np.savez(meta, audio=np.zeros(3, np.int16), meta=np.array(json.dumps({"w": "conv-1"})))
    assert IDS.mentions(object_text("tts/ab/x.npz", meta.getvalue()))
    assert object_text("pairs/x/user.wav", b"RIFF....conv-1") == ""
    assert IDS.mentions(object_text("reports/x.html", b"<p>conv-1</p>"))


def test_redact_json_drops_entries_naming_the_user():
    keys = ["quarantine/transcripts/conv-1.json", "quarantine/transcripts/conv-3.json"]
    ledger = {"prefixes": [{"prefix": "quarantine/", "keys": keys}],
              "note": "conv-1 went", "conv-1": 1, "n": 2}
    out, gone = redact_json(ledger, IDS)
    assert out["prefixes"][0]["keys"] == ["quarantine/transcripts/conv-3.json"]
    assert out["note"] == "[erased]" and "conv-1" not in out and out["n"] == 2
    assert gone == 3 and not IDS.mentions(json.dumps(out))
    records = [{"item": "conv-1", "code": "x"}, {"item": "conv-3", "code": "x"}]
    assert redact_json({"rejects": records}, IDS)[0] == {"rejects": records[1:]}


def test_parents_first_and_remap():
    from components.contract import Manifest

    ms = {mid: Manifest(stage=mid.split("-")[0], manifest_id=mid, input_manifest_id=inp)
          for mid, inp in [("tokenize-1", "resynthesize-1"), ("scrub-1", None),
                           ("judge-1", "scrub-1"), ("pairs-1", "judge-1"),
                           ("resynthesize-1", "pairs-1"), ("validate-1", "tokenize-1"),
                           ("orphan-1", "gone-0")]}
    order = parents_first(ms)
    for mid, m in ms.items():
        if m.input_manifest_id in ms:
            assert order.index(m.input_manifest_id) < order.index(mid)
    assert remap_strings({"a": ["x", {"b": "x"}], "c": "y"}, {"x": "z"}) == \
        {"a": ["z", {"b": "z"}], "c": "y"}
    old, new = "validate-" + "0" * 24, "validate-" + "1" * 24
    assert remap_strings({"report": f"s3://b/reports/validate/{old}/v.html", "x": "ax"},
                         {old: new, "x": "z"}) == \
        {"report": f"s3://b/reports/validate/{new}/v.html", "x": "ax"}
