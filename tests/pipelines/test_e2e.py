"""End to end: the demo pipeline on its own services, and a pipeline run killed mid-transcribe
then rerun — through the real CLI, KFP's local runner, SeaweedFS and MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from components.common.config import Config, load_config
from components.common.stagekit import load_manifest
from components.common.storage import ObjectStore
from components.contract import Keys
from components.simulate.generate import simulate_conversations
from pipelines.audit import audit_run
from pipelines.lineage import manifest_chain
from pipelines.runner import pipeline_overrides

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def cli(cfg: Config, *args: str) -> list[str]:
    sets = [f"--set={key}={json.dumps(value)}" for key, value in pipeline_overrides(cfg).items()]
    return [sys.executable, "-m", "pipelines.cli", "--profile", cfg.profile, *sets, *args]


def test_demo_end_to_end(tmp_path):
    state = tmp_path / "demo"
    cfg = load_config("ci", overrides=[
        f"services.state_dir={state}", "services.s3_port=0", "services.mlflow_port=0",
        f"storage.credentials_file={state}/secrets/s3-credentials.json",
        f"consent.dsn=sqlite:///{state}/consent.db", f"pipeline.pipeline_root={state}/pipeline-root",
        f"scrub.pseudonym_key_file={state}/secrets/pseudonym.key"])
    try:
        out = subprocess.run(cli(cfg, "demo"), capture_output=True, text=True, timeout=1500)
    finally:
        subprocess.run(cli(cfg, "services", "down"), capture_output=True, timeout=120)
    # Secrets never reach output, logs, the pipeline root or the compiled run's parameters.
    secrets = [json.loads((state / "secrets" / "s3-credentials.json").read_text())["secret_key"],
               (state / "secrets" / "pseudonym.key").read_text().strip()]
    ours = [state / "services.json"] + [p for d in ("logs", "pipeline-root", "kfp-workspace")
                                        for p in (state / d).rglob("*") if p.is_file()]
    places = [out.stdout, out.stderr] + [p.read_text(errors="replace") for p in ours]
    assert not [s for s in secrets for text in places if s in text]
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["conversations"] == cfg.simulate.conversations
    assert summary["ingested"] + summary["rejected"] == summary["conversations"]
    assert summary["rejected_by_reason"].keys() <= {"no-consent"}
    assert summary["transcribed"] == summary["scrubbed"] == summary["ingested"] > 0
    assert summary["raw_user_audio_left"] == 0
    assert summary["pii_left"] == 0
    assert summary["transcript_wer"] is not None and summary["transcript_wer"] <= 0.10
    assert "duplexalign demo — summary" in out.stdout
    # the alignment bench's report is linked from the summary; on a fresh state, how to make one
    assert summary["alignment_bench"]["report"] is None
    assert "duplexalign bench alignment" in summary["alignment_bench"]["how"]
    assert "alignment bench        not run yet" in out.stdout
    # Judge and preference pairs: every scrubbed conversation judged, pairs made from its own
    # replies (the tiny champion interrupts and goes silent, so timing pairs at least), each
    # resynthesised and tokenised into a dataset version the trainer can stream.
    assert summary["judged"] == summary["scrubbed"]
    assert summary["judge_failures"] == 0
    assert set(summary["pairs"]) == {"A", "B", "C"} and sum(summary["pairs"].values()) > 0
    assert summary["resynthesized"] == sum(summary["pairs"].values())
    assert summary["pairs_dataset"].startswith("pairs-")
    # The data quality gate passed every critical expectation; the feature-selected training mix
    # is what the trainer consumed (its counts by type add up to the mix's pairs).
    validation = summary["validation"]
    assert validation["passed"] > 10 and validation["critical_failed"] == []
    mix = summary["training_mix"]
    assert mix["dataset_version"] == summary["pairs_dataset"]
    assert sum(mix["by_type"].values()) == mix["pairs"] > 0
    # DPO-LN on those pairs: an MLflow run that stopped somewhere for a stated reason, a
    # held-out accuracy, and the best checkpoint registered as the challenger (version 2).
    assert summary["train_run_id"] and summary["stopped_at_step"] > 0
    assert summary["stop_reason"] and not summary["stop_reason"].startswith("skipped")
    assert 0.0 <= summary["heldout_pair_accuracy"] <= 1.0
    assert summary["challenger_version"] == "2"
    assert summary["train_report"].startswith("s3://")
    # The conversations were the champion's own: it was bootstrapped, registered and served.
    assert summary["champion_version"] == "1"
    assert summary["served"]["model_version"] == f"{cfg.model.registered_name}/1"
    baseline = summary["baseline"]
    assert baseline["model_version"] == summary["served"]["model_version"]
    rates = ("qa_seen", "qa_new", "refusal_unsafe", "over_refusal_benign", "interruption",
             "silence")
    for rate in rates:
        assert baseline["n"][rate] > 0 and 0.0 <= baseline[rate] <= 1.0, rate
    # The pipeline ended by serving champion and challenger with the predictor and evaluating
    # both on the same items; the gate decided on them and recorded why.
    challenger_tag = f"{cfg.model.registered_name}/{summary['challenger_version']}"
    assert summary["eval"]["champion"] == baseline
    aligned = summary["aligned"]
    assert summary["eval"]["challenger"] == aligned and aligned["model_version"] == challenger_tag
    assert {rate: aligned["n"][rate] for rate in rates} == {rate: baseline["n"][rate]
                                                            for rate in rates}
    assert aligned["replay_length"] is not None
    gate = summary["gate"]
    assert gate["challenger"] == challenger_tag and gate["champion"] == baseline["model_version"]
    assert gate["verdict"] in ("promote", "reject", "insufficient") and gate["reasons"]
    assert gate["decision"].startswith("s3://") and gate["mlflow_run_id"]
    for metric in cfg.gate.targets:
        low, high = gate["metrics"][metric]["ci"]
        assert low <= gate["metrics"][metric]["delta"] <= high
    assert summary["manifests"]["evaluate"].startswith("evaluate-")
    # The canary of the challenger, as KServe takes it: its s3:// URI at canaryTrafficPercent,
    # the champion kept as the stable revision; valid against the InferenceService CRD schema.
    import yaml

    from components.deploy.crd import validate_manifest
    from tests.components.deploy.conftest import CRD as CRD_PATH

    canary = yaml.safe_load(open(summary["canary_manifest"]))
    validate_manifest(canary, CRD_PATH)
    predictor = canary["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == cfg.deploy.canary_percent
    env = {e["name"]: e.get("value") for e in predictor["containers"][0]["env"]}
    assert env["STORAGE_URI"].startswith(f"s3://{cfg.storage.bucket}/")
    assert summary["canary"]["proposed"] == (gate["verdict"] == "promote")


def test_run_killed_mid_transcribe_then_rerun_processes_each_conversation_once(stage_cfg, tmp_path):
    from components.streams.codec import load_codec
    from components.streams.tokenizer import load_tokenizer
    from tests.components.train.synthetic import tiny_checkpoint

    stage_cfg.transcribe.batch_items = 1  # one conversation per Whisper batch: markers land one by one
    # The policy is a checkpoint folder that served none of these SCRIPTED conversations: the
    # on-policy filter leaves no pair, and the train task ends the run without training.
    stage_cfg.train.policy_source = str(tiny_checkpoint(
        tmp_path / "policy", load_tokenizer(stage_cfg), load_codec(stage_cfg)))
    sim = simulate_conversations(stage_cfg, n=4, batch="killed", progress=False)
    store = ObjectStore.from_config(stage_cfg.storage)
    run = cli(stage_cfg, "run", "--input-manifest", sim.manifest_id,
              "--groundtruth-bucket", stage_cfg.storage.groundtruth_bucket)
    proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if any(True for _ in store.list("state/transcribe/")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before transcribe started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not any(True for _ in store.list("manifests/transcribe/"))

    rerun = subprocess.run(run, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    final = rerun.stdout.strip().splitlines()[-1]
    chain = manifest_chain(store, final)
    ingested = chain["ingest"].counts.get("items", 0)
    assert ingested + chain["ingest"].counts.get("rejected", 0) == 4
    assert chain["transcribe"].counts["items"] == chain["scrub"].counts["items"] == ingested > 0
    markers = [i.key for i in store.list(Keys.item_state_prefix("transcribe", chain["ingest"].manifest_id))]
    assert len(markers) == len(set(markers)) == ingested  # each conversation transcribed once
    evaluated = load_manifest(store, final)
    trained = chain["train"]
    # evaluate ← train ← mix ← features ← validate ← tokenize: the gate passed and the mix
    # builder left out every pair (off-policy), so the train task ended without training and
    # evaluate had no challenger to serve (a verdict, not a failure)
    assert evaluated.stage == "evaluate" and evaluated.input_manifest_id == trained.manifest_id
    assert evaluated.stats["verdict"] == "no challenger"
    assert trained.stage == "train" and trained.input_manifest_id == chain["mix"].manifest_id
    assert chain["validate"].input_manifest_id == chain["tokenize"].manifest_id
    assert chain["validate"].stats["critical_failed"] == []
    assert chain["mix"].counts.get("items", 0) == 0
    assert chain["mix"].stats["excluded"].get("off_policy", 0) > 0
    assert trained.stats["stop_reason"].startswith("skipped: ")
    assert "not in the training mix" in trained.stats["stop_reason"]
    assert trained.stats["challenger_version"] is None
    assert chain["judge"].counts["items"] == ingested
    audit = audit_run(stage_cfg, sim.conversation_ids)
    assert (audit.raw_user_audio_left, audit.pii_left) == (0, 0), audit.findings
