"""Champion vs challenger and the gate end to end on the live local services (SeaweedFS + MLflow),
with tiny random Moshi LMs on the ci profile:

* the same model twice: every paired difference is 0 with a zero-width interval, MLflow's
  comparison run carries champion/<m>, challenger/<m>, delta/<m> and the table, page and plot,
  S3 has the comparison; the gate does not promote (no target improves), and says
  "insufficient" with the default minimum of items;
* the pipeline's task (evaluate_op) on two different registered tiny models: the challenger the
  train manifest names against the champion alias; the decision record is in S3 (load_decision),
  in MLflow (the gate run and its decision.json) and on the challenger's model version
  (gate_verdict); a train task that registered nothing gives "no challenger"."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import json
import uuid
from pathlib import Path

import pytest

from components.common.config import Config, PublicSetConfig, flatten
from components.common.stagekit import iter_items, load_manifest
from components.common.storage import ObjectStore
from components.contract import Keys
from components.evaluate.compare import Comparison, compare_models
from components.evaluate.gate import METRICS, decide, load_decision

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cmp_cfg(services_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Config:
    tmp = tmp_path_factory.mktemp("compare")
    cfg = services_config.model_copy(deep=True)
    name = f"cmp-{uuid.uuid4().hex[:10]}"
    cfg.storage.bucket = name
    cfg.mlflow.experiment = name
    cfg.model.registered_name = name  # this module's own registry entry
    cfg.streams.cache_dir = str(tmp / "streams")
    cfg.model.cache_dir = str(tmp / "lm")
    cfg.policy.max_reply_s = 4.0  # a random model talks without pause: keep conversations short
    cfg.gate.bootstrap_samples = 500
    cfg.gate.min_items = 5  # the ci profile's item sets are small (6 to 30 items per metric)
    ObjectStore.from_config(cfg.storage).ensure_bucket(versioning=True)
    return cfg


def _tiny(cfg: Config, folder: Path, seed: int) -> Path:
    from components.model.checkpoint import save_checkpoint
    from components.model.spec import build_lm, lm_kwargs
    from components.streams.codec import load_codec
    from components.streams.interleave import StreamLayout
    from components.streams.tokenizer import load_tokenizer

    tokenizer, codec = load_tokenizer(cfg), load_codec(cfg)
    kwargs = lm_kwargs("tiny", StreamLayout(cfg.streams.num_codebooks, tokenizer.text_card,
                                            codec.card), cfg.model.context)
    save_checkpoint(build_lm(kwargs, seed=seed), kwargs, tokenizer, codec, folder,
                    {"size": "tiny"})
    return folder


@pytest.fixture(scope="module")
def tiny_a(cmp_cfg: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(cmp_cfg, tmp_path_factory.mktemp("tiny-a") / "ckpt", seed=0)


@pytest.fixture(scope="module")
def tiny_b(cmp_cfg: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(cmp_cfg, tmp_path_factory.mktemp("tiny-b") / "ckpt", seed=1)


def test_the_same_model_twice(cmp_cfg: Config, tiny_a: Path) -> None:
    from mlflow.tracking import MlflowClient

    comparison = compare_models(cmp_cfg, str(tiny_a), str(tiny_a), progress=False)
    assert isinstance(comparison, Comparison)
    assert comparison.champion.model_version == comparison.challenger.model_version
    assert comparison.challenger.cached  # evaluated once, cached for the second role
    n_items = sum(c["items"] for c in comparison.champion.counts.values())
    assert len(comparison.table) == n_items == 30
    for metric, iv in comparison.intervals.items():
        if iv.n:
            assert iv.delta == iv.low == iv.high == 0.0, metric
    assert comparison.intervals["interruption"].n == 30
    assert comparison.intervals["qa_seen"].n == cmp_cfg.evaluate.qa_items

    # MLflow: one run with both models' figures and the differences, side by side
    client = MlflowClient(cmp_cfg.mlflow.tracking_uri)
    run = client.get_run(comparison.mlflow_run_id)
    tag = comparison.champion.model_version
    assert run.info.run_name == f"evaluate {tag} vs {tag}"
    m = run.data.metrics
    own = client.get_run(comparison.champion.mlflow_run_id).data.metrics  # evaluate-model run
    for name in ("qa_seen", "refusal_unsafe", "interruption", "silence"):
        assert m[f"champion/{name}"] == m[f"challenger/{name}"] == pytest.approx(
            own[f"behaviour/{name}"])
        assert m[f"delta/{name}"] == m[f"delta/{name}_ci_low"] == m[f"delta/{name}_ci_high"] == 0
    if comparison.champion.replay_length["n"]:
        assert m["champion/replay_length"] == pytest.approx(own["behaviour/replay_length"])
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"comparison.csv", "comparison.html", "comparison.json"} <= artefacts
    assert any(p.endswith(".png") or p == "comparison.png" for p in artefacts) or any(
        a.path.endswith(".png") for a in client.list_artifacts(run.info.run_id, "images"))

    # S3: JSON + HTML + CSV under reports/evaluate/<challenger>-vs-<champion>/
    store = ObjectStore.from_config(cmp_cfg.storage)
    assert comparison.keys["json"] == Keys.evaluation(tag, tag, "comparison.json")
    assert comparison.keys["json"].startswith("reports/evaluate/path-")
    stored = store.get_json(comparison.keys["json"])
    assert set(stored["metrics"]) == set(METRICS) and len(stored["table"]) == 30
    csv_text = store.get_bytes(comparison.keys["csv"]).decode()
    assert csv_text.splitlines()[0].startswith("item_id,kind,label")
    assert len(csv_text.strip().splitlines()) == 31

    # the gate: nothing improves, so no promotion; too few items with the default minimum
    decision = decide(comparison.champion, comparison.challenger, cmp_cfg.gate)
    assert decision.verdict == "reject"
    assert decision.metrics["interruption"].status == "not_improved"
    strict = decide(comparison.champion, comparison.challenger,
                    cmp_cfg.gate.model_copy(update={"min_items": 30}))
    assert strict.verdict == "insufficient"
    assert strict.metrics["qa_seen"].status == "insufficient"


def test_pipeline_task_gates_the_registered_challenger(cmp_cfg: Config, tiny_a: Path,
                                                       tiny_b: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from components.common.stagekit import ManifestWriter
    from components.evaluate.component import evaluate_op
    from components.model.registry import register_model

    champion = register_model(cmp_cfg, tiny_a, metrics={}, params={}, alias="champion",
                              run_name="tiny champion")
    challenger = register_model(cmp_cfg, tiny_b, metrics={}, params={}, alias="challenger",
                                run_name="tiny challenger")
    store = ObjectStore.from_config(cmp_cfg.storage)
    trained = ManifestWriter(store, "train", None).close(
        {"challenger_version": challenger, "policy_version": f"{cmp_cfg.model.registered_name}/"
                                                             f"{champion}"}).manifest_id
    overrides = {k: v for k, v in flatten(json.loads(cmp_cfg.to_json())).items()
                 if k.split(".")[0] in ("storage", "mlflow", "model", "streams", "policy",
                                        "gate")}

    class Artefact:
        path = str(tmp_path / "evaluate.html")

    def run_op(train_manifest_id: str) -> dict:
        """The task's output is the evaluate manifest id; its stats are the outcome."""
        manifest_id = evaluate_op.python_func(train_manifest_id=train_manifest_id,
                                              profile=cmp_cfg.profile,
                                              overrides=json.dumps(overrides), report=Artefact())
        manifest = load_manifest(store, manifest_id)
        assert manifest.stage == "evaluate" and manifest.input_manifest_id == train_manifest_id
        assert [item["verdict"] for item in iter_items(store, manifest)] == [
            manifest.stats["verdict"]]
        return manifest.stats

    out = run_op(trained)
    name = cmp_cfg.model.registered_name
    assert out["champion"] == f"{name}/{champion}" and out["challenger"] == f"{name}/{challenger}"
    assert out["verdict"] in ("promote", "reject", "insufficient") and out["reasons"]
    assert out["decision_key"] == Keys.gate_decision(f"{name}/{challenger}")
    page = Path(Artefact.path).read_text()
    assert f"gate: {out['verdict']}" in page and "data:image/png;base64," in page

    # the decision record: S3 (what deploy reads), MLflow run + artefact, the version's tag
    decision = load_decision(store, f"{name}/{challenger}")
    assert decision is not None and decision.verdict == out["verdict"]
    assert decision.champion["weights_sha256"] != decision.challenger["weights_sha256"]
    assert decision.thresholds["min_items"] == 5 and set(decision.metrics) == set(METRICS)
    assert decision.champion["report_key"].startswith("reports/evaluate-model/")
    client = MlflowClient(cmp_cfg.mlflow.tracking_uri)
    gate_run = client.get_run(out["gate_run_id"])
    assert gate_run.info.run_name == f"gate {name}/{challenger} vs {name}/{champion}"
    assert gate_run.data.tags["verdict"] == out["verdict"]
    assert gate_run.data.params["min_items"] == "5"
    assert "gate/interruption_delta" in gate_run.data.metrics
    assert {"decision.json", "gate.html"} <= {a.path for a in client.list_artifacts(
        gate_run.info.run_id)}
    version = client.get_model_version(name, challenger)
    assert version.tags["gate_verdict"] == out["verdict"]
    cmp_run = client.get_run(out["comparison_run_id"])
    assert cmp_run.data.params["challenger"] == f"{name}/{challenger}"

    # a rerun (a retried task) reuses the recorded decision: no second gate or comparison run
    runs_before = len(client.search_runs([gate_run.info.experiment_id]))
    again = run_op(trained)
    assert again["gate_run_id"] == out["gate_run_id"] and again["verdict"] == out["verdict"]
    assert again["comparison_run_id"] == out["comparison_run_id"]
    assert len(client.search_runs([gate_run.info.experiment_id])) == runs_before

    # training skipped: no challenger, no failure
    skipped = ManifestWriter(store, "train", "mix-none").close(
        {"challenger_version": None, "stop_reason": "skipped: too few pairs"}).manifest_id
    out = run_op(skipped)
    assert out["verdict"] == "no challenger" and out["decision_key"] is None
    assert "No challenger" in Path(Artefact.path).read_text()


def test_public_sets_scored_end_to_end(cmp_cfg: Config, tiny_a: Path) -> None:
    """A QA set from a path and an ALERT set from S3, spoken to the tiny model next to the
    world's items; safety scored by a (fake, real-HTTP) judge: the report has their rates."""
    from components.evaluate import evaluate_model
    from tests.components.evaluate.judge_server import safety_judge

    data = Path(__file__).parent / "data"
    store = ObjectStore.from_config(cmp_cfg.storage)
    store.put_bytes("public/alert.jsonl", (data / "alert_sample.jsonl").read_bytes())
    with safety_judge() as (url, received):
        cfg = cmp_cfg.model_copy(deep=True)
        cfg.evaluate = cfg.evaluate.model_copy(update={
            "qa_items": 2, "qa_new_phrasing_items": 0, "unsafe_items": 2,
            "benign_edgy_items": 2, "refusal": "judge", "public_sets": [
                PublicSetConfig(name="llamaq", format="qa", source=str(data / "qa_sample.jsonl"),
                                limit=3),
                PublicSetConfig(name="alert", format="alert",
                                source=store.uri("public/alert.jsonl"), limit=3)]})
        cfg.judge.endpoint, cfg.judge.cache = url, False
        report = evaluate_model(cfg, str(tiny_a), progress=False)
    assert report.counts["public_qa"] == {"items": 3, "asked": 3}
    assert report.counts["public_unsafe"] == {"items": 3, "asked": 3}
    assert report.rates["public/llamaq/qa"]["n"] == 3
    assert report.rates["public/alert/refusal_unsafe"]["n"] == 3
    assert report.rates["interruption"]["n"] == 2 + 2 + 2 + 3 + 3
    said = sum(1 for r in report.replies if r["kind"] in ("unsafe", "benign_edgy",
                                                          "public_unsafe") and r["text"].strip())
    assert len(received) == said  # every safety reply with words went to the judge
    assert any(line.startswith("  public/alert/refusal_unsafe")
               for line in report.summary_lines())
