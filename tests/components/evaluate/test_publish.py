"""The behaviour report: its dict round trip, summary, MLflow metric names and HTML page."""

from __future__ import annotations

from components.common.config import EvaluateConfig, PolicyConfig
from components.evaluate.behaviour import (
    RATE_NAMES,
    BehaviourReport,
    ReplyRecord,
    aggregate,
)
from components.evaluate.publish import (
    mlflow_metrics,
    mlflow_params,
    render_html,
    report_key,
    safe_tag,
)

EV = EvaluateConfig()


def _report() -> BehaviourReport:
    records = [
        ReplyRecord(0, "qa_seen:late-fee:0", "qa_seen", "late-fee", user_end=3.0,
                    first_word_start=3.5, latency_s=0.5, text="The late fee is $7.", words=4,
                    correct=True),
        ReplyRecord(0, "unsafe:jammer:1", "unsafe", "jammer", user_end=9.0,
                    first_word_start=None, silent=True, refused=False),
        ReplyRecord(1, "qa_new:autopay:0", "qa_new", "autopay", asked=False),
    ]
    agg = aggregate(records)
    return BehaviourReport(
        model_version="duplexalign-moshi/3", weights_sha256="ab" * 32, model={"size": "tiny"},
        profile="ci", cache_key="k", code_version="c", items_fingerprint="f", conversations=2,
        rates={n: r.to_dict() for n, r in agg.rates.items()}, latency=agg.latency,
        counts=agg.counts, replay_length=agg.replay_length, seconds={"total": 1.5}, frames=100,
        config={"evaluate": EV.model_dump(), "policy": PolicyConfig().model_dump()},
        replies=[r.to_dict() for r in records], notes=["a <note>"])


def test_report_round_trips_and_summarises():
    rep = _report()
    again = BehaviourReport.from_dict(rep.to_dict())
    assert again == rep
    lines = rep.summary_lines()
    assert lines[0].startswith("model duplexalign-moshi/3")
    assert all(any(name in line for line in lines) for name in RATE_NAMES)
    assert rep.figures()["qa_seen"] == 1.0 and rep.figures()["qa_new"] is None


def test_mlflow_metrics_and_params():
    rep = _report()
    m = mlflow_metrics(rep)
    assert m["behaviour/qa_seen"] == 1.0 and m["behaviour/qa_seen_n"] == 1.0
    assert "behaviour/qa_new" not in m and m["behaviour/qa_new_n"] == 0.0  # no value, no metric
    assert m["behaviour/silence"] == 0.5 and m["behaviour/latency_mean_s"] == 0.5
    assert m["behaviour/replay_length"] == 4.0 and m["behaviour/replay_length_n"] == 1.0
    assert rep.figures()["replay_length"] == 4.0
    assert any(line.startswith("  replay length") for line in rep.summary_lines())
    p = mlflow_params(rep)
    assert p["model_version"] == "duplexalign-moshi/3" and p["items_qa_new"] == 1


def test_html_escapes_and_keys_are_safe():
    page = render_html(_report())
    assert "a &lt;note&gt;" in page and "data:image/png;base64," in page
    assert "not asked" in page
    assert safe_tag("path:0123abcd") == "path-0123abcd"
    assert report_key("duplexalign-moshi/3") == "reports/evaluate-model/duplexalign-moshi/3/behaviour.json"


def test_cache_key_covers_weights_architecture_and_sampling() -> None:
    from components.common.config import load_config
    from components.evaluate.behaviour import cache_key
    from components.model.checkpoint import ModelIdentity

    cfg = load_config("ci")
    ident = ModelIdentity(tokenizer_hash="spm-a", codec_hash="mimi-b", num_codebooks=4,
                          size="tiny", weights_sha256="w1")
    key = cache_key(cfg, ident, "items", "code", "arch-512")
    assert cache_key(cfg, ident, "items", "code", "arch-512") == key
    # the same weights served with another attention context behave differently
    assert cache_key(cfg, ident, "items", "code", "arch-128") != key
    other = ModelIdentity(**{**ident.to_dict(), "weights_sha256": "w2"})
    assert cache_key(cfg, other, "items", "code", "arch-512") != key
    hotter = load_config("ci", overrides=["policy.temp_text=0.2"])
    assert cache_key(hotter, ident, "items", "code", "arch-512") != key
    # torch threads change speed, not behaviour
    assert cache_key(load_config("ci", overrides=["evaluate.threads=2"]), ident, "items", "code",
                     "arch-512") == key
