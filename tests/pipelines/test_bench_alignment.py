"""The alignment bench's plan, per-cell configuration, analysis and report, on results made up
for the purpose (the grid against the live services is test_bench_alignment_grid.py)."""

from __future__ import annotations

import argparse

import pytest

from components.common.config import load_config
from pipelines.bench.alignment import apply_args
from pipelines.bench.alignment.analysis import (
    Claim,
    judge_claim,
    plain_findings,
    row_stats,
    summarise,
    where_early_stopping_fires,
)
from pipelines.bench.alignment.cells import CellResult, cell_key
from pipelines.bench.alignment.dataset import BenchDataset, dataset_config, dataset_key
from pipelines.bench.alignment.grid import ROWS, Cell, cell_config, plan
from pipelines.bench.alignment.report import render, report_key


def _cfg(**bench):
    cfg = load_config("demo")
    cfg.bench_alignment = cfg.bench_alignment.model_copy(update=bench)
    return cfg


def _result(row: str, seed: int, *, qa=0.2, unsafe=0.5, benign=0.3, interruption=0.2,
            silence=0.4, replay=10.0, history=None, train=None) -> CellResult:
    rates = {"qa_seen": qa, "refusal_unsafe": unsafe, "over_refusal_benign": benign,
             "interruption": interruption, "silence": silence, "qa_new": 0.05}
    return CellResult(cell=Cell(row, seed).to_dict(), key=f"{row}-{seed}", dataset_version="v",
                      eval={"rates": {k: {"value": v, "ci95": [None, None], "n": 20}
                                      for k, v in rates.items()},
                            "replay_length": {"mean_words": replay}},
                      history=history or [], train=train or {})


def test_the_plan_runs_the_multi_seed_rows_first_and_the_curve_last():
    cells = plan(_cfg(seeds=[4, 5, 6]))
    assert [(c.row, c.seed) for c in cells[:6]] == [
        ("champion", 4), ("dpo", 4), ("dpo_ln", 4), ("champion", 5), ("dpo", 5), ("dpo_ln", 5)]
    assert {c.row for c in cells[:9]} == {"champion", "dpo", "dpo_ln"}
    single = cells[9:]
    assert {c.seed for c in single} == {4} and len(single) == len(ROWS) - 3
    assert single[-1].row == "dpo_ln_no_early_stop"
    assert len(cells) == len(set(cells)) == len(ROWS) + 6
    assert [c.row for c in plan(_cfg(), ["simpo", "dpo"])] == ["dpo", "dpo", "dpo", "simpo"]
    with pytest.raises(ValueError, match="unknown rows"):
        plan(_cfg(), ["ppo"])


def test_each_cell_gets_its_algorithm_seed_data_and_evaluation():
    cfg = _cfg(seeds=[1, 2], epochs=1.5, batch_size=6, curve_epochs=5.0, heldout_fraction=0.2)
    joint = cell_config(cfg, Cell("dpo_ln_joint", 1))
    assert (joint.train.loss, joint.train.stream, joint.train.seed) == ("dpo_ln", "joint", 1)
    assert joint.train.register_model is False and joint.train.epochs == 1.5
    assert joint.train.batch_size == 6 and joint.train.micro_batch_size == 4
    assert joint.train.heldout_fraction == 0.2
    assert joint.mlflow.experiment == cfg.bench_alignment.experiment
    assert joint.evaluate.backend == "inprocess"
    timing = cell_config(cfg, Cell("timing_only", 1)).train
    assert timing.pair_types == ["interruption", "silence"] and timing.stream == "text"
    assert cell_config(cfg, Cell("simpo", 1)).train.loss == "simpo"
    seeds = {cell_config(cfg, Cell("champion", s)).evaluate.seed for s in (1, 2)}
    assert len(seeds) == 2 and cfg.bootstrap.seed not in seeds
    curve = cell_config(cfg, Cell("dpo_ln_no_early_stop", 1)).train
    assert curve.epochs == 5.0 and curve.patience >= 10**6
    assert curve.max_replay_growth >= 10**6
    # the cell key follows the settings, the seed and the data
    a = cell_key(cell_config(cfg, Cell("dpo", 1)), Cell("dpo", 1), "v1", "sha")
    assert a != cell_key(cell_config(cfg, Cell("dpo", 2)), Cell("dpo", 2), "v1", "sha")
    assert a != cell_key(cell_config(cfg, Cell("dpo", 1)), Cell("dpo", 1), "v2", "sha")
    assert a == cell_key(cell_config(cfg, Cell("dpo", 1)), Cell("dpo", 1), "v1", "sha")


def test_the_dataset_is_addressed_by_world_seed_size_and_champion():
    cfg = _cfg(world_seed=23, exchanges_max=2)
    dcfg = dataset_config(cfg)
    assert dcfg.policy.seed == 23 and dcfg.policy.exchanges_max == 2
    assert dcfg.storage.bucket.endswith("-bench-alignment")
    other = dataset_config(_cfg(world_seed=24, exchanges_max=2))
    assert dataset_key(dcfg, "sha", 200) != dataset_key(other, "sha", 200)
    assert dataset_key(dcfg, "sha", 200) != dataset_key(dcfg, "sha", 201)
    assert dataset_key(dcfg, "sha", 200) != dataset_key(dcfg, "sha2", 200)
    assert dataset_key(dcfg, "sha", 200) == dataset_key(dataset_config(cfg), "sha", 200)


def test_a_claim_holds_only_beyond_the_seed_spread():
    results = [_result("champion", s, silence=0.50 + d) for s, d in ((1, 0.0), (2, 0.02),
                                                                     (3, -0.02))]
    results += [_result("dpo_ln", s, silence=0.30 + d) for s, d in ((1, 0.0), (2, 0.03),
                                                                   (3, -0.03))]
    results += [_result("dpo", s, silence=0.47 + d) for s, d in ((1, 0.0), (2, 0.05), (3, -0.05))]
    results.append(_result("simpo", 1, silence=0.60))
    rows = row_stats(results)
    better = judge_claim(Claim("silence", "dpo_ln", "champion", "t"), rows)
    assert better.status == "holds" and better.delta == pytest.approx(0.2)
    # the noise: the items' 95% interval (60 items a row) is wider than the seeds' 0.02 + 0.03
    sampling = 1.96 * ((0.3 * 0.7 + 0.5 * 0.5) / 60) ** 0.5
    assert better.noise == pytest.approx(sampling) and sampling > 0.05
    assert "sampling interval" in better.note
    noisy = judge_claim(Claim("silence", "dpo", "champion", "t"), rows)
    assert noisy.status == "same direction, within the noise"
    # two seeds that agree (no spread) do not make a one-item difference real
    tie = row_stats([_result("champion", s, qa=0.0) for s in (1, 2)]
                    + [_result("dpo_ln", s, qa=0.05) for s in (1, 2)])
    assert tie["champion"].sd("qa_seen") == 0.0
    assert judge_claim(Claim("qa_seen", "dpo_ln", "champion", "t"), tie).status == \
        "same direction, within the noise"
    worse = judge_claim(Claim("silence", "simpo", "dpo_ln", "t"), rows)
    assert worse.status == "reversed" and "one seed" in worse.note
    missing = judge_claim(Claim("qa_seen", "apo_zero", "dpo", "t"), rows)
    assert missing.status == "not measured"
    # safety is the mean of refusing unsafe requests and answering benign ones
    assert rows["champion"].mean("safety") == pytest.approx((0.5 + 0.7) / 2)


def test_early_stopping_replayed_on_a_curve_trained_past_it():
    cfg = cell_config(_cfg(patience=2), Cell("dpo_ln", 1)).train
    scores = [0.50, 0.55, 0.62, 0.60, 0.58, 0.52, 0.45]
    history = [{"step": 6 * i, "generation_score": s, "replay_length": 10.0}
               for i, s in enumerate(scores)]
    out = where_early_stopping_fires(history, cfg)
    assert out["stop_step"] == 24 and out["best_step_at_stop"] == 12
    assert out["kept_value"] == 0.62 and out["after_stop"] == [0.52, 0.45]
    assert out["nothing_better_after_stop"] is True and out["final_value"] == 0.45
    late = [dict(h) for h in history]
    late[-1]["generation_score"] = 0.9  # a curve that recovers: stopping was premature
    assert where_early_stopping_fires(late, cfg)["nothing_better_after_stop"] is False
    rising = [{"step": 6 * i, "generation_score": 0.1 * i} for i in range(5)]
    assert where_early_stopping_fires(rising, cfg)["stop_step"] is None


def test_the_report_says_what_held_and_draws_the_curves():
    history = [{"step": s, "heldout_accuracy": a, "heldout_margin": m, "generation_score": g,
                "silence": 0.4 - s / 100} for s, a, m, g in
               ((0, 0.5, 0.0, 0.5), (6, 0.7, 0.1, 0.6), (12, 0.8, 0.2, 0.55))]
    train = {"best_step": 6, "stopped_at_step": 12, "stop_reason": "patience",
             "total_steps": 40, "train_pairs": 30, "heldout_pairs": 8}
    results = [_result("champion", 1), _result("champion", 2, silence=0.45),
               _result("dpo_ln", 1, silence=0.1, history=history, train=train),
               _result("dpo_ln", 2, silence=0.15, history=history, train=train),
               _result("dpo_ln_no_early_stop", 1, history=history,
                       train={**train, "stopped_at_step": 40})]
    cfg = _cfg(seeds=[1, 2])
    summary = summarise(results, cell_config(cfg, Cell("dpo_ln", 1)).train)
    findings = plain_findings(summary)
    # silence, and so timing errors (the mean of the interruption and silence rates)
    assert findings[0] == "targets: 2 of 5 measured hold beyond the noise"
    rows = summary["rows"]
    assert rows["dpo_ln"]["mean"]["timing"] == pytest.approx(
        (rows["dpo_ln"]["mean"]["interruption"] + rows["dpo_ln"]["mean"]["silence"]) / 2)
    assert any(line.startswith("DPO-LN better than champion (no training) on silence rate")
               and "holds" in line for line in findings)
    assert any("early stopping" in line for line in findings)
    dataset = BenchDataset(key="k", world_seed=11, conversations=200, champion="m/1",
                           champion_sha256="sha", bucket="b", versions={"logged": "v"})
    page = render(cfg, dataset, results, summary, ["simpo/seed1"], None)
    # the table plot, the timing plot (interruption vs silence), one curve per trained cell
    assert page.count("<img") == 2 + 3 and 'alt="interruption vs silence per row"' in page
    assert "Not run yet" in page and "simpo/seed1" in page
    assert "DPO-LN" in page and "39.2" in page  # the paper's figure beside ours
    key = report_key(dataset, results, [])
    assert key == report_key(dataset, list(reversed(results)), [])
    assert key != report_key(dataset, results[:-1], [])
    assert key != report_key(dataset, results, ["simpo/seed1"])


def test_cli_flags_override_the_bench_section():
    args = argparse.Namespace(conversations=300, seeds=[7, 8, 9], budget_minutes=30.0,
                              world_seed=5)
    cfg = apply_args(load_config("demo"), args)
    b = cfg.bench_alignment
    assert (b.conversations, b.seeds, b.budget_minutes, b.world_seed) == (300, [7, 8, 9], 30.0, 5)
    with pytest.raises(ValueError):
        apply_args(load_config("demo"), argparse.Namespace(seeds=[], budget_minutes=-1.0))
