"""GitOps changes: files written into a real git checkout, commits on new branches, the gate
record attached next to the manifest, refusals without a passing gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.common.config import Config
from components.deploy.crd import validate_manifest
from components.deploy.gitops import (
    GateNotPassed,
    commit_change,
    load_gate_record,
    plan_step,
    write_change,
)
from components.deploy.inferenceservice import StepRefused
from tests.components.deploy.conftest import CHALLENGER, CHAMPION, CRD, git, promote_record

MANIFEST = "manifests/serving/inferenceservice.yaml"
P = "/spec/predictor"


def _merge(repo: Path, branch: str) -> None:
    """What the human does: merge the change's branch (the approval)."""
    git(repo, "merge", "-q", "--ff-only", branch)


def test_canary_promote_through_git(deploy_cfg: Config, gitops_repo: Path) -> None:
    init = plan_step(deploy_cfg, "init", served=CHAMPION)
    assert init.current_text is None and init.diff.startswith("--- /dev/null")
    write_change(init)
    git(gitops_repo, "add", "-A")
    git(gitops_repo, "commit", "-q", "-m", "serve the champion")

    record = promote_record(CHALLENGER.model_version, CHAMPION.model_version)
    canary = plan_step(deploy_cfg, "canary", percent=20, served=CHALLENGER, decision=record)
    validate_manifest(canary.manifest, CRD)
    decision_rel = "manifests/serving/decisions/duplexalign-moshi-5.json"
    assert canary.decision_path == decision_rel
    assert sorted(canary.files) == [decision_rel, MANIFEST]
    assert "+    canaryTrafficPercent: 20" in canary.diff
    assert f"-        value: {CHAMPION.storage_uri}" in canary.diff
    assert f"+        value: {CHALLENGER.storage_uri}" in canary.diff
    assert canary.message.startswith(
        "deploy: canary duplexalign-moshi/5 at 20% (stable duplexalign-moshi/4)")
    assert f"Gate: PROMOTE (duplexalign-moshi/5 vs duplexalign-moshi/4), record: {decision_rel}" \
        in canary.message and "MLflow run: 0123abcd" in canary.message

    head_before = git(gitops_repo, "rev-parse", "HEAD")
    sha = commit_change(canary)
    # the checkout is untouched: same branch, same HEAD, clean tree; the commit is on a branch
    assert git(gitops_repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(gitops_repo, "rev-parse", "HEAD") == head_before
    assert git(gitops_repo, "status", "--porcelain") == ""
    assert git(gitops_repo, "rev-parse", canary.branch) == sha
    assert git(gitops_repo, "rev-parse", f"{sha}^") == head_before
    assert sorted(git(gitops_repo, "diff", "--name-only", head_before, sha).splitlines()) == \
        [decision_rel, MANIFEST]
    assert json.loads(git(gitops_repo, "show", f"{sha}:{decision_rel}")) == record
    assert git(gitops_repo, "log", "-1", "--format=%s", sha) == canary.message.splitlines()[0]
    _merge(gitops_repo, canary.branch)

    promote = plan_step(deploy_cfg, "promote", decision=record)
    assert promote.changed_paths == [f"{P}/canaryTrafficPercent"]
    assert [line for line in promote.diff.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))] == \
        ["-    canaryTrafficPercent: 20"]
    assert promote.message.startswith("deploy: promote duplexalign-moshi/5 to 100% "
                                      "(replaces duplexalign-moshi/4)")
    _merge(gitops_repo, _commit(promote))
    on_disk = yaml.safe_load((gitops_repo / MANIFEST).read_text())
    validate_manifest(on_disk, CRD)
    assert "canaryTrafficPercent" not in on_disk["spec"]["predictor"]


def _commit(change) -> str:
    commit_change(change)
    return change.branch


def test_canary_rollback_is_two_commits(deploy_cfg: Config, gitops_repo: Path) -> None:
    write_change(plan_step(deploy_cfg, "init", served=CHAMPION))
    git(gitops_repo, "add", "-A")
    git(gitops_repo, "commit", "-q", "-m", "serve the champion")
    stable_text = (gitops_repo / MANIFEST).read_text()
    record = promote_record(CHALLENGER.model_version, CHAMPION.model_version)
    _merge(gitops_repo, _commit(plan_step(deploy_cfg, "canary", served=CHALLENGER,
                                          decision=record)))

    first = plan_step(deploy_cfg, "rollback")
    assert first.changed_paths == [f"{P}/canaryTrafficPercent"]
    assert "canary traffic to 0% (commit 1 of 2)" in first.message
    assert "run `duplexalign deploy --rollback` again" in first.message
    assert yaml.safe_load(first.manifest_text)["spec"]["predictor"]["canaryTrafficPercent"] == 0
    _merge(gitops_repo, _commit(first))

    second = plan_step(deploy_cfg, "rollback")
    assert "roll back to duplexalign-moshi/4: restore its model URI (commit 2 of 2)" in \
        second.message
    validate_manifest(second.manifest, CRD)
    _merge(gitops_repo, _commit(second))
    restored = yaml.safe_load((gitops_repo / MANIFEST).read_text())
    # the champion's manifest again, with the record of what was rolled back
    assert changed_paths_of(yaml.safe_load(stable_text), restored) == [
        "/metadata/annotations/duplexalign.io~1rolled-back"]
    with pytest.raises(StepRefused, match="nothing to roll back"):
        plan_step(deploy_cfg, "rollback")


def changed_paths_of(a: dict, b: dict) -> list[str]:
    from components.deploy.gitops import changed_paths

    return changed_paths(a, b)


def test_no_canary_without_a_promote_verdict(deploy_cfg: Config, gitops_repo: Path) -> None:
    with pytest.raises(StepRefused, match="deploy --init"):
        plan_step(deploy_cfg, "canary", served=CHALLENGER)
    write_change(plan_step(deploy_cfg, "init", served=CHAMPION))
    with pytest.raises(GateNotPassed, match="no gate decision for duplexalign-moshi/5"):
        plan_step(deploy_cfg, "canary", served=CHALLENGER)
    rejected = promote_record(CHALLENGER.model_version, CHAMPION.model_version, "reject")
    with pytest.raises(GateNotPassed, match="verdict on duplexalign-moshi/5 is 'reject'"):
        plan_step(deploy_cfg, "canary", served=CHALLENGER, decision=rejected)
    forced = plan_step(deploy_cfg, "canary", served=CHALLENGER, decision=rejected, force=True)
    assert "FORCED past the gate" in forced.message
    assert "Gate: REJECT" in forced.message


@pytest.mark.integration
def test_gate_record_read_from_the_object_store(deploy_cfg: Config, gitops_repo: Path,
                                                store) -> None:
    """The record H2's gate stores under Keys.gate_decision(challenger) is what gets attached."""
    from components.contract import Keys

    record = promote_record(CHALLENGER.model_version, CHAMPION.model_version)
    assert load_gate_record(store, CHALLENGER.model_version) is None
    store.put_json(Keys.gate_decision(CHALLENGER.model_version), record)
    assert load_gate_record(store, CHALLENGER.model_version) == record
    write_change(plan_step(deploy_cfg, "init", served=CHAMPION))
    change = plan_step(deploy_cfg, "canary", served=CHALLENGER, store=store)
    assert change.decision == record
    write_change(change)
    attached = gitops_repo / "manifests/serving/decisions/duplexalign-moshi-5.json"
    assert json.loads(attached.read_text()) == record


def test_status_waits_until_the_cluster_runs_what_git_says(deploy_cfg: Config,
                                                           gitops_repo: Path,
                                                           tmp_path: Path) -> None:
    """The checkout's manifest already serves the challenger (merged), the cluster still the
    champion (Argo CD has not synced): not healthy, whatever the cluster's own status says."""
    from components.deploy.inferenceservice import init_manifest
    from components.deploy.logic import deploy
    from tests.components.deploy.conftest import live_object

    write_change(plan_step(deploy_cfg, "init", served=CHALLENGER))
    status = tmp_path / "isvc.json"
    status.write_text(json.dumps(live_object(init_manifest(deploy_cfg, CHAMPION))))
    result = deploy(deploy_cfg, "status", status_file=status).finalize
    assert not result["health"]["healthy"]
    assert result["health"]["reasons"] == [
        "the live spec serves duplexalign-moshi/4, not duplexalign-moshi/5 (not synced yet?)"]
