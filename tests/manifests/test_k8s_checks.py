"""The shared Kubernetes checks (tests/support/k8s.py) pass good objects and fail each kind of
bad object, so a green chart or overlay test means something."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.support import k8s


def _container(name: str = "app") -> dict[str, Any]:
    return {
        "name": name,
        "image": "ghcr.io/duplexalign/duplexalign:0.1.0",
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"memory": "256Mi"}},
        "env": [{"name": "DUPLEXALIGN_S3_SECRET_KEY", "valueFrom": {"secretKeyRef": {
            "name": "duplexalign-s3", "key": "secret-key"}}},
                {"name": "DUPLEXALIGN_CONFIG", "value": "/etc/duplexalign/config.yaml"}],
    }


def _pod_spec() -> dict[str, Any]:
    return {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                            "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [_container("init")],
        "containers": [_container()],
        "volumes": [{"name": "tmp", "emptyDir": {}},
                    {"name": "config", "configMap": {"name": "duplexalign-config"}}],
    }


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "duplexalign", "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": _pod_spec()}},
    }


def inference_service() -> dict[str, Any]:
    predictor = _pod_spec()
    del predictor["initContainers"], predictor["volumes"]
    predictor["containers"][0]["name"] = "kserve-container"
    predictor["canaryTrafficPercent"] = 10
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "moshi", "namespace": "duplexalign"},
            "spec": {"predictor": predictor}}


def application() -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
        "metadata": {"name": "duplexalign-platform", "namespace": "argocd"},
        "spec": {
            "project": "duplexalign",
            "source": {"repoURL": "https://git.example.com/duplexalign.git",
                       "targetRevision": "main", "path": "manifests/overlays/prod"},
            "destination": {"server": "https://kubernetes.default.svc",
                            "namespace": "duplexalign"},
            "syncPolicy": {"automated": {"prune": True, "selfHeal": True},
                           "syncOptions": ["CreateNamespace=false"]},
        },
    }


def app_project() -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
        "metadata": {"name": "duplexalign", "namespace": "argocd"},
        "spec": {"description": "duplexalign",
                 "sourceRepos": ["https://git.example.com/duplexalign.git"],
                 "destinations": [{"server": "https://kubernetes.default.svc",
                                   "namespace": "duplexalign"}],
                 "clusterResourceWhitelist": [],
                 "namespaceResourceWhitelist": [{"group": "apps", "kind": "Deployment"}]},
    }


def _fails(check: Callable[[list[dict[str, Any]]], None], objs: list[dict[str, Any]],
           *fragments: str) -> str:
    with pytest.raises(AssertionError) as info:
        check(objs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- load_yaml_docs ---------------------------------------------------------------------------

def test_load_yaml_docs_skips_empty_documents_and_flattens_lists():
    text = ("---\n# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"
            "---\n---\napiVersion: v1\nkind: List\nitems:\n"
            "- {apiVersion: v1, kind: ServiceAccount, metadata: {name: b}}\n")
    docs = k8s.load_yaml_docs(text)
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("ConfigMap", "a"), ("ServiceAccount", "b")]


def test_load_yaml_docs_rejects_a_non_mapping_document():
    with pytest.raises(AssertionError, match="not a mapping"):
        k8s.load_yaml_docs("- a\n- b\n")


# --- validate_kubernetes / validate_custom ----------------------------------------------------

def test_validate_kubernetes_passes_good_builtin_and_custom_objects():
    k8s.validate_kubernetes([deployment(), inference_service(), application(), app_project(),
                             {"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": "duplexalign-config"},
                              "data": {"config.yaml": "profile: production\n"}}])


def test_validate_kubernetes_lists_every_failure_of_every_object():
    bad = deployment()
    bad["spec"]["replicas"] = "2"  # wrong type
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"  # strict
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"},
               "spec": {"ports": [{"port": "http"}]}}
    message = _fails(k8s.validate_kubernetes, [bad, service], "Deployment/duplexalign/web",
                     "spec.replicas", "imagePullPolcy", "Service/svc", "spec.ports.0.port")
    assert message.startswith("3 Kubernetes schema failures")


def test_validate_kubernetes_requires_a_name_and_apiVersion_and_kind():
    _fails(k8s.validate_kubernetes, [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}],
           "metadata.name is missing")
    _fails(k8s.validate_kubernetes, [{"kind": "ConfigMap", "metadata": {"name": "a"}}],
           "not an object with apiVersion and kind")


def test_validate_kubernetes_rejects_an_unknown_custom_kind():
    _fails(k8s.validate_kubernetes,
           [{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}],
           "Widget/w", "neither a built-in Kubernetes kind nor a custom kind")
    _fails(k8s.validate_kubernetes,  # a built-in group at a version the schemas don't have
           [{"apiVersion": "apps/v1beta1", "kind": "Deployment", "metadata": {"name": "d"}}],
           "apps/v1beta1 Deployment")


@pytest.mark.parametrize("make, mutate, fragment", [
    (inference_service, lambda o: o["spec"]["predictor"].update(canaryTrafficPrecent=5),
     "canaryTrafficPrecent"),
    (inference_service, lambda o: o.update(apiVersion="serving.kserve.io/v1alpha1"),
     "serving.kserve.io/v1alpha1 InferenceService"),
    (application, lambda o: o["spec"]["syncPolicy"]["automated"].update(selfheal=True),
     "selfheal"),
    (application, lambda o: o["spec"].pop("destination"), "destination"),
    (application, lambda o: o["spec"]["source"].pop("repoURL"), "repoURL"),
    (app_project, lambda o: o["spec"]["destinations"][0].update(namespaces="x"), "namespaces"),
    (app_project, lambda o: o["metadata"].update(labelz={}), "labelz"),
])
def test_validate_custom_rejects_bad_custom_resources(make, mutate, fragment):
    obj = make()
    k8s.validate_custom(obj)
    mutate(obj)
    with pytest.raises(AssertionError, match=fragment):
        k8s.validate_custom(obj)
    _fails(k8s.validate_kubernetes, [obj], fragment)


# --- pod_specs --------------------------------------------------------------------------------

def test_pod_specs_of_every_workload_kind():
    pod = _pod_spec()
    template = {"template": {"spec": pod}}
    objs = {
        "Pod": pod, "Deployment": template, "StatefulSet": template, "DaemonSet": template,
        "ReplicaSet": template, "Job": template,
        "CronJob": {"schedule": "@daily", "jobTemplate": {"spec": template}},
    }
    for kind, spec in objs.items():
        assert k8s.pod_specs({"kind": kind, "spec": spec}) == [pod], kind
    assert k8s.pod_specs({"kind": "ConfigMap", "data": {}}) == []
    assert k8s.pod_specs({"kind": "Service", "spec": {"ports": []}}) == []


def test_pod_specs_of_an_inference_service_cover_predictor_transformer_and_model():
    isvc = inference_service()
    isvc["spec"]["transformer"] = {"containers": [_container("transformer")]}
    isvc["spec"]["predictor"]["model"] = {"modelFormat": {"name": "sklearn"},
                                          "storageUri": "s3://models/x"}
    pods = k8s.pod_specs(isvc)
    assert [[c["name"] for c in p["containers"]] for p in pods] == [
        ["kserve-container", "predictor-model"], ["transformer"]]


# --- assert_restricted ------------------------------------------------------------------------

def _pod(o: dict[str, Any]) -> dict[str, Any]:
    return o["spec"]["template"]["spec"]


def _sc(o: dict[str, Any], field: str = "containers") -> dict[str, Any]:
    return _pod(o)[field][0]["securityContext"]


RESTRICTED_VIOLATIONS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("pod-nonroot-missing", lambda o: (_pod(o)["securityContext"].pop("runAsNonRoot"),
                                       _sc(o, "initContainers").pop("runAsNonRoot")),
     "initContainers[init]: runAsNonRoot is not true"),
    ("pod-nonroot-false", lambda o: _pod(o)["securityContext"].update(runAsNonRoot=False),
     "securityContext.runAsNonRoot is false"),
    ("container-nonroot-false", lambda o: _sc(o).update(runAsNonRoot=False),
     "containers[app]: runAsNonRoot is not true"),
    ("root-uid-pod", lambda o: _pod(o)["securityContext"].update(runAsUser=0), "runAsUser is 0"),
    ("root-uid-container", lambda o: _sc(o).update(runAsUser=0), "containers[app]: runAsUser is 0"),
    ("seccomp-missing", lambda o: _pod(o)["securityContext"].pop("seccompProfile"),
     "no seccompProfile"),
    ("seccomp-unconfined", lambda o: _sc(o).update(seccompProfile={"type": "Unconfined"}),
     "seccompProfile.type is Unconfined"),
    ("host-network", lambda o: _pod(o).update(hostNetwork=True), "hostNetwork is true"),
    ("host-pid", lambda o: _pod(o).update(hostPID=True), "hostPID is true"),
    ("host-ipc", lambda o: _pod(o).update(hostIPC=True), "hostIPC is true"),
    ("host-path", lambda o: _pod(o)["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
     "uses ['hostPath']"),
    ("host-port", lambda o: _pod(o)["containers"][0].update(
        ports=[{"containerPort": 80, "hostPort": 80}]), "hostPort 80"),
    ("privileged", lambda o: _sc(o).update(privileged=True), "containers[app]: privileged"),
    ("escalation-missing", lambda o: _sc(o, "initContainers").pop("allowPrivilegeEscalation"),
     "initContainers[init]: allowPrivilegeEscalation is not false"),
    ("escalation-true", lambda o: _sc(o).update(allowPrivilegeEscalation=True),
     "allowPrivilegeEscalation is not false"),
    ("writable-root", lambda o: _sc(o).update(readOnlyRootFilesystem=False),
     "readOnlyRootFilesystem is not true"),
    ("no-security-context", lambda o: _pod(o)["containers"][0].pop("securityContext"),
     "containers[app]: capabilities.drop does not contain ALL"),
    ("caps-not-dropped", lambda o: _sc(o)["capabilities"].update(drop=["NET_RAW"]),
     "capabilities.drop does not contain ALL"),
    ("caps-added", lambda o: _sc(o)["capabilities"].update(add=["NET_BIND_SERVICE", "SYS_ADMIN"]),
     "capabilities.add has ['SYS_ADMIN']"),
    ("no-cpu-request", lambda o: _pod(o)["containers"][0]["resources"]["requests"].pop("cpu"),
     "resources.requests.cpu is missing"),
    ("no-memory-request", lambda o: _pod(o)["initContainers"][0]["resources"]["requests"].pop(
        "memory"), "initContainers[init]: resources.requests.memory is missing"),
    ("no-memory-limit", lambda o: _pod(o)["containers"][0]["resources"].pop("limits"),
     "resources.limits.memory is missing"),
]


def test_assert_restricted_passes_a_restricted_pod():
    ok = deployment()
    _sc(ok)["capabilities"]["add"] = ["NET_BIND_SERVICE"]  # the one capability allowed
    k8s.assert_restricted([ok, inference_service(), application()])


def test_assert_restricted_accepts_container_level_nonroot_and_seccomp():
    obj = deployment()
    pod_sc = _pod(obj)["securityContext"]
    pod_sc.pop("runAsNonRoot"), pod_sc.pop("seccompProfile")
    for field in ("containers", "initContainers"):
        _sc(obj, field).update(seccompProfile={"type": "Localhost",
                                               "localhostProfile": "p.json"})
    k8s.assert_restricted([obj])


@pytest.mark.parametrize("name, mutate, fragment", RESTRICTED_VIOLATIONS,
                         ids=[v[0] for v in RESTRICTED_VIOLATIONS])
def test_assert_restricted_fails_each_violation(name, mutate, fragment):
    obj = deployment()
    mutate(obj)
    _fails(k8s.assert_restricted, [obj], "Deployment/duplexalign/web", fragment)


def test_assert_restricted_checks_inference_service_predictors_and_cronjobs():
    isvc = inference_service()
    isvc["spec"]["predictor"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    cron = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
            "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {
                "spec": {"containers": [{"name": "x", "image": "i"}]}}}}}}
    _fails(k8s.assert_restricted, [isvc, cron], "InferenceService/duplexalign/moshi",
           "containers[kserve-container]: readOnlyRootFilesystem", "CronJob/c: containers[x]")


# --- assert_no_secret_values ------------------------------------------------------------------

def _env(o: dict[str, Any], field: str = "containers") -> list[dict[str, Any]]:
    return _pod(o)[field][0]["env"]


SECRET_VIOLATIONS: list[tuple[str, Callable[[], list[dict[str, Any]]], str]] = [
    ("secret-data", lambda: [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                              "data": {"k": "c2VjcmV0"}}], "Secret/s: a Secret with data"),
    ("secret-string-data", lambda: [{"apiVersion": "v1", "kind": "Secret",
                                     "metadata": {"name": "s"}, "stringData": {"k": "v"}}],
     "Secret/s: a Secret with data"),
]


def _with(mutate: Callable[[dict[str, Any]], Any]) -> Callable[[], list[dict[str, Any]]]:
    def make() -> list[dict[str, Any]]:
        obj = deployment()
        mutate(obj)
        return [obj]
    return make


SECRET_VIOLATIONS += [
    ("env-key-value", _with(lambda o: _env(o).append(
        {"name": "DUPLEXALIGN_PSEUDONYM_KEY", "value": "abc"})),
     "env DUPLEXALIGN_PSEUDONYM_KEY has a literal value"),
    ("env-password-empty-value", _with(lambda o: _env(o, "initContainers").append(
        {"name": "redis_password", "value": ""})), "initContainers[init]: env redis_password"),
    ("env-dsn-configmap", _with(lambda o: _env(o).append(
        {"name": "DUPLEXALIGN_CONSENT_DSN",
         "valueFrom": {"configMapKeyRef": {"name": "c", "key": "dsn"}}})),
     "env DUPLEXALIGN_CONSENT_DSN is not read from a Secret"),
    ("env-token", _with(lambda o: _env(o).append({"name": "HF_TOKEN", "value": "hf_x"})),
     "env HF_TOKEN"),
    ("env-token-path-not-a-path", _with(lambda o: _env(o).append(
        {"name": "API_TOKEN_FILE", "value": "tok_abc"})), "env API_TOKEN_FILE"),
    ("env-credential", _with(lambda o: _env(o).append(
        {"name": "GOOGLE_APPLICATION_CREDENTIALS_JSON", "value": "{}"})),
     "env GOOGLE_APPLICATION_CREDENTIALS_JSON"),
    ("uri-credentials-in-args", _with(lambda o: _pod(o)["containers"][0].update(
        args=["--backend-store-uri", "postgresql://mlflow:hunter2@db:5432/mlflow"])),
     "containers[0].args[1] has credentials in a URI"),
    ("aws-key-in-annotation", _with(lambda o: o["metadata"].update(
        annotations={"note": "key AKIAABCDEFGHIJKLMNOP"})), "has an AWS access key id"),
    ("private-key", _with(lambda o: o["metadata"].update(
        annotations={"k": "-----BEGIN RSA PRIVATE KEY-----\nMII"})), "has a private key"),
]


def test_assert_no_secret_values_passes_references_and_plain_settings():
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "duplexalign-config"},
          "data": {"config.yaml": "storage:\n  endpoint: http://minio:9000\n"
                                  "mlflow:\n  tracking_uri: http://mlflow:5000\n"}}
    ok = deployment()
    _pod(ok)["containers"][0]["args"] = [
        "--backend-store-uri", "postgresql://mlflow:$(MLFLOW_DB_PASSWORD)@db:5432/mlflow"]
    _env(ok).append({"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {
        "name": "duplexalign-s3", "key": "access-key"}}})
    _env(ok).append({"name": "KF_PIPELINES_SA_TOKEN_PATH",  # a mount point, not a secret
                     "value": "/var/run/secrets/kubeflow/pipelines/token"})
    secret_ref_only = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sa-token",
                       "annotations": {"kubernetes.io/service-account.name": "x"}},
                       "type": "kubernetes.io/service-account-token"}
    k8s.assert_no_secret_values([cm, ok, inference_service(), application(), secret_ref_only])


@pytest.mark.parametrize("name, make, fragment", SECRET_VIOLATIONS,
                         ids=[v[0] for v in SECRET_VIOLATIONS])
def test_assert_no_secret_values_fails_each_violation(name, make, fragment):
    _fails(k8s.assert_no_secret_values, make(), fragment)


def test_assert_no_secret_values_checks_inference_services_and_configmaps():
    isvc = inference_service()
    isvc["spec"]["predictor"]["containers"][0]["env"].append(
        {"name": "DUPLEXALIGN_S3_ACCESS_KEY", "value": "minio"})
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
          "data": {"config.yaml": "redis: redis://default:s3cret@redis:6379/0\n"}}
    _fails(k8s.assert_no_secret_values, [isvc, cm],
           "InferenceService/duplexalign/moshi: containers[kserve-container]: env "
           "DUPLEXALIGN_S3_ACCESS_KEY", "ConfigMap/c: data.config.yaml has credentials")


def test_the_argocd_crds_keep_free_form_fields_free_and_the_rest_strict():
    """The generated Argo CD CRDs (tests/data/crds/generate_argocd_crds.py): helm.valuesObject
    takes any values (x-kubernetes-preserve-unknown-fields restored), kustomize commonLabels is a
    string map, and the AppProject's description properties are back."""
    app = application()
    app["spec"]["source"]["helm"] = {"valuesObject": {"any": {"nested": [1, "x"]}}}
    k8s.validate_custom(app)
    app["spec"]["source"]["kustomize"] = {"commonLabels": {"team": 1}}
    with pytest.raises(AssertionError, match="commonLabels"):
        k8s.validate_custom(app)
    project = app_project()
    policy = "p, proj:duplexalign:ci, applications, sync, *, allow"
    project["spec"]["roles"] = [{"name": "ci", "description": "CI syncs", "policies": [policy]}]
    k8s.validate_custom(project)
    project["spec"]["roles"][0]["descripton"] = "typo"
    with pytest.raises(AssertionError, match="descripton"):
        k8s.validate_custom(project)
