"""``duplexalign deploy``: one rollout step of the served model (see docs/deploy.md).

GitOps mode (default) writes the commit-ready change into the GitOps checkout, or with
``commit`` records it as a commit on a new branch instead (the checkout is left alone, ready for
the merge); it never applies anything. Direct mode reads the live
InferenceService and applies the step through the Kubernetes API when ``apply`` is given (else it
only shows the plan). ``status`` checks the rollout's health (direct: the live object; GitOps: a
saved ``kubectl get isvc -o json``), moves the registry aliases only when the rollout is healthy,
and during a canary turns live metrics into a promote/rollback/wait recommendation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config
    from components.common.storage import ObjectStore

STEPS = ("init", "canary", "promote", "rollback", "status")


class DeployRefused(RuntimeError):
    """The deploy call asks for something its mode forbids (e.g. applying in GitOps mode)."""


@dataclass
class DeployResult:
    step: str
    mode: str
    manifest_path: str = ""  # the rendered manifest (GitOps: in the checkout)
    change: dict[str, Any] | None = None  # Change.to_dict()
    written: list[str] = field(default_factory=list)
    branch: str = ""
    commit: str = ""
    applied: dict[str, Any] | None = None  # direct mode: Applied
    finalize: dict[str, Any] | None = None  # status: FinalizeResult.to_dict()
    recommendation: dict[str, Any] | None = None  # status during a canary

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _store(cfg: "Config") -> "ObjectStore":
    from components.common.storage import ObjectStore

    return ObjectStore.from_config(cfg.storage)


def _status(cfg: "Config", result: DeployResult, status_file: str | Path | None,
            metrics_urls: list[str], store: "ObjectStore | None") -> DeployResult:
    from components.deploy.canary import canary_figures, recommend, scrape
    from components.deploy.inferenceservice import read_state
    from components.deploy.rollout import finalize, load_status

    if status_file:
        live = load_status(status_file)
    elif cfg.deploy.mode == "direct":
        from components.deploy.direct import get_inferenceservice

        live = get_inferenceservice(cfg)
        if live is None:
            raise DeployRefused(f"no InferenceService {cfg.deploy.namespace}/{cfg.deploy.name}")
    else:
        raise DeployRefused("GitOps mode reads the rollout's status from a file: save "
                            f"`kubectl get isvc {cfg.deploy.name} -n {cfg.deploy.namespace} "
                            "-o json` and pass --status-file")
    expected = None
    manifest_file = Path(cfg.deploy.gitops_repo).expanduser() / cfg.deploy.manifest_path
    if cfg.deploy.mode == "gitops" and manifest_file.is_file():
        import yaml

        # the cluster must run what Git says (else: the change is not merged or not synced yet)
        expected = read_state(yaml.safe_load(manifest_file.read_text())).served.model_version
    state = read_state(live)
    # which step's outcome the live object shows (aliases move only for a promotion)
    last = ("rollback" if state.rolled_back or state.phase == "rolled-back-traffic" else
            "canary" if state.phase == "canary" else
            "promote" if state.previous is not None else "init")
    result.finalize = finalize(cfg, last, live, expected).to_dict()
    result.finalize["step"] = last
    if state.phase == "canary" and metrics_urls and state.previous is not None:
        canary, stable = canary_figures(
            cfg, canary_version=state.served.model_version,
            stable_version=state.previous.model_version, metrics_text=scrape(metrics_urls),
            store=store)
        result.recommendation = recommend(cfg, canary, stable).to_dict()
    return result


def deploy(
    cfg: "Config",
    step: str,
    percent: int | None = None,
    commit: bool = False,
    apply: bool = False,
    status_file: str | Path | None = None,
    *,
    source: str | None = None,
    force: bool = False,
    metrics_urls: list[str] | None = None,
    store: "ObjectStore | None" = None,
    decision: dict[str, Any] | None = None,
) -> DeployResult:
    """One step: init | canary | promote | rollback | status (see the module doc).

    ``source``: the model for init/canary (default: ``serving.model_source`` / ``train.alias``);
    ``force``: open a canary or promote without a "promote" gate verdict (said in the commit);
    ``metrics_urls``: each revision's /metrics, for the canary recommendation in ``status``;
    ``store``: where gate records and judgements are read (default: the data bucket);
    ``decision``: the gate's record itself (else read from ``store`` by its contract key)."""
    from components.deploy.gitops import commit_change, plan_step, write_change

    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}: one of {', '.join(STEPS)}")
    mode = cfg.deploy.mode
    result = DeployResult(step=step, mode=mode)
    if step == "status":
        needs_store = bool(metrics_urls)
        return _status(cfg, result, status_file, list(metrics_urls or []),
                       store if store is not None or not needs_store else _store(cfg))
    if mode == "gitops" and apply:
        raise DeployRefused("GitOps mode never applies (Argo CD's self-heal would undo it): "
                            "merge the change, or set deploy.mode=direct")
    if mode == "direct" and commit:
        raise DeployRefused("--commit is for GitOps mode; direct mode applies with --apply")
    if store is None and decision is None and step in ("canary", "promote"):
        store = _store(cfg)
    current = None
    if mode == "direct":
        from components.deploy.direct import get_inferenceservice, manifest_view

        live = get_inferenceservice(cfg)
        current = manifest_view(live) if live is not None else {}
    change = plan_step(cfg, step, percent=percent, source=source, store=store, force=force,
                       current_manifest=current, decision=decision)
    result.change = change.to_dict()
    if mode == "gitops":
        result.manifest_path = str(change.repo / change.manifest_path)
        if commit:  # on its own branch only: the checkout stays as it is for the merge
            result.commit = commit_change(change)
            result.branch = change.branch
        else:
            result.written = [str(p) for p in write_change(change)]
    elif apply:
        from components.deploy.direct import apply_manifest

        result.applied = apply_manifest(cfg, change.manifest).__dict__
    return result
