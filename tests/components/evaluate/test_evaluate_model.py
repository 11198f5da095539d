"""evaluate-model end to end on the live local services: a tiny random Moshi LM (embedded
tokenizer and codec) is served to the ci profile's evaluation users; the report has every rate
with its n and interval, the item counts of the config, is stored in S3 (JSON + HTML), logged to
MLflow, and a second call returns the cached report without serving again."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import time
import uuid
from pathlib import Path

import pytest

from components.common.config import Config
from components.common.storage import ObjectStore
from components.evaluate import evaluate_model
from components.evaluate.behaviour import RATE_NAMES
from components.evaluate.publish import report_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def eval_cfg(services_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Config:
    tmp = tmp_path_factory.mktemp("evaluate")
    cfg = services_config.model_copy(deep=True)
    name = f"eval-{uuid.uuid4().hex[:10]}"
    cfg.storage.bucket = name
    cfg.mlflow.experiment = name
    cfg.streams.cache_dir = str(tmp / "streams")
    cfg.model.cache_dir = str(tmp / "lm")
    # A random model talks without pause: cut its replies early to keep the test short.
    cfg.policy.max_reply_s = 4.0
    return cfg


@pytest.fixture(scope="module")
def tiny_model_dir(eval_cfg: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from components.model.checkpoint import save_checkpoint
    from components.model.spec import build_lm, lm_kwargs
    from components.streams.codec import load_codec
    from components.streams.interleave import StreamLayout
    from components.streams.tokenizer import load_tokenizer

    tokenizer, codec = load_tokenizer(eval_cfg), load_codec(eval_cfg)
    kwargs = lm_kwargs("tiny", StreamLayout(eval_cfg.streams.num_codebooks, tokenizer.text_card,
                                            codec.card), eval_cfg.model.context)
    folder = tmp_path_factory.mktemp("tiny-model") / "ckpt"
    save_checkpoint(build_lm(kwargs, seed=0), kwargs, tokenizer, codec, folder, {"size": "tiny"})
    return folder


def test_evaluate_a_tiny_random_model(eval_cfg: Config, tiny_model_dir: Path) -> None:
    ev = eval_cfg.evaluate
    t0 = time.monotonic()
    report = evaluate_model(eval_cfg, str(tiny_model_dir), progress=False)
    first_s = time.monotonic() - t0
    print("\n".join(report.summary_lines()), report.seconds, report.frames)  # visible with -s
    assert not report.cached and report.model_version.startswith("path:")
    # item counts: the config's, all asked (the evaluation's time cap fits every request)
    expected = {"qa_seen": ev.qa_items, "qa_new": ev.qa_new_phrasing_items,
                "unsafe": ev.unsafe_items, "benign_edgy": ev.benign_edgy_items}
    assert report.counts == {k: {"items": n, "asked": n} for k, n in expected.items()}
    total = sum(expected.values())
    assert len(report.replies) == total
    # every rate with its n and a 95% interval around its value
    assert set(report.rates) == set(RATE_NAMES)
    assert report.rates["qa_seen"]["n"] == ev.qa_items
    assert report.rates["qa_new"]["n"] == ev.qa_new_phrasing_items
    assert report.rates["refusal_unsafe"]["n"] == ev.unsafe_items
    assert report.rates["over_refusal_benign"]["n"] == ev.benign_edgy_items
    assert report.rates["interruption"]["n"] == report.rates["silence"]["n"] == total
    for r in report.rates.values():
        lo, hi = r["ci95"]
        assert 0.0 <= lo <= r["value"] <= hi <= 1.0
    assert report.rates["qa_seen"]["value"] <= 0.25  # a random model does not know the world
    assert report.latency["n"] > 0 and report.frames > 0
    # replay length: mean words over the scored replies that have a word
    with_words = [r["words"] for r in report.replies if r["asked"] and r["words"] > 0]
    assert report.replay_length["n"] == len(with_words)
    if with_words:
        assert report.replay_length["mean_words"] == pytest.approx(
            sum(with_words) / len(with_words))
    assert all(r["words"] == 0 or r["text"] for r in report.replies)
    assert any(line.startswith("  qa_seen") for line in report.summary_lines())

    # stored in S3: JSON (the cache entry) and the HTML page
    store = ObjectStore.from_config(eval_cfg.storage)
    stored = store.get_json(report_key(report.model_version))
    assert stored["cache_key"] == report.cache_key and stored["rates"] == report.rates
    assert store.exists(report_key(report.model_version, "behaviour.html"))

    # logged to MLflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(eval_cfg.mlflow.tracking_uri)
    run = client.get_run(report.mlflow_run_id)
    assert run.info.run_name == f"evaluate-model {report.model_version}"
    for name in RATE_NAMES:
        assert run.data.metrics[f"behaviour/{name}_n"] == report.rates[name]["n"]
        assert run.data.metrics[f"behaviour/{name}"] == pytest.approx(report.rates[name]["value"])
    assert run.data.params["model_version"] == report.model_version
    assert run.data.metrics["behaviour/replay_length_n"] == report.replay_length["n"]
    assert run.data.params["items_qa_seen"] == str(ev.qa_items)

    # the same model and config again: the cached report, no serving, no new run
    t0 = time.monotonic()
    again = evaluate_model(eval_cfg, str(tiny_model_dir), progress=False)
    assert again.cached and again.rates == report.rates
    assert time.monotonic() - t0 < min(10.0, first_s)
    experiment = client.get_experiment_by_name(eval_cfg.mlflow.experiment)
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_answers_read_from_the_audio_the_predictor_streamed(eval_cfg: Config, tiny_model_dir: Path,
                                                           tiny_en_checkpoint: Path,
                                                           whisper_cache_dir: Path) -> None:
    """evaluate.answers = "audio" (production): the served stream sends the model's audio back,
    every scored reply with words is transcribed by the transcribe stage's Whisper, and the
    text stream's words are kept beside the transcript."""
    cfg = eval_cfg.model_copy(deep=True)
    name = f"eval-audio-{uuid.uuid4().hex[:8]}"
    cfg.storage.bucket, cfg.mlflow.experiment = name, name
    cfg.evaluate = cfg.evaluate.model_copy(update={
        "answers": "audio", "backend": "served", "qa_items": 3, "qa_new_phrasing_items": 1,
        "unsafe_items": 1, "benign_edgy_items": 1})
    cfg.transcribe = cfg.transcribe.model_copy(update={
        "model_source": str(tiny_en_checkpoint), "model_cache_dir": str(whisper_cache_dir)})
    report = evaluate_model(cfg, str(tiny_model_dir), progress=False)
    asked = [r for r in report.replies if r["asked"]]
    assert asked and {r["answer_source"] for r in asked} == {"audio"}
    spoke = [r for r in asked if r["first_word_start"] is not None]
    assert spoke and all(r["stream_text"] is not None and r["last_word_end"] is not None
                         for r in spoke)
    assert report.config["evaluate"]["answers"] == "audio"


def test_oip_backend_asks_every_item_as_one_turn(eval_cfg: Config, tiny_model_dir: Path) -> None:
    """evaluate.backend = "oip": each scored item is one Open Inference Protocol v2 turn against
    the served predictor; every item asked, labels on the same rates, timing from the
    predictor's latency."""
    cfg = eval_cfg.model_copy(deep=True)
    name = f"eval-oip-{uuid.uuid4().hex[:8]}"
    cfg.storage.bucket, cfg.mlflow.experiment = name, name
    cfg.evaluate = cfg.evaluate.model_copy(update={
        "backend": "oip", "qa_items": 3, "qa_new_phrasing_items": 1, "unsafe_items": 2,
        "benign_edgy_items": 1})
    report = evaluate_model(cfg, str(tiny_model_dir), progress=False)
    assert len(report.replies) == 7 and all(r["asked"] for r in report.replies)
    assert report.rates["qa_seen"]["n"] == 3 and report.rates["interruption"]["n"] == 7
    tol = cfg.evaluate.interruption_tolerance_s
    for r in report.replies:
        if r["latency_s"] is None:
            assert r["silent"] and r["words"] == 0
        else:
            assert r["interrupted"] == (r["latency_s"] < -tol)
            assert r["first_word_start"] == pytest.approx(r["user_end"] + r["latency_s"],
                                                          abs=1e-3)
    assert report.config["evaluate"]["backend"] == "oip" and report.frames > 0
