"""Is the rollout healthy, and only then: move the registry aliases.

The status is the live InferenceService object (direct mode: a GET; GitOps mode: the JSON of
``kubectl get isvc <name> -o json`` saved to a file), so the check sees the spec that produced
the status as well as the status. Healthy for a step means all of:

* the controller has seen this spec (``status.observedGeneration >= metadata.generation``);
* ``Ready`` is True;
* the predictor's ``latestReadyRevision == latestCreatedRevision`` (the newest template runs);
* traffic as the step expects: canary → the latest revision has N%, the rest on the previous;
  promote/init/rollback commit 2 → the latest revision has 100%; rollback commit 1 → 0%;
* the live object serves what the manifest of this step says (model-version annotation).

``finalize`` moves aliases only when healthy: promote → ``champion`` to the promoted version and
``previous-champion`` to the one it replaced. A rollback moves nothing: ``champion`` never left
the stable model, and the ``challenger`` alias stays on the rejected version so its evaluation,
gate record and canary figures remain inspectable (the next training run moves it); the version
is tagged ``deploy_outcome=rolled-back`` (promoted ones ``promoted``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.deploy.inferenceservice import read_state

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config

CHAMPION_ALIAS = "champion"
PREVIOUS_CHAMPION_ALIAS = "previous-champion"


@dataclass
class Health:
    healthy: bool
    phase: str  # stable | canary | rolled-back-traffic (of the live spec)
    model_version: str  # the live latest template's model
    latest_percent: int | None  # traffic on the latest revision
    reasons: list[str] = field(default_factory=list)  # why not healthy (empty when healthy)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def load_status(path: str | Path) -> dict[str, Any]:
    """A saved ``kubectl get isvc <name> -o json``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("kind") == "List":  # `kubectl get isvc -o json` without a name
        items = data.get("items") or []
        if len(items) != 1:
            raise ValueError(f"{path}: a list of {len(items)} objects; save one InferenceService")
        data = items[0]
    return data


def _ready(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and str(c.get("status")) == "True"
               for c in status.get("conditions") or [])


def check_health(obj: dict[str, Any], expected_model_version: str | None = None) -> Health:
    """Health of the live object for the step its own spec describes (see the module doc)."""
    state = read_state(obj)
    reasons: list[str] = []
    generation = (obj.get("metadata") or {}).get("generation")
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or int(observed) < int(generation)):
        reasons.append(f"status is of generation {observed}, the spec is generation {generation}")
    if not _ready(status):
        reasons.append("Ready is not True")
    pred = (status.get("components") or {}).get("predictor") or {}
    created, ready = pred.get("latestCreatedRevision"), pred.get("latestReadyRevision")
    if not created or created != ready:
        reasons.append(f"latest created revision {created} is not ready (ready: {ready})")
    traffic = pred.get("traffic") or []
    latest = [t for t in traffic if t.get("latestRevision") or
              (created and t.get("revisionName") == created)]
    latest_percent = int(sum(int(t.get("percent") or 0) for t in latest)) if latest else None
    want = {"canary": state.canary_percent, "rolled-back-traffic": 0}.get(state.phase, 100)
    if (latest_percent or 0) != want:
        reasons.append(f"latest revision has {latest_percent}% of traffic, the step wants {want}%")
    if sum(int(t.get("percent") or 0) for t in traffic) != 100:
        reasons.append("traffic does not add up to 100%")
    if expected_model_version and state.served.model_version != expected_model_version:
        reasons.append(f"the live spec serves {state.served.model_version}, not "
                       f"{expected_model_version} (not synced yet?)")
    return Health(not reasons, state.phase, state.served.model_version, latest_percent, reasons)


@dataclass
class FinalizeResult:
    health: Health
    moved: dict[str, str] = field(default_factory=dict)  # alias → version it now points at
    tagged: dict[str, str] = field(default_factory=dict)  # "name/version" → deploy_outcome
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"health": self.health.to_dict(), "moved": self.moved, "tagged": self.tagged,
                "note": self.note}


def finalize(cfg: "Config", step: str, status: dict[str, Any],
             expected_model_version: str | None = None) -> FinalizeResult:
    """After ``step`` rolled out: check health and, only when healthy, move the aliases (see the
    module doc). Idempotent: a second call finds the aliases already in place."""
    health = check_health(status, expected_model_version)
    result = FinalizeResult(health)
    if not health.healthy:
        result.note = "not healthy: no alias moved (" + "; ".join(health.reasons) + ")"
        return result
    if step not in ("promote", "rollback"):
        result.note = f"{step} healthy: aliases move only on a promotion"
        return result
    from mlflow import MlflowClient  # only now: importing MLflow takes seconds
    from mlflow.exceptions import MlflowException

    state = read_state(status)
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    if step == "promote" and health.phase == "stable":
        served = state.served
        if not served.registry_version:
            result.note = f"{served.model_version} is not a registry version: no alias to move"
            return result
        name = served.registry_name
        try:
            old = client.get_model_version_by_alias(name, CHAMPION_ALIAS).version
        except MlflowException:
            old = None
        if old is not None and str(old) != served.registry_version:
            client.set_registered_model_alias(name, PREVIOUS_CHAMPION_ALIAS, str(old))
            result.moved[PREVIOUS_CHAMPION_ALIAS] = str(old)
        if str(old) != served.registry_version:
            client.set_registered_model_alias(name, CHAMPION_ALIAS, served.registry_version)
            result.moved[CHAMPION_ALIAS] = served.registry_version
        client.set_model_version_tag(name, served.registry_version, "deploy_outcome", "promoted")
        result.tagged[served.model_version] = "promoted"
        result.note = "promoted: champion moved" if result.moved else "aliases already in place"
    elif step == "rollback":
        # commit 1 (0%) or commit 2 (previous restored): the rolled-back model is the served one
        # in phase rolled-back-traffic, or the `rolled-back` annotation after commit 2
        gone = state.served if health.phase == "rolled-back-traffic" else None
        name, version = (gone.registry_name, gone.registry_version) if gone else (
            _split_tag(state.rolled_back))
        if name and version:
            client.set_model_version_tag(name, version, "deploy_outcome", "rolled-back")
            result.tagged[f"{name}/{version}"] = "rolled-back"
        result.note = "rolled back: no alias moves (champion stayed on the stable model)"
    else:
        result.note = f"{step} healthy: aliases move only on a promotion"
    return result


def _split_tag(tag: str) -> tuple[str, str]:
    name, _, version = tag.rpartition("/")
    return (name, version) if name and version.isdigit() else ("", "")
