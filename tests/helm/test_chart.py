"""The Helm chart helm/duplexalign, linted and rendered offline by Helm's Go SDK (helm_python):
default and production values, every object validated (Kubernetes 1.37 strict schemas, the
vendored KServe CRD), restricted Pod Security, secrets by reference only, RBAC, NetworkPolicies,
the platform ConfigMap and the KFP registration Job."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from components.common.config import load_config
from components.deploy.inferenceservice import ServedModel, render_inferenceservice
from pipelines.cluster.helm import CHART_DIR, ChartError, lint_chart, render_chart
from tests.support.k8s import (
    assert_no_secret_values,
    assert_restricted,
    pod_specs,
    validate_kubernetes,
)

STORAGE_URI = "s3://duplexalign/models/duplexalign-moshi/3/"
REQUIRED = {"serving.storageUri": STORAGE_URI}
PROD = ("values-prod.yaml",)


def _objs(values_files=(), **set_values: Any) -> list[dict[str, Any]]:
    return render_chart(values_files, {**REQUIRED, **set_values})


@pytest.fixture(scope="module")
def default_objs() -> list[dict[str, Any]]:
    return _objs()


@pytest.fixture(scope="module")
def prod_objs() -> list[dict[str, Any]]:
    return _objs(PROD)


@pytest.fixture(scope="module")
def full_objs() -> list[dict[str, Any]]:
    """Every optional part on: in-chart Redis, schedule, deployer bindings, launcher secrets."""
    return _objs(**{"feast.redis.host": "", "feast.redis.inChart.enabled": True,
                    "kfp.schedule.enabled": True, "kfp.serviceAccountToken": True,
                    "kfp.params": {"batch": "serve-2026-11-27"},
                    "rbac.deployer.serviceAccounts": ["ci-deployer"],
                    "pipelineRunner.launcherSecretNames": ["mlpipeline-minio-artifact"],
                    "networkPolicy.monitoringNamespaces": ["monitoring"]})


def _one(objs, kind: str, component: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (
        component is None
        or o["metadata"]["labels"].get("app.kubernetes.io/component") == component)]
    assert len(found) == 1, f"{len(found)} {kind} {component}"
    return found[0]


def _by_kind(objs, kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


# --- lint / render ------------------------------------------------------------------------------

def test_chart_metadata():
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert (meta["apiVersion"], meta["name"], meta["version"], str(meta["appVersion"])) == \
        ("v2", "duplexalign", "0.1.0", "0.1.0")


@pytest.mark.parametrize("files", [(), PROD], ids=["default", "prod"])
def test_lint_clean(files):
    assert lint_chart(files) == []
    assert lint_chart(files, REQUIRED) == []


def test_lint_reports_schema_errors():
    findings = lint_chart(set_values={"mlflow": {"replicaCount": 2}})
    assert findings and all(f.startswith("ERROR") for f in findings)
    assert any("replicaCount" in f for f in findings)


@pytest.mark.parametrize("name", ["default_objs", "prod_objs", "full_objs"])
def test_every_object_validates_and_is_restricted(name, request):
    objs = request.getfixturevalue(name)
    validate_kubernetes(objs)
    assert_restricted(objs)
    assert_no_secret_values(objs)
    for obj in objs:  # the release namespace, the shared labels
        assert obj["metadata"]["namespace"] == "duplexalign"
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "duplexalign"
        assert labels["app.kubernetes.io/part-of"] == "duplexalign"
        assert labels["app.kubernetes.io/instance"] == "duplexalign"


def test_render_is_deterministic_and_kinds(default_objs):
    assert _objs() == default_objs
    kinds = {o["kind"] for o in default_objs}
    assert {"ConfigMap", "Deployment", "Service", "InferenceService", "Job", "ServiceAccount",
            "Role", "RoleBinding", "NetworkPolicy", "PersistentVolumeClaim"} <= kinds
    assert "Secret" not in kinds


def test_every_pod_details(full_objs, prod_objs):
    for obj in full_objs + prod_objs:
        for pod in pod_specs(obj):
            # the predictor's pod carries it on the container (Knative: no pod securityContext)
            for sc in [pod.get("securityContext")] + [c["securityContext"]
                                                       for c in pod["containers"]]:
                if sc is None and obj["kind"] == "InferenceService":
                    continue
                assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            # /tmp is writable (read-only root filesystem, HOME=/tmp)
            tmp = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
            for c in pod["containers"]:
                assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
                assert any(m["mountPath"] == "/tmp" and m["name"] in tmp
                           for m in c["volumeMounts"]), (obj["metadata"]["name"], c["name"])
            # the chart's workloads never need the Kubernetes API
            assert pod.get("automountServiceAccountToken") is False, obj["metadata"]["name"]


def test_serving_required_storage_uri():
    with pytest.raises(ChartError, match="serving.storageUri is required"):
        render_chart()
    objs = render_chart(set_values={"serving.enabled": False})
    assert not _by_kind(objs, "InferenceService")
    # the NetworkPolicy of the served pods stays (duplexalign deploy may own the service)
    assert any(o["metadata"]["name"] == "duplexalign-serving"
               for o in _by_kind(objs, "NetworkPolicy"))


# --- schema ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    {"bogus": 1},                                                 # unknown top-level key
    {"mlflow.replicaCount": 2},                                   # typo
    {"secrets.s3": {"access-key": "AKIAABCDEFGHIJKLMNOP"}},       # a secret value
    {"mlflow.database.uri": "postgresql+psycopg://u:pw@db/mlflow"},  # a secret value
    {"consent.dsn": "postgresql://u:pw@db/consent"},              # a secret value
    {"feast.redis.password": "hunter2"},                          # a secret value
    {"s3.accessKey": "AKIAABCDEFGHIJKLMNOP"},                     # a secret value
    {"s3.endpoint": "https://user:pw@s3.example.com"},            # scheme / credentials
    {"kfp.host": "http://user:pw@ml-pipeline:8888"},              # credentials in a URL
    {"kfp.params": {"api_key": "x"}},                             # a secret-looking param
    {"serving.storageUri": "gs://bucket/model"},                  # not s3://
    {"serving.resources.requests.memory": "32GB"},                # not a quantity
    {"serving.resources.limits.memory": None},                    # memory limit required
    {"mlflow.resources.requests.cpu": "lots"},
    {"mlflow.database.sqlite.size": "5 gigs"},
    {"image.pullPolicy": "Sometimes"},                            # enum
    {"serving.deploymentMode": "RawDeployment"},                  # canary needs Knative
    {"gpu.tolerations": [{"key": "x", "operator": "Maybe"}]},
    {"podSecurity.runAsUser": 0},                                 # root
    {"s3.egress.cidrs": ["not-a-cidr"]},
    {"feast.redis.inChart.image.tag": "latest"},                  # floating tag
    {"feast.redis.host": ""},                                     # no Redis at all
    {"image.digest": "sha256:abc"},
])
def test_schema_rejects(bad):
    with pytest.raises(ChartError):
        _objs(**bad)


def test_sqlite_backend_is_single_replica():
    with pytest.raises(ChartError, match="mlflow.replicas > 1"):
        _objs(**{"mlflow.replicas": 2})


# --- secrets by reference ---------------------------------------------------------------------

def _secret_refs(objs) -> set[tuple[str, str, str]]:
    out = set()
    for obj in objs:
        for pod in pod_specs(obj):
            for c in pod["containers"]:
                for env in c.get("env") or []:
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        out.add((env["name"], ref["name"], ref["key"]))
    return out


def test_secrets_only_by_reference(prod_objs, full_objs):
    refs = _secret_refs(prod_objs) | _secret_refs(full_objs)
    assert {("DUPLEXALIGN_S3_ACCESS_KEY", "duplexalign-s3", "access-key"),
            ("DUPLEXALIGN_S3_SECRET_KEY", "duplexalign-s3", "secret-key"),
            ("AWS_ACCESS_KEY_ID", "duplexalign-s3", "access-key"),
            ("AWS_SECRET_ACCESS_KEY", "duplexalign-s3", "secret-key"),
            ("DUPLEXALIGN_PSEUDONYM_KEY", "duplexalign-pseudonym", "key"),
            ("DUPLEXALIGN_CONSENT_DSN", "duplexalign-consent-db", "dsn"),
            ("DUPLEXALIGN_REDIS_PASSWORD", "duplexalign-redis", "password"),
            ("REDIS_PASSWORD", "duplexalign-redis", "password"),
            ("MLFLOW_BACKEND_STORE_URI", "duplexalign-mlflow-db", "uri")} == refs


# --- MLflow --------------------------------------------------------------------------------

def _container(obj) -> dict[str, Any]:
    return pod_specs(obj)[0]["containers"][0]


def test_mlflow_sqlite_default(default_objs):
    dep = _one(default_objs, "Deployment", "mlflow")
    c = _container(dep)
    assert c["command"] == ["mlflow", "server"]
    assert "--backend-store-uri=sqlite:////var/lib/mlflow/mlflow.db" in c["args"]
    assert "--serve-artifacts" in c["args"]
    assert "--artifacts-destination=s3://duplexalign/mlflow-artifacts" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "https://s3.us-east-1.amazonaws.com"
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    pvc = _one(default_objs, "PersistentVolumeClaim", "mlflow")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    hosts = next(a for a in c["args"] if a.startswith("--allowed-hosts="))
    assert "duplexalign-mlflow.duplexalign.svc:5000" in hosts


def test_mlflow_external_db_prod(prod_objs):
    dep = _one(prod_objs, "Deployment", "mlflow")
    c = _container(dep)
    assert not any(a.startswith("--backend-store-uri") for a in c["args"])
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "duplexalign-mlflow-db", "key": "uri"}
    assert dep["spec"]["replicas"] == 2
    assert not _by_kind([o for o in prod_objs if o["kind"] == "PersistentVolumeClaim"], "x")
    pdbs = {o["metadata"]["name"] for o in _by_kind(prod_objs, "PodDisruptionBudget")}
    assert pdbs == {"duplexalign-mlflow", "duplexalign-feast-server"}


# --- Feast ---------------------------------------------------------------------------------

def test_feast_server_and_store(default_objs, full_objs):
    cm = next(o for o in default_objs if o["kind"] == "ConfigMap"
              and o["metadata"]["name"] == "duplexalign-feast-server")
    store = yaml.safe_load(cm["data"]["feature_store.yaml"])
    assert store["registry"]["path"] == "s3://duplexalign/feast/registry.db"
    assert store["online_store"] == {
        "type": "redis",
        "connection_string": "redis.example.internal:6379,password=${DUPLEXALIGN_REDIS_PASSWORD}"}
    c = _container(_one(default_objs, "Deployment", "feast-server"))
    assert c["command"] == ["feast"] and "serve" in c["args"]
    assert "--feature-store-yaml=/etc/feast/feature_store.yaml" in c["args"]
    assert "--chdir=/app/feature_repo" in c["args"]
    assert not _by_kind([o for o in default_objs
                         if o["metadata"]["labels"]["app.kubernetes.io/component"] == "redis"],
                        "Deployment")
    # in-chart Redis: pinned image, non-root, read-only root, emptyDir data, password via stdin
    redis = _one(full_objs, "Deployment", "redis")
    rc = _container(redis)
    assert rc["image"].split(":")[-1][0].isdigit()
    assert {m["mountPath"] for m in rc["volumeMounts"]} == {"/data", "/tmp"}
    assert "$REDIS_PASSWORD" in rc["args"][0] and "requirepass" in rc["args"][0]
    cm = next(o for o in full_objs if o["kind"] == "ConfigMap"
              and o["metadata"]["name"] == "duplexalign-feast-server")
    assert yaml.safe_load(cm["data"]["feature_store.yaml"])["online_store"][
        "connection_string"].startswith("duplexalign-redis.duplexalign.svc:6379,")


# --- the platform ConfigMap ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["default_objs", "prod_objs", "full_objs"])
def test_platform_config_loads(name, request, tmp_path):
    objs = request.getfixturevalue(name)
    cm = next(o for o in objs if o["kind"] == "ConfigMap"
              and o["metadata"]["name"] == "duplexalign-config")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    cfg = load_config(yaml_path=path)
    assert cfg.profile == "production"
    assert cfg.storage.bucket == "duplexalign" and cfg.storage.secure is True
    assert cfg.storage.credentials_file == ""
    assert cfg.mlflow.tracking_uri == "http://duplexalign-mlflow.duplexalign.svc:5000"
    assert cfg.features.online_store == "redis"
    assert cfg.features.registry == "s3://duplexalign/feast/registry.db"
    assert cfg.deploy.name == "duplexalign-moshi"
    assert cfg.deploy.service_account == "duplexalign-serving"
    assert cfg.pipeline.pipeline_root == "s3://duplexalign/pipeline-root"
    if name == "prod_objs":
        assert cfg.storage.endpoint == "s3.eu-west-1.amazonaws.com"
        assert cfg.features.redis_connection_string.endswith(":6379,ssl=true")
        assert cfg.deploy.min_replicas == 2 and cfg.deploy.memory_request == "64Gi"
        assert cfg.gpu_pool.node_selector == {"karpenter.k8s.aws/instance-gpu-name": "h100"}


def test_platform_config_extra_is_validated(tmp_path):
    objs = _objs(**{"platformConfig.extra": {"train": {"lora": True}}})
    cm = _one(objs, "ConfigMap", "config")
    (tmp_path / "c.yaml").write_text(cm["data"]["config.yaml"])
    assert load_config(yaml_path=tmp_path / "c.yaml").train.lora is True
    objs = _objs(**{"platformConfig.extra": {"train": {"lorra": True}}})
    (tmp_path / "c.yaml").write_text(_one(objs, "ConfigMap", "config")["data"]["config.yaml"])
    with pytest.raises(ValueError):
        load_config(yaml_path=tmp_path / "c.yaml")


# --- serving ----------------------------------------------------------------------------------

def test_inferenceservice_matches_deploy_renderer(prod_objs, tmp_path):
    """The chart's InferenceService is the one `duplexalign deploy` renders for the same
    settings (container, ports, probe, resources, GPU scheduling, annotations deploy reads)."""
    isvc = _one(prod_objs, "InferenceService")
    cm = _one(prod_objs, "ConfigMap", "config")
    (tmp_path / "c.yaml").write_text(cm["data"]["config.yaml"])
    cfg = load_config(yaml_path=tmp_path / "c.yaml")
    ref = render_inferenceservice(cfg, ServedModel(f"s3:{STORAGE_URI}", STORAGE_URI))
    pred, ref_pred = isvc["spec"]["predictor"], ref["spec"]["predictor"]
    for key in ("minReplicas", "maxReplicas", "serviceAccountName", "timeout",
                "automountServiceAccountToken", "nodeSelector", "tolerations", "volumes"):
        assert pred[key] == ref_pred[key], key
    assert "securityContext" not in pred and "securityContext" not in ref_pred  # Knative
    c, rc = pred["containers"][0], ref_pred["containers"][0]
    for key in ("name", "image", "command", "args", "ports", "readinessProbe", "resources",
                "env", "securityContext", "volumeMounts"):
        assert c[key] == rc[key], key
    env = {e["name"]: e for e in c["env"]}
    assert env["STORAGE_URI"]["value"] == STORAGE_URI
    assert env["DUPLEXALIGN_PROFILE"]["value"] == "production"
    assert isvc["metadata"]["name"] == ref["metadata"]["name"]
    for key in ("serving.kserve.io/deploymentMode", "duplexalign.io/model-version",
                "duplexalign.io/storage-uri"):
        assert isvc["metadata"]["annotations"][key] == ref["metadata"]["annotations"][key]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_inferenceservice_cpu_only_and_version():
    isvc = _one(_objs(**{"serving.gpu": False, "serving.modelVersion": "duplexalign-moshi/3"}),
                "InferenceService")
    pred = isvc["spec"]["predictor"]
    assert "nodeSelector" not in pred and "tolerations" not in pred
    c = pred["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["requests"]
    assert c["args"][c["args"].index("--model-version") + 1] == "duplexalign-moshi/3"
    assert isvc["metadata"]["annotations"]["duplexalign.io/model-version"] == \
        "duplexalign-moshi/3"


# --- the KFP registration Job --------------------------------------------------------------------

def test_registration_job(default_objs, full_objs):
    job = _one(default_objs, "Job", "kfp-register")
    ann = job["metadata"]["annotations"]
    assert ann["helm.sh/hook"] == "post-install,post-upgrade"
    assert ann["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert job["spec"]["backoffLimit"] == 3 and job["spec"]["ttlSecondsAfterFinished"] > 0
    c = _container(job)
    assert c["command"] + c["args"] == [
        "duplexalign", "submit", "--compile", "--host",
        "http://ml-pipeline.kubeflow.svc.cluster.local:8888"]
    c = _container(_one(full_objs, "Job", "kfp-register"))
    argv = c["command"] + c["args"]
    assert argv[argv.index("--schedule") + 1] == "0 0 3 * * *"
    assert argv[argv.index("--service-account") + 1] == "duplexalign-pipeline-runner"
    assert argv[argv.index("--param") + 1] == "batch=serve-2026-11-27"
    pod = pod_specs(_one(full_objs, "Job", "kfp-register"))[0]
    token = next(v for v in pod["volumes"] if v["name"] == "kfp-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == \
        "pipelines.kubeflow.org"
    objs = _objs(**{"kfp.host": "https://kfp.example.com", "kfp.schedule.enabled": True,
                    "kfp.schedule.cron": "0 30 2 * * 1"})
    c = _container(_one(objs, "Job", "kfp-register"))
    assert c["args"] == ["--compile", "--host", "https://kfp.example.com", "--schedule",
                         "0 30 2 * * 1",
                         "--service-account", "duplexalign-pipeline-runner"]
    assert not _by_kind(_objs(**{"kfp.enabled": False}), "Job")


# --- RBAC ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["default_objs", "prod_objs", "full_objs"])
def test_rbac_least_privilege(name, request):
    objs = request.getfixturevalue(name)
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    roles = {o["metadata"]["name"]: o for o in _by_kind(objs, "Role")}
    for role in roles.values():
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in (rule.get(field) or []), (role["metadata"]["name"], rule)
            assert not set(rule["verbs"]) & {"create", "delete", "deletecollection",
                                             "escalate", "bind", "impersonate"} or \
                rule["resources"] == ["workflowtaskresults"]
            if "secrets" in rule["resources"] or "configmaps" in rule["resources"]:
                assert rule["resourceNames"] and rule["verbs"] == ["get"]
    assert roles["deployer"]["rules"] == [{
        "apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
        "verbs": ["get", "list", "watch", "patch", "update"]}]
    for binding in _by_kind(objs, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] in roles
    runner = next(o for o in _by_kind(objs, "RoleBinding")
                  if o["metadata"]["name"] == "duplexalign-pipeline-runner")
    assert runner["subjects"] == [{"kind": "ServiceAccount",
                                   "name": "duplexalign-pipeline-runner",
                                   "namespace": "duplexalign"}]
    sas = {o["metadata"]["name"]: o for o in _by_kind(objs, "ServiceAccount")}
    for sa_name, sa in sas.items():
        assert sa["automountServiceAccountToken"] is (sa_name == "duplexalign-pipeline-runner")


# --- NetworkPolicies ---------------------------------------------------------------------------

def _np(objs, component: str) -> dict[str, Any]:
    return next(o for o in _by_kind(objs, "NetworkPolicy")
                if o["metadata"]["name"] == f"duplexalign-{component}")


@pytest.mark.parametrize("name", ["default_objs", "prod_objs", "full_objs"])
def test_network_policies(name, request):
    objs = request.getfixturevalue(name)
    deny = _np(objs, "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    dns = _np(objs, "allow-dns")["spec"]["egress"][0]
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"}
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    # every pod the chart runs is selected by a policy of its own besides the default deny
    selectors = [o["spec"]["podSelector"].get("matchLabels") or {}
                 for o in _by_kind(objs, "NetworkPolicy")]
    for obj in objs:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert any(sel and all(labels.get(k) == v for k, v in sel.items())
                   for sel in selectors), obj["metadata"]["name"]
    # MLflow: only the pipeline's task pods (+ listed namespaces) get in; serving does not
    mlflow = _np(objs, "mlflow")["spec"]
    peers = mlflow["ingress"][0]["from"]
    assert peers[0] == {"podSelector": {"matchLabels": {
        "pipelines.kubeflow.org/v2_component": "true"}}}
    assert all("podSelector" not in p or p == peers[0] for p in peers)
    # serving: in from the ingress namespaces only
    serving = _np(objs, "serving")["spec"]
    assert serving["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": "duplexalign-moshi"}
    assert {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for p in serving["ingress"][0]["from"]} >= {"knative-serving", "istio-system"}
    # the registration Job: out to the KFP namespace only, nothing in
    reg = _np(objs, "kfp-register")["spec"]
    assert "ingress" not in reg and reg["policyTypes"] == ["Ingress", "Egress"]
    assert reg["egress"][0]["to"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "kubeflow"}}}]


def test_network_policies_pinned_cidrs(prod_objs):
    tasks = _np(prod_objs, "pipeline-tasks")["spec"]["egress"]
    cidrs = {p["ipBlock"]["cidr"] for rule in tasks for p in rule["to"] if "ipBlock" in p}
    assert "0.0.0.0/0" not in cidrs and "52.218.0.0/17" in cidrs
    judge = [r for r in tasks if any("namespaceSelector" in p and p["namespaceSelector"][
        "matchLabels"]["kubernetes.io/metadata.name"] == "llm-serving" for p in r["to"])]
    assert judge and judge[0]["ports"] == [{"port": 8000, "protocol": "TCP"}]


def test_network_policies_can_be_disabled():
    assert not _by_kind(_objs(**{"networkPolicy.enabled": False}), "NetworkPolicy")


def test_inferenceservice_is_restricted_at_the_container_level():
    """Knative refuses a pod securityContext without a feature flag: the container's alone
    meets the restricted profile."""
    isvc = _one(_objs(), "InferenceService")
    assert "securityContext" not in isvc["spec"]["predictor"]
    validate_kubernetes([isvc])
    assert_restricted([isvc])


@pytest.mark.parametrize("name", ["default_objs", "prod_objs", "full_objs"])
def test_registration_job_arguments_parse(name, request):
    """The Job's command line is one `duplexalign submit` accepts (its own argparse)."""
    from pipelines.cli import build_parser

    objs = request.getfixturevalue(name)
    c = _container(_one(objs, "Job", "kfp-register"))
    assert c["command"] == ["duplexalign", "submit"]
    args = build_parser().parse_args(["submit", *c["args"]])
    assert args.compile  # with the release's settings, from the mounted platform ConfigMap
    assert args.host.startswith("http")
    assert not args.run  # registration only: runs come from the schedule
    if name == "prod_objs":
        assert (args.namespace, args.schedule, args.schedule_name, args.service_account) == (
            "duplexalign", "0 0 3 * * *", "duplexalign-nightly", "duplexalign-pipeline-runner")


def test_the_registration_job_compiles_the_values_into_the_pipeline(tmp_path, monkeypatch):
    """What the Job uploads (`submit --compile`, reading the mounted ConfigMap): the values'
    image registry and tag, GPU node pool and Secret names reach the compiled pipeline."""
    from components.common.config import load_config
    from pipelines.runner import compile_pipeline

    objs = _objs(**{"image.registry": "registry.example.com/ml", "image.tag": "2.1.0",
                    # null drops the default label (Helm merges maps)
                    "gpu.nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb",
                                         "nvidia.com/gpu.present": None},
                    "secrets.s3": "team-s3"})
    mounted = tmp_path / "config.yaml"
    mounted.write_text(_one(objs, "ConfigMap", "config")["data"]["config.yaml"])
    monkeypatch.setenv("DUPLEXALIGN_CONFIG", str(mounted))
    spec, platform = yaml.safe_load_all(
        compile_pipeline(tmp_path / "p.yaml", load_config("production")).read_text())
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example.com/ml/duplexalign:2.1.0",
                      "registry.example.com/ml/duplexalign-cuda:2.1.0"}
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-train-op"]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert {s["secretName"] for s in k8s["exec-train-op"]["secretAsEnv"]} == {"team-s3"}
