"""The grid of the alignment bench: which (row, seed) cells exist and how each one is configured.

Rows of the paper's table (one dataset, the same pairs for all): the champion as it serves, DPO,
SimPO, APO-Zero, DPO-LN and DPO-LN with the joint text+audio loss. Ablations, all DPO-LN on the
first seed: trained on content pairs only (A), interruption pairs only (B), silence pairs only
(C), timing pairs only (B+C) — "all" is the DPO-LN row —, or all with B : C at 1 : 1 and 2 : 1
(the data hold twice as many C as B: the ratio sets where timing lands); and on the
audio-source control dataset (the rejected side resynthesised too) — "kept" is the DPO-LN row.
One more cell trains DPO-LN past the point where early stopping would stop, for the curve that
shows what held-out quality does afterwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from components.common.config import Config

Group = Literal["algorithms", "data_types", "audio_source", "curve"]


@dataclass(frozen=True)
class Row:
    name: str
    label: str  # as the report prints it
    group: Group
    loss: str | None = None  # None: no training (the champion)
    stream: str = "text"
    pair_types: tuple[str, ...] = ()  # empty: every type
    dataset: str = "logged"  # which variant of the bench dataset (dataset.VARIANTS)
    early_stopping: bool = True
    multi_seed: bool = False  # measured on every seed of bench_alignment.seeds
    interruption_share: float | None = None  # train.interruption_share (None: the data's ratio)


ROWS: tuple[Row, ...] = (
    Row("champion", "champion (no training)", "algorithms", multi_seed=True),
    Row("dpo", "DPO", "algorithms", loss="dpo", multi_seed=True),
    Row("simpo", "SimPO", "algorithms", loss="simpo"),
    Row("apo_zero", "APO-Zero", "algorithms", loss="apo_zero"),
    Row("dpo_ln", "DPO-LN", "algorithms", loss="dpo_ln", multi_seed=True),
    Row("dpo_ln_joint", "DPO-LN, joint text+audio", "algorithms", loss="dpo_ln",
        stream="joint"),
    Row("content_only", "DPO-LN on content pairs (A)", "data_types", loss="dpo_ln",
        pair_types=("content",)),
    Row("interruption_only", "DPO-LN on interruption pairs (B)", "data_types", loss="dpo_ln",
        pair_types=("interruption",)),
    Row("silence_only", "DPO-LN on silence pairs (C)", "data_types", loss="dpo_ln",
        pair_types=("silence",)),
    Row("timing_only", "DPO-LN on timing pairs (B+C)", "data_types", loss="dpo_ln",
        pair_types=("interruption", "silence")),
    Row("timing_balanced", "DPO-LN, B : C balanced 1 : 1", "data_types", loss="dpo_ln",
        interruption_share=0.5),
    Row("timing_b_heavy", "DPO-LN, B : C = 2 : 1", "data_types", loss="dpo_ln",
        interruption_share=2 / 3),
    Row("rejected_resynthesized", "DPO-LN, rejected side resynthesised", "audio_source",
        loss="dpo_ln", dataset="resynthesized"),
    Row("dpo_ln_no_early_stop", "DPO-LN, early stopping off", "curve", loss="dpo_ln",
        early_stopping=False),
)
ROW_BY_NAME = {r.name: r for r in ROWS}
# The rows the ablation tables compare with ("all" pairs, rejected audio "kept").
REFERENCE_ROW = "dpo_ln"


@dataclass(frozen=True)
class Cell:
    row: str
    seed: int

    @property
    def spec(self) -> Row:
        return ROW_BY_NAME[self.row]

    @property
    def name(self) -> str:
        return f"{self.row}/seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "seed": self.seed, **{k: v for k, v in asdict(self.spec).items()
                                                       if k != "name"}}


def plan(cfg: Config, rows: list[str] | None = None) -> list[Cell]:
    """Every cell, in the order they run: the rows measured on every seed first (champion, DPO,
    DPO-LN, seed by seed: the targets need them), then the one-seed rows, the curve last — a
    budget that runs out leaves the claims that matter most measured."""
    seeds = cfg.bench_alignment.seeds
    unknown = set(rows or ()) - set(ROW_BY_NAME)
    if unknown:
        raise ValueError(f"unknown rows {sorted(unknown)}; known: {', '.join(ROW_BY_NAME)}")
    chosen = [r for r in ROWS if rows is None or r.name in rows]
    cells = [Cell(r.name, s) for s in seeds for r in chosen if r.multi_seed]
    cells += [Cell(r.name, seeds[0]) for r in chosen if not r.multi_seed and r.group != "curve"]
    cells += [Cell(r.name, seeds[0]) for r in chosen if r.group == "curve"]
    return cells


def cell_config(cfg: Config, cell: Cell) -> Config:
    """The configuration one cell trains and evaluates with: the profile's train section with the
    row's algorithm, the bench's schedule and the cell's seed; evaluation in process (lockstep:
    bit-reproducible for a seed) on the seed's own held-out conversations; the bench's MLflow
    experiment; no registration (a bench cell is not a challenger)."""
    b, row = cfg.bench_alignment, cell.spec
    ccfg = cfg.model_copy(deep=True)
    ccfg.mlflow.experiment = b.experiment
    train = {"seed": cell.seed, "epochs": b.curve_epochs if not row.early_stopping else b.epochs,
             "batch_size": b.batch_size, "micro_batch_size": min(b.batch_size, 4),
             "eval_every": b.eval_every, "patience": b.patience,
             "eval_conversations": b.eval_conversations, "heldout_fraction": b.heldout_fraction,
             "register_model": False,
             "policy_source": "champion", "max_steps": 0, "pair_types": list(row.pair_types),
             "stream": row.stream, "interruption_share": row.interruption_share}
    if row.loss is not None:
        train["loss"] = row.loss
    if not row.early_stopping:  # run the whole schedule; the best checkpoint is still kept
        train.update(patience=10**6, max_replay_growth=10**6)
    ccfg.train = ccfg.train.model_validate({**ccfg.train.model_dump(), **train})
    seed = ccfg.evaluate.seed + cell.seed
    if seed == ccfg.bootstrap.seed:  # evaluation contexts must not be the corpus's
        seed += 1000
    ccfg.evaluate = ccfg.evaluate.model_copy(update={"seed": seed, "backend": "inprocess"})
    return ccfg
