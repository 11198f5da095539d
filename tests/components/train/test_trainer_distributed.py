"""The training loop data-parallel: two processes (gloo on CPU, the tiny Moshi LM sharded with
FSDP2) run PreferenceTrainer on the synthetic pairs of the live S3 store and end where one
process ends on the same data and settings: the same per-step losses and gradient norms, the same
evaluations and stopping point, the same weights. Checkpoints: only rank 0 writes (each rank has
a work dir of its own here, as on separate nodes); a paused 2-process run resumes to the
uninterrupted 2-process result, and a resume file resumes at the other world size (2 → 1, 1 → 2).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import shutil
import socket
from pathlib import Path

import pytest
import torch

from components.common.storage import ObjectStore
from components.model.spec import build_lm, lm_kwargs
from components.train.data import load_train_data
from components.train.distributed import (
    DistContext,
    barrier,
    full_model_state_dict,
    process_group,
    wrap_model,
)
from components.train.moshi_policy import MoshiTextPolicy
from components.train.reference import reference_logps
from components.train.step import score
from components.train.trainer import BEST_NAME, RESUME_NAME, PreferenceTrainer
from tests.components.model.helpers import Layout
from tests.components.train.synthetic import store_dataset, synthetic_pairs
from tests.components.train.test_trainer import SERVING, train_cfg

pytestmark = pytest.mark.integration

WORLD = 2
PAUSE_AT = 2


def settings(**over):
    # 4 pairs a step: 2 per rank, one micro-batch each (gradient accumulation on every rank);
    # criterion "generation" without generation metrics: the fallback note is recorded
    base = {"micro_batch_size": 1, "max_steps": 4, "eval_every": 2, "checkpoint_every": 1,
            "criterion": "generation"}
    return train_cfg(**{**base, **over})


def build(store: ObjectStore, version: str, tcfg, work_dir: Path, reference, *,
          ctx: DistContext | None = None, logged: list | None = None, wrap: bool = True,
          score_first: bool = False, **kwargs) -> PreferenceTrainer:
    """A trainer as a fresh process builds it: new model (seed 0), sharded when distributed;
    ``score_first``: a no-grad scoring pass before the trainer, as the stage's reference
    log-probs (FSDP then holds the root unsharded: the optimizer must still get the shards)."""
    data = load_train_data(store, version, model_version=SERVING, on_policy=True,
                           heldout_fraction=tcfg.heldout_fraction, seed=tcfg.seed,
                           min_pairs=tcfg.min_pairs)
    lm = build_lm(lm_kwargs("tiny", Layout(4), context=64), seed=0)
    policy = MoshiTextPolicy(lm, tcfg)
    if ctx is not None and wrap:
        wrap_model(lm, ctx, tcfg, device=torch.device("cpu"))
    if score_first:
        score(policy, policy.collate(data.heldout()[:1]))
    sink = logged if logged is not None else []
    return PreferenceTrainer(policy, data, reference, tcfg, work_dir=work_dir, progress=False,
                             on_log=lambda step, m: sink.append((step, m)), ctx=ctx, **kwargs)


def _refused(fn) -> str:
    try:
        fn()
    except ValueError as exc:
        return str(exc)
    return ""


def _worker(rank: int, storage, prefix: str, version: str, reference, port: int,
            tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    ctx = DistContext.from_env()
    root = Path(tmp)
    with process_group(ctx, torch.device("cpu")):
        store = ObjectStore.from_config(storage, prefix=prefix)
        tcfg = settings()

        def own(name: str) -> Path:  # this rank's work dir, as if on a node of its own
            return root / f"{name}-rank{rank}"

        refused = {
            "batch": _refused(lambda: build(store, version, settings(batch_size=3), own("x"),
                                            reference, ctx=ctx)),
            "unwrapped": _refused(lambda: build(store, version, tcfg, own("x"), reference,
                                                ctx=ctx, wrap=False)),
            "generation": _refused(lambda: build(store, version, tcfg, own("x"), reference,
                                                 ctx=ctx, generation=lambda: {})),
        }

        logged: list = []
        straight = build(store, version, tcfg, own("straight"), reference, ctx=ctx,
                         logged=logged, score_first=True)
        outcome = straight.run()
        weights = full_model_state_dict(straight.policy.model, ctx)

        paused = build(store, version, tcfg, own("paused"), reference, ctx=ctx)
        first = paused.run(stop_after_steps=PAUSE_AT)
        if ctx.is_main:  # for the parent: one process resumes what two processes wrote
            shutil.copytree(own("paused"), root / "dist-paused")
        barrier(ctx)
        resumed = build(store, version, tcfg, own("paused"), reference, ctx=ctx)
        second = resumed.run()
        resumed_weights = full_model_state_dict(resumed.policy.model, ctx)

        # two processes resume what one process wrote (rank 1 has no file: rank 0 reads)
        single = own("from-single")
        if ctx.is_main:
            shutil.copytree(root / "single-paused", single)
        from_single = build(store, version, tcfg, single, reference, ctx=ctx)
        third = from_single.run()
        from_single_weights = full_model_state_dict(from_single.policy.model, ctx)

        torch.save({"refused": refused, "logged": logged, "outcome": outcome.to_dict(),
                    "weights": weights, "note": straight.early.fallback_note,
                    "criterion": straight.early.criterion, "first": first.to_dict(),
                    "second": second.to_dict(), "resumed_weights": resumed_weights,
                    "third": third.to_dict(), "from_single_weights": from_single_weights,
                    "files": sorted(p.name for p in own("straight").iterdir())},
                   root / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_weights_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        # atol: Adam divides by sqrt(v), so a gradient summed in another order (per rank, then
        # reduced) can move a weight by ~1e-6 differently; a wrong reduction moves it by ~lr
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=f"{name} differs")


@pytest.mark.timeout(240)
def test_two_processes_train_like_one(store, services_config, tmp_path) -> None:
    import torch.multiprocessing as mp

    # fork, not spawn: the children inherit the imported torch/moshi/dynamo instead of
    # importing them again (FSDP2 imports torch._dynamo on first use)
    import torch._dynamo  # noqa: F401

    tcfg = settings()
    manifest = store_dataset(store, synthetic_pairs(24), tokenizer_hash="spm-test",
                             codec_hash="mimi-test", serving=SERVING)
    version = manifest.version
    data = load_train_data(store, version, model_version=SERVING, on_policy=True,
                           heldout_fraction=tcfg.heldout_fraction, seed=tcfg.seed,
                           min_pairs=tcfg.min_pairs)
    reference = reference_logps(store, MoshiTextPolicy(build_lm(lm_kwargs("tiny", Layout(4),
                                                                          context=64), seed=0),
                                                       tcfg),
                                [data.all_pairs()], dataset_version=version,
                                reference_sha256="init-seed-0", scoring={"t": 1}, batch_size=4,
                                progress=False)
    # one process pauses a run, for two processes to resume
    assert not build(store, version, tcfg, tmp_path / "single-paused",
                     reference).run(stop_after_steps=PAUSE_AT).completed

    mp.start_processes(_worker, args=(services_config.storage, store.prefix, version, reference,
                                      _free_port(), str(tmp_path)),
                       nprocs=WORLD, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    dist = ranks[0]

    # the trainer refuses what would deadlock or cannot run under FSDP
    assert "multiple of the 2 processes" in dist["refused"]["batch"]
    assert "wrap_model" in dist["refused"]["unwrapped"]
    assert "LMGen" in dist["refused"]["generation"]
    assert dist["criterion"] == "heldout_accuracy" and "distributed" in dist["note"]

    logged: list = []
    single = build(store, version, tcfg, tmp_path / "single", reference, logged=logged)
    expected = single.run()
    want = single.policy.model.state_dict()

    # per-step losses, accuracies, margins and gradient norms: global over the ranks
    steps = [m for _, m in logged if "train/loss" in m]
    got_steps = [m for _, m in dist["logged"] if "train/loss" in m]
    assert len(got_steps) == len(steps) == expected.steps == 4
    for got, exp in zip(got_steps, steps):
        assert got["train/pairs"] == exp["train/pairs"] == 4
        assert got["train/positions"] == exp["train/positions"]
        for key in ("train/loss", "train/margins", "train/chosen_rewards", "train/logps_chosen",
                    "train/grad_norm"):
            assert got[key] == pytest.approx(exp[key], rel=1e-4, abs=1e-7), key
        assert got["train/accuracy"] == exp["train/accuracy"]
    assert steps[-1]["train/loss"] < steps[0]["train/loss"] - 0.05  # it did train
    # the same evaluations, the same best step and stop
    out = dist["outcome"]
    assert (out["stopped_at_step"], out["best_step"], out["stop_reason"]) == \
        (expected.stopped_at_step, expected.best_step, expected.stop_reason)
    assert [h["step"] for h in out["history"]] == [h["step"] for h in expected.history]
    for got, exp in zip(out["history"], expected.history):
        assert got["heldout_accuracy"] == exp["heldout_accuracy"]
        assert got["heldout_loss"] == pytest.approx(exp["heldout_loss"], rel=1e-4)
    # the weights the run ends with: the best checkpoint's, gathered from the shards
    _assert_weights_close(dist["weights"], want)

    # every rank saw the same run; only rank 0 logged and wrote files
    other = ranks[1]
    assert other["outcome"]["history"] == out["history"]
    assert other["outcome"]["best_step"] == out["best_step"]
    assert other["logged"] == [] and other["weights"] == {}
    assert {RESUME_NAME, BEST_NAME} <= set(dist["files"]) and other["files"] == []

    # paused after 2 steps, resumed by two fresh processes: the uninterrupted 2-process run
    assert not dist["first"]["completed"] and dist["first"]["steps"] == PAUSE_AT
    assert dist["second"]["completed"] and dist["second"]["steps"] == 4
    assert dist["second"]["best_step"] == out["best_step"]
    for name, value in dist["weights"].items():
        assert torch.equal(dist["resumed_weights"][name], value), name
    assert [h.get("heldout_loss") for h in dist["second"]["history"]] == \
        [h.get("heldout_loss") for h in out["history"]]

    # across world sizes: 1 → 2 and 2 → 1 resume to the same result
    assert dist["third"]["steps"] == 4 and dist["third"]["best_step"] == expected.best_step
    _assert_weights_close(dist["from_single_weights"], want)
    state = torch.load(tmp_path / "dist-paused" / RESUME_NAME, weights_only=False)
    assert state["optimizer_layout"] == "named" and state["step"] == PAUSE_AT
    # the depformer had no gradient (text-only loss): no optimizer state, as in one process
    assert not any(k.startswith("depformer") for k in state["optimizer"]["state"])
    one = build(store, version, tcfg, tmp_path / "dist-paused", reference)
    assert one.run().best_step == expected.best_step
    _assert_weights_close(one.policy.model.state_dict(), want)
