"""``duplexalign bench train --quick`` end to end through the CLI (tiny models, no services): the
figures are present and sane, ours and TRL train identically (no timing thresholds: those belong
to the real bench runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main


def test_bench_train_quick_prints_its_figures(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # One thread: on a shared 2-core box OpenMP threads spinning against other processes make a
    # multi-threaded step orders of magnitude slower.
    rc = main(["--profile", "ci", "--set", f"services.state_dir={tmp_path}", "--set",
               "train.threads=1", "bench", "train", "--quick"])
    out = capsys.readouterr().out
    assert rc == 0
    f = json.loads(out.strip().splitlines()[-1])
    assert "train bench" in out and "TRL" in out and "MFU" in out
    assert f["bench"] == "train" and f["quick"] is True and f["threads"] == 1
    # ours and TRL: same pairs, same weights, same updates
    assert f["trl_same_token_ids"] is True and f["trl_steps_run"] == f["hf_timed_steps"] + 1
    assert f["first_loss_equal"] and f["losses_equal"]
    assert len(f["ours_losses"]) == len(f["trl_losses"]) == f["hf_timed_steps"] + 1
    assert f["ours_first_loss"] == pytest.approx(0.6931472, abs=1e-6)  # policy = reference: log 2
    assert f["ours_losses"][-1] != f["ours_first_loss"]  # the steps moved the model
    for key in ("ours_tokens_per_s", "trl_tokens_per_s", "text_frames_per_s",
                "joint_frames_per_s", "text_uncached_frames_per_s", "peak_flops"):
        assert f[key] > 0, key
    assert f["speedup"] == pytest.approx(f["ours_tokens_per_s"] / f["trl_tokens_per_s"], rel=0.01)
    assert f["reference_cache_speedup"] == pytest.approx(
        f["text_frames_per_s"] / f["text_uncached_frames_per_s"], rel=0.01)
    assert f["joint_train_flops_per_frame"] > f["text_train_flops_per_frame"] > 0
    assert 0 < f["ours_mfu"] and 0 < f["text_mfu"] and 0 < f["joint_mfu"]
    assert f["device"] == "cpu" and "measured" in f["peak_source"]
    assert isinstance(f["meets_target"], bool) and f["target_speedup"] == 1.3
