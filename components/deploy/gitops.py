"""GitOps: each rollout step as a commit-ready change of the manifest in the GitOps repository.

``plan_step`` computes the change (new manifest, unified diff against the file in the checkout,
commit message, the gate's decision record to attach); ``write_change`` writes the files into the
checkout; ``commit_change`` records them as a commit on a NEW branch without touching the
checkout's working tree or current branch (git plumbing on a private index), so a human reviews
and merges it: merging is the approval. Nothing here talks to a cluster: Argo CD (with
self-heal) syncs the merged manifest, and anything applied behind its back would be undone.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import yaml

from components.deploy.inferenceservice import (
    ServedModel,
    StepRefused,
    canary_manifest,
    init_manifest,
    promote_manifest,
    read_state,
    rollback_manifest,
)

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config
    from components.common.storage import ObjectStore

Step = Literal["init", "canary", "promote", "rollback"]
STEPS: tuple[str, ...] = ("init", "canary", "promote", "rollback")


class GateNotPassed(StepRefused):
    """No gate decision, or not "promote", for the model a canary/promotion would serve."""


@dataclass
class Change:
    """One commit-ready change of the GitOps repository."""

    step: str
    repo: Path  # the GitOps checkout
    manifest_path: str  # relative to repo
    manifest: dict[str, Any]
    manifest_text: str
    current_text: str | None  # the file before (None: new)
    diff: str  # unified diff of the manifest
    message: str  # commit message
    branch: str  # the branch commit_change creates
    decision: dict[str, Any] | None = None  # the gate's decision record attached
    decision_path: str | None = None  # relative to repo
    files: dict[str, str] = field(default_factory=dict)  # relative path → new content

    @property
    def changed_paths(self) -> list[str]:
        before = yaml.safe_load(self.current_text) if self.current_text else {}
        return changed_paths(before or {}, self.manifest)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "repo": str(self.repo), "manifest_path": self.manifest_path,
                "branch": self.branch, "decision_path": self.decision_path,
                "files": sorted(self.files), "changed_paths": self.changed_paths,
                "message": self.message, "diff": self.diff}


def changed_paths(a: Any, b: Any, path: str = "") -> list[str]:
    """JSON-pointer paths where two manifests differ (added, removed or changed leaves; list
    elements by index)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"
            if key not in a or key not in b:
                out.append(sub)
            else:
                out += changed_paths(a[key], b[key], sub)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in changed_paths(x, y, f"{path}/{i}")]
    return [] if a == b else [path or "/"]


def dump_manifest(manifest: dict[str, Any]) -> str:
    """YAML in the manifest's own key order (a re-dump of a loaded file diffs minimally)."""
    return yaml.safe_dump(manifest, sort_keys=False, width=100)


def decision_relpath(cfg: "Config", model_version: str) -> str:
    """Where a gate record sits next to the manifest: <manifest dir>/decisions/<model>.json."""
    from components.contract import Keys

    folder = PurePosixPath(cfg.deploy.manifest_path).parent
    return str(folder / "decisions" / f"{Keys.model_tag_segment(model_version)}.json")


def load_gate_record(store: "ObjectStore", model_version: str,
                     key: str | None = None) -> dict[str, Any] | None:
    """The gate's decision record about a model, read as JSON from the object store by its
    contract key (``Keys.gate_decision``; ``key`` overrides), or None."""
    from components.contract import Keys

    key = key or Keys.gate_decision(model_version)
    return store.get_json(key) if store.exists(key) else None


def _require_promote(record: dict[str, Any] | None, model_version: str, force: bool) -> str:
    """"" when the record says promote; else the refusal (raised unless ``force``)."""
    if record is None:
        problem = (f"no gate decision for {model_version}: run `duplexalign gate` (the evaluate "
                   "stage) first")
    elif record.get("verdict") != "promote":
        problem = (f"the gate's verdict on {model_version} is {record.get('verdict')!r}: "
                   + "; ".join(record.get("reasons") or []))
    else:
        return ""
    if not force:
        raise GateNotPassed(problem + " (--force overrides, and says so in the commit)")
    return f"FORCED past the gate: {problem}"


def _gate_lines(record: dict[str, Any] | None, relpath: str | None, forced: str) -> list[str]:
    if record is None:
        return ["Gate: no decision record attached"] + ([forced] if forced else [])
    lines = [f"Gate: {str(record.get('verdict', '?')).upper()} "
             f"({record.get('challenger', {}).get('model_version', '?')} vs "
             f"{record.get('champion', {}).get('model_version', '?')}), record: {relpath}"]
    if record.get("key"):
        lines.append(f"  object store: {record['key']}")
    if record.get("mlflow_run_id"):
        lines.append(f"  MLflow run: {record['mlflow_run_id']}")
    lines += [f"  - {r}" for r in record.get("reasons") or []]
    return lines + ([forced] if forced else [])


def plan_step(
    cfg: "Config",
    step: str,
    *,
    percent: int | None = None,
    source: str | None = None,
    store: "ObjectStore | None" = None,
    decision: dict[str, Any] | None = None,
    force: bool = False,
    served: ServedModel | None = None,
    current_manifest: dict[str, Any] | None = None,
) -> Change:
    """The change for ``step`` (init | canary | promote | rollback) against the manifest at
    ``cfg.deploy.gitops_repo / cfg.deploy.manifest_path``.

    init/canary resolve ``source`` (init: default ``serving.model_source``, the champion; canary:
    default ``train.alias``, the challenger) to a verified s3:// URI unless ``served`` is given.
    canary/promote attach the gate's record (``decision``, else read from ``store`` by the
    contract key) and refuse without a "promote" verdict unless ``force``.
    ``current_manifest``: the current state from elsewhere (direct mode: the live object)
    instead of the file (``{}``: there is none)."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}: one of {', '.join(STEPS)}")
    repo = Path(cfg.deploy.gitops_repo).expanduser().resolve()
    rel = cfg.deploy.manifest_path
    path = repo / rel
    if current_manifest is not None:
        current: dict[str, Any] | None = current_manifest or None  # {}: nothing there yet
        current_text: str | None = dump_manifest(current_manifest) if current else None
    else:
        current_text = path.read_text(encoding="utf-8") if path.is_file() else None
        current = yaml.safe_load(current_text) if current_text else None
    if step != "init" and current is None:
        raise StepRefused(f"{path} does not exist: render the champion first "
                          "(`duplexalign deploy --init`)")

    def resolve(default: str) -> ServedModel:
        if served is not None:
            return served
        from components.deploy.sources import resolve_source

        return ServedModel.from_source(resolve_source(cfg, source or default))

    record, forced, decision_path = decision, "", None
    percent_ = cfg.deploy.canary_percent if percent is None else int(percent)
    if step == "init":
        if current is not None and read_state(current).phase != "stable":
            raise StepRefused("a canary is in progress: promote or roll back first")
        model = resolve(cfg.serving.model_source)
        manifest = init_manifest(cfg, model)
        title = f"deploy: serve {model.model_version}"
    elif step == "canary":
        model = resolve(cfg.train.alias)
        if record is None and store is not None:
            record = load_gate_record(store, model.model_version)
        forced = _require_promote(record, model.model_version, force)
        decision_path = decision_relpath(cfg, model.model_version) if record else None
        manifest = canary_manifest(cfg, current, model, percent_, decision_path or "")
        stable = read_state(current).served.model_version
        title = f"deploy: canary {model.model_version} at {percent_}% (stable {stable})"
    elif step == "promote":
        state = read_state(current)
        manifest = promote_manifest(current)
        if record is None and store is not None:
            record = load_gate_record(store, state.served.model_version)
        forced = _require_promote(record, state.served.model_version, force)
        decision_path = state.gate_decision or (
            decision_relpath(cfg, state.served.model_version) if record else None)
        title = (f"deploy: promote {state.served.model_version} to 100% (replaces "
                 f"{state.previous.model_version if state.previous else '?'})")
    else:
        state = read_state(current)
        manifest = rollback_manifest(cfg, current)
        decision_path = state.gate_decision or None
        if state.phase == "canary":
            title = (f"deploy: roll back {state.served.model_version}: canary traffic to 0% "
                     "(commit 1 of 2)")
        else:
            back_to = state.previous.model_version if state.previous else "?"
            title = f"deploy: roll back to {back_to}: restore its model URI (commit 2 of 2)"
    text = dump_manifest(manifest)
    diff = "".join(difflib.unified_diff(
        (current_text or "").splitlines(keepends=True), text.splitlines(keepends=True),
        fromfile=f"a/{rel}" if current_text else "/dev/null", tofile=f"b/{rel}"))
    files = {rel: text}
    if record is not None and decision_path and step in ("canary", "promote"):
        import json

        files[decision_path] = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
    name = f"{cfg.deploy.namespace}/{cfg.deploy.name}"
    body = [f"InferenceService {name} ({rel}).", ""]
    body += _gate_lines(record, decision_path, forced) if step in ("canary", "promote") else (
        [f"Gate record of the rolled-back model: {decision_path}"] if decision_path else [])
    body += ["", "Merging this change approves it; Argo CD syncs it to the cluster.",
             "After the sync: `duplexalign deploy --status` (the registry alias moves only once "
             "the rollout is healthy)."]
    if step == "rollback" and read_state(current).phase == "canary":
        body.append("Then run `duplexalign deploy --rollback` again: commit 2 restores the "
                    "previous model's URI.")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    from components.contract import Keys

    subject = read_state(manifest).served.model_version
    branch = f"deploy/{step}-{Keys.model_tag_segment(subject)}-{stamp}"
    return Change(step=step, repo=repo, manifest_path=rel, manifest=manifest,
                  manifest_text=text, current_text=current_text, diff=diff,
                  message=title + "\n\n" + "\n".join(body) + "\n", branch=branch,
                  decision=record, decision_path=decision_path if record else None, files=files)


def write_change(change: Change) -> list[Path]:
    """Write the change's files into the checkout (never applies anything); their paths."""
    written = []
    for rel, content in change.files.items():
        path = change.repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)  # a half-written manifest must never be what Argo CD syncs
        written.append(path)
    return written


def _git(repo: Path, *args: str, env: dict[str, str] | None = None,
         stdin: str | None = None) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          input=stdin, env={**os.environ, **(env or {})}, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def commit_change(change: Change) -> str:
    """Commit the change's files on the new branch ``change.branch`` (parent: HEAD) and return
    the commit id. The checkout's index, working tree and current branch are left alone."""
    repo = change.repo
    _git(repo, "rev-parse", "--git-dir")
    head = _git(repo, "rev-parse", "HEAD")
    ident: dict[str, str] = {}
    for var, key, default in (("NAME", "user.name", "duplexalign deploy"),
                              ("EMAIL", "user.email", "deploy@duplexalign.invalid")):
        try:
            _git(repo, "config", key)
        except RuntimeError:  # no identity configured: a clearly marked machine identity
            ident[f"GIT_AUTHOR_{var}"] = ident[f"GIT_COMMITTER_{var}"] = default
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), **ident}
        _git(repo, "read-tree", head, env=env)
        for rel, content in change.files.items():
            blob = _git(repo, "hash-object", "-w", "--stdin", stdin=content)
            _git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}", env=env)
        tree = _git(repo, "write-tree", env=env)
        commit = _git(repo, "commit-tree", tree, "-p", head, "-F", "-", env=env,
                      stdin=change.message)
    _git(repo, "update-ref", f"refs/heads/{change.branch}", commit, "0" * 40)
    return commit
