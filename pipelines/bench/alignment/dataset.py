"""The bench's preference data: hundreds of short on-policy conversations of the champion, run
through the pipeline's own stages, once per world seed — content-addressed and resumable.

    champion serves N simulated users (world seed = policy.seed) ─▶ raw/ ─▶ ingest ─▶ transcribe
    ─▶ scrub ─▶ judge ─▶ pairs ─▶ resynthesize ─▶ tokenize ─▶ validate      dataset "logged"
                                  └▶ resynthesize (rejected side too) ─▶ tokenize   "resynthesized"

The second branch is the paper's audio-source control: chosen replies are TTS audio while the
rejected side keeps the model's own audio, a difference the optimiser could learn instead of the
content; resynthesising the rejected side too removes it.

Identity: the key hashes the champion's weights, the world seed, the number of conversations and
every config section the stages read — the same key is the same data. Progress is a state object
``bench/alignment/datasets/<key>.json`` in the bench bucket, written after each step: a rerun
skips the steps it records, and each stage skips the items it finished (its completion markers),
so a build killed anywhere resumes where it stopped and nothing is done twice. The features and
mix stages are not run: on the embedded profiles the mix keeps every pair (``mix.timing_fraction``
is unset), so the bench trains on the whole dataset.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from components.common.config import Config
from components.common.storage import ObjectStore
from components.contract import canonical_json
from pipelines.bench.common import bench_bucket, say, with_bucket

BUCKET = "alignment"
STATE_PREFIX = "bench/alignment/datasets"
DATASET_VERSION = 1  # bump when the build changes what it produces
# The config sections the stages read: a change to any of them is another dataset.
SECTIONS = ("simulate", "policy", "ingest", "transcribe", "scrub", "judge", "pairs",
            "resynthesize", "tokenize", "streams", "model", "validation")
VARIANTS = ("logged", "resynthesized")  # the rejected side's audio


@dataclass
class BenchDataset:
    """A built dataset: its key, the pair-dataset versions of both variants, what the pipeline
    made of the conversations, and how long each step took."""

    key: str
    world_seed: int
    conversations: int
    champion: str  # the serving tag of the model whose conversations these are
    champion_sha256: str
    bucket: str
    steps: dict[str, str] = field(default_factory=dict)  # step -> output manifest id
    versions: dict[str, str] = field(default_factory=dict)  # variant -> pair dataset version
    figures: dict[str, Any] = field(default_factory=dict)  # counts of each step
    seconds: dict[str, float] = field(default_factory=dict)
    complete: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchDataset":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def world_seed_of(cfg: Config) -> int:
    return cfg.bench_alignment.world_seed or cfg.policy.seed


def dataset_config(cfg: Config) -> Config:
    """The configuration the stages run with: the bench's own bucket, the world seed as the
    simulated users' seed, short conversations."""
    b = cfg.bench_alignment
    dcfg = with_bucket(cfg, bench_bucket(cfg, BUCKET))
    dcfg.policy.seed = world_seed_of(cfg)
    dcfg.policy.exchanges_max = min(dcfg.policy.exchanges_max, b.exchanges_max)
    dcfg.policy.exchanges_min = min(dcfg.policy.exchanges_min, dcfg.policy.exchanges_max)
    return dcfg


def dataset_key(dcfg: Config, champion_sha256: str, conversations: int) -> str:
    body = {"version": DATASET_VERSION, "champion": champion_sha256,
            "conversations": conversations,
            "config": {name: getattr(dcfg, name).model_dump(mode="json") for name in SECTIONS}}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def _state_key(key: str) -> str:
    return f"{STATE_PREFIX}/{key}.json"


def load_dataset(cfg: Config, key: str) -> BenchDataset | None:
    store = ObjectStore.from_config(dataset_config(cfg).storage)
    state_key = _state_key(key)
    return BenchDataset.from_dict(store.get_json(state_key)) if store.exists(state_key) else None


def build_dataset(cfg: Config, *, progress: bool = True) -> BenchDataset:
    """Build (or finish, or return) the bench dataset of ``cfg`` (module docstring)."""
    from components.model.checkpoint import read_identity
    from components.model.registry import model_version_tag, resolve_model

    dcfg = dataset_config(cfg)
    n = cfg.bench_alignment.conversations
    store = ObjectStore.from_config(dcfg.storage)
    store.ensure_bucket(versioning=True)
    champion = model_version_tag(dcfg, "champion")
    identity = read_identity(resolve_model(dcfg, "champion"))
    if identity is None:
        raise ValueError("the champion checkpoint has no duplexalign.json (run duplexalign "
                         "bootstrap, or import it with duplexalign model import)")
    key = dataset_key(dcfg, identity.weights_sha256, n)
    state = load_dataset(cfg, key) or BenchDataset(
        key=key, world_seed=world_seed_of(cfg), conversations=n, champion=champion,
        champion_sha256=identity.weights_sha256, bucket=dcfg.storage.bucket)
    if state.complete:
        if progress:
            say(f"dataset {key}: built earlier ({state.versions})")
        return state

    def step(name: str, run: Callable[[], tuple[str, dict[str, Any]]]) -> str:
        if name in state.steps:
            return state.steps[name]
        if progress:
            say(f"dataset {key}: {name}")
        t0 = time.monotonic()
        output, figures = run()
        state.steps[name] = output
        state.figures[name] = figures
        state.seconds[name] = round(time.monotonic() - t0, 1)
        store.put_json(_state_key(key), state.to_dict())  # after the step: a crash redoes it
        return output

    for variant, (resynthesize_id, tokenize_id) in _run_stages(dcfg, state, step, n).items():
        state.versions[variant] = _dataset_of(store, tokenize_id)
    state.complete = True
    store.put_json(_state_key(key), state.to_dict())
    if progress:
        say(f"dataset {key}: {state.versions} in {sum(state.seconds.values()):.0f}s of steps")
    return state


def _counts(run: Any) -> dict[str, Any]:
    manifest = run.manifest
    return {"items": manifest.counts.get("items", 0),
            "rejected": manifest.counts.get("rejected", 0)}


def _dataset_of(store: ObjectStore, tokenize_manifest_id: str) -> str:
    from components.common.stagekit import load_manifest

    version = load_manifest(store, tokenize_manifest_id).stats.get("pairs_dataset")
    if not version:
        raise RuntimeError(f"{tokenize_manifest_id}: no pairs were tokenised (too few "
                           "conversations for any preference pair?)")
    return str(version)


def _run_stages(dcfg: Config, state: BenchDataset, step: Callable[..., str],
                n: int) -> dict[str, tuple[str, str]]:
    """The pipeline's stages in its order, each once (``step`` records and skips)."""
    from components.ingest.logic import ingest
    from components.judge.logic import judge
    from components.pairs.logic import build_pairs
    from components.resynthesize.logic import resynthesize
    from components.scrub.logic import scrub
    from components.simulate.live import simulate_with_policy
    from components.tokenize.logic import tokenize
    from components.transcribe.logic import transcribe
    from components.validate.logic import validate_dataset

    batch = f"bench-alignment-{state.key}"

    def simulate() -> tuple[str, dict[str, Any]]:
        sim = simulate_with_policy(dcfg, "champion", n=n, batch=batch)
        return sim.manifest_id, sim.summary()

    def stage(fn: Callable[[Config, str], Any], source: str,
              cfg: Config = dcfg) -> Callable[[], tuple[str, dict[str, Any]]]:
        def run() -> tuple[str, dict[str, Any]]:
            out = fn(cfg, state.steps[source])
            return out.manifest.manifest_id, _counts(out)
        return run

    def validate() -> tuple[str, dict[str, Any]]:
        outcome = validate_dataset(dcfg, state.steps["tokenize"])
        outcome.raise_for_critical()  # the gate: a dataset it stops is not trained on
        return outcome.manifest_id, {"passed": len(outcome.passed),
                                     "failed": [f["name"] for f in outcome.failed],
                                     "report": outcome.report_key}

    control = dcfg.model_copy(deep=True)
    control.resynthesize.rejected_audio = "resynthesized"
    step("simulate", simulate)
    step("ingest", stage(ingest, "simulate"))
    step("transcribe", stage(transcribe, "ingest"))
    step("scrub", stage(scrub, "transcribe"))
    step("judge", stage(judge, "scrub"))
    step("pairs", stage(build_pairs, "judge"))
    step("resynthesize", stage(resynthesize, "pairs"))
    step("tokenize", stage(tokenize, "resynthesize"))
    step("validate", validate)
    step("resynthesize_control", stage(resynthesize, "pairs", control))
    step("tokenize_control", stage(tokenize, "resynthesize_control", control))
    return {"logged": (state.steps["resynthesize"], state.steps["tokenize"]),
            "resynthesized": (state.steps["resynthesize_control"],
                              state.steps["tokenize_control"])}
