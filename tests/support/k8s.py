"""Shared checks for rendered Kubernetes objects (the Helm chart, the kustomize overlays, Argo CD).

- ``load_yaml_docs(text)``: every non-empty YAML document (``kind: List`` items flattened).
- ``validate_kubernetes(objs)``: each built-in object against the Kubernetes 1.37 OpenAPI schema
  (kubernetes-validate, strict: unknown fields are errors, as with ``kubectl apply``'s strict
  field validation); objects of custom kinds go to ``validate_custom``.
- ``validate_custom(obj)``: a custom resource against its vendored CRD in ``tests/data/crds``
  (through ``components.deploy.crd.validate_manifest``), its metadata against ObjectMeta.
- ``pod_specs(obj)``: the pod specs an object runs (workloads and KServe components).
- ``assert_restricted(objs)``: the *restricted* Pod Security Standard, plus resources.
- ``assert_no_secret_values(objs)``: no secret material anywhere in the objects.

Each ``assert_*``/``validate_*`` raises ``AssertionError`` listing every failure, each prefixed
with the object's ``Kind/namespace/name``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path(__file__).resolve().parents[1] / "data" / "crds"
K8S_VERSION = "1.37.0"

# (apiVersion, kind) → (CRD file in tests/data/crds, CRD version name)
CUSTOM_KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("serving.kserve.io/v1beta1", "InferenceService"):
        ("serving.kserve.io_inferenceservices.yaml", "v1beta1"),
    ("argoproj.io/v1alpha1", "Application"): ("argoproj.io_applications.yaml", "v1alpha1"),
    ("argoproj.io/v1alpha1", "AppProject"): ("argoproj.io_appprojects.yaml", "v1alpha1"),
    ("kubeflow.org/v1", "PyTorchJob"): ("kubeflow.org_pytorchjobs.yaml", "v1"),
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): ("trainer.kubeflow.org_trainjobs.yaml",
                                                     "v1alpha1"),
}

_OBJECT_META = ("https://kubernetes.io/api/_definitions.json"
                "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")


def ident(obj: dict[str, Any]) -> str:
    """``Kind/namespace/name`` (namespace left out when not set) for messages."""
    meta = obj.get("metadata") or {}
    parts = [str(obj.get("kind", "?")), meta.get("namespace"), str(meta.get("name", "?"))]
    return "/".join(p for p in parts if p)


def load_yaml_docs(text: str) -> list[dict[str, Any]]:
    """Every non-empty document of a multi-document YAML text (``kind: List`` flattened)."""
    out: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        if not isinstance(doc, dict):
            raise AssertionError(f"YAML document is not a mapping: {doc!r:.80}")
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            out.extend(i for i in doc["items"] if i)
        else:
            out.append(doc)
    return out


def _fail(failures: list[str], what: str) -> None:
    if failures:
        raise AssertionError(f"{len(failures)} {what}:\n  " + "\n  ".join(failures))


# --- schema validation ----------------------------------------------------------------------

@lru_cache(maxsize=1)
def _k8s_registry(version: str) -> tuple[Any, str]:
    """(referencing Registry holding the strict definitions, schema directory) for ``version``."""
    import kubernetes_validate.utils as kvu
    from referencing import Registry, Resource

    known = [v for v in kvu.all_versions() if kvu.major_minor(v) <= kvu.major_minor(version)]
    if not known:
        raise AssertionError(f"kubernetes-validate has no schemas for Kubernetes {version}")
    schema_dir = f"v{known[-1]}-local-strict"
    defs = kvu.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version)
    return Resource.from_contents(defs) @ Registry(), schema_dir


@lru_cache(maxsize=256)
def _k8s_validator(api_version: str, kind: str, version: str) -> Any | None:
    """A Draft 2020-12 validator for a built-in kind, or None when no schema has the kind."""
    import jsonschema
    import kubernetes_validate.utils as kvu
    from referencing import Resource

    registry, schema_dir = _k8s_registry(version)
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # apps/v1 → apps-v1
    try:
        schema = kvu.schema_contents(
            f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{api}.json", version)
    except FileNotFoundError:
        return None
    return jsonschema.Draft202012Validator(
        schema, registry=Resource.from_contents(schema) @ registry)


def _errors(validator: Any, instance: Any, prefix: str = "") -> list[str]:
    out = []
    for e in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path))):
        where = ".".join([prefix] * bool(prefix) + [str(p) for p in e.absolute_path])
        out.append(f"{where or '(root)'}: {e.message}")
    return out


def _is_custom(obj: dict[str, Any], version: str) -> bool:
    api, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    return (api, kind) in CUSTOM_KINDS or _k8s_validator(api, kind, version) is None


def validate_kubernetes(objs: Iterable[dict[str, Any]], version: str = K8S_VERSION) -> None:
    """Validate every object: built-in kinds against the strict Kubernetes ``version`` schema
    (every error listed), custom kinds through ``validate_custom``."""
    failures: list[str] = []
    for obj in objs:
        if not isinstance(obj, dict) or not obj.get("apiVersion") or not obj.get("kind"):
            failures.append(f"{obj!r:.80}: not an object with apiVersion and kind")
            continue
        if _is_custom(obj, version):
            try:
                validate_custom(obj, version=version)
            except AssertionError as exc:
                failures.append(str(exc).replace("\n", "\n  "))
            continue
        validator = _k8s_validator(obj["apiVersion"], obj["kind"], version)
        failures += [f"{ident(obj)}: {e}" for e in _errors(validator, obj)]
        if not (obj.get("metadata") or {}).get("name"):
            failures.append(f"{ident(obj)}: metadata.name is missing")
    _fail(failures, "Kubernetes schema failures")


def validate_custom(obj: dict[str, Any], version: str = K8S_VERSION) -> None:
    """Validate a custom resource against its vendored CRD; unknown custom kinds are an error."""
    import jsonschema

    from components.deploy.crd import ManifestInvalid, validate_manifest

    key = (str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    if key not in CUSTOM_KINDS:
        raise AssertionError(f"{ident(obj)}: {key[0]} {key[1]} is neither a built-in Kubernetes "
                             f"kind nor a custom kind with a vendored CRD in {CRD_DIR}")
    filename, crd_version = CUSTOM_KINDS[key]
    crd = CRD_DIR / filename
    if not crd.is_file():
        raise AssertionError(f"{ident(obj)}: the CRD {crd} is missing")
    failures: list[str] = []
    try:
        validate_manifest(obj, crd, version=crd_version)
    except ManifestInvalid as exc:
        failures.append(str(exc).replace("\n", "\n  "))
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        failures.append("metadata.name is missing")
    else:
        registry, _ = _k8s_registry(version)
        validator = jsonschema.Draft202012Validator({"$ref": _OBJECT_META}, registry=registry)
        failures += _errors(validator, meta, prefix="metadata")
    if failures:
        raise AssertionError(f"{ident(obj)}:\n  " + "\n  ".join(failures))


# --- pod specs --------------------------------------------------------------------------------

_KSERVE_COMPONENTS = ("predictor", "transformer", "explainer")


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs ``obj`` runs: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
    CronJob, and each KServe InferenceService component (predictor, transformer, explainer: the
    component is a pod spec; a built-in ``model``/framework spec counts as one more container)."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return [spec]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [((spec.get("template") or {}).get("spec")) or {}]
    if kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        return [((job.get("template") or {}).get("spec")) or {}]
    if kind == "InferenceService":
        out = []
        for name in _KSERVE_COMPONENTS:
            comp = spec.get(name)
            if not isinstance(comp, dict):
                continue
            pod = dict(comp)
            extra = [dict(v, name=v.get("name") or f"{name}-{k}") for k, v in comp.items()
                     if isinstance(v, dict) and ("image" in v or "storageUri" in v
                                                 or "modelFormat" in v)]
            pod["containers"] = list(comp.get("containers") or []) + extra
            out.append(pod)
        return out
    return []


def _containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod.get(field) or []:
            yield f"{field}[{c.get('name', '?')}]", c


# --- restricted Pod Security Standard -------------------------------------------------------

_ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                    "persistentVolumeClaim", "projected", "secret", "image"}
_SECCOMP_OK = ("RuntimeDefault", "Localhost")


def _restricted_failures(pod: dict[str, Any]) -> list[str]:
    f: list[str] = []
    psc = pod.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            f.append(f"{host} is true")
    for vol in pod.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= _ALLOWED_VOLUMES:
            f.append(f"volume {vol.get('name')!r} uses {sorted(kinds - _ALLOWED_VOLUMES)}")
    containers = list(_containers(pod))
    if not containers:
        f.append("no containers")
    pod_nonroot = psc.get("runAsNonRoot") is True
    if psc.get("runAsNonRoot") is False:
        f.append("securityContext.runAsNonRoot is false")
    if psc.get("runAsUser") == 0:
        f.append("securityContext.runAsUser is 0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in _SECCOMP_OK:
        f.append(f"securityContext.seccompProfile.type is {pod_seccomp}")
    for where, c in containers:
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            f.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            f.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            f.append(f"{where}: readOnlyRootFilesystem is not true")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            f.append(f"{where}: capabilities.drop does not contain ALL")
        added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            f.append(f"{where}: capabilities.add has {sorted(added)}")
        if sc.get("runAsNonRoot") is False or (
                not pod_nonroot and sc.get("runAsNonRoot") is not True):
            f.append(f"{where}: runAsNonRoot is not true (neither on the pod nor the container)")
        if sc.get("runAsUser") == 0:
            f.append(f"{where}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in _SECCOMP_OK:
            f.append(f"{where}: seccompProfile.type is {seccomp}")
        elif seccomp is None and pod_seccomp is None:
            f.append(f"{where}: no seccompProfile RuntimeDefault/Localhost (pod or container)")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                f.append(f"{where}: hostPort {port['hostPort']}")
        if where.startswith("ephemeralContainers"):
            continue
        res = c.get("resources") or {}
        for section, keys in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
            for key in keys:
                if (res.get(section) or {}).get(key) in (None, ""):
                    f.append(f"{where}: resources.{section}.{key} is missing")
    return f


def assert_restricted(objs: Iterable[dict[str, Any]]) -> None:
    """Every pod spec meets the restricted Pod Security Standard (non-root, RuntimeDefault or
    Localhost seccomp, no host namespaces/paths/ports, no privilege escalation, read-only root
    filesystem, drop ALL capabilities and add at most NET_BIND_SERVICE) and every container has
    requests.cpu, requests.memory and limits.memory."""
    failures: list[str] = []
    for obj in objs:
        for i, pod in enumerate(pod_specs(obj)):
            where = ident(obj) + (f" (pod spec {i})" if i else "")
            failures += [f"{where}: {m}" for m in _restricted_failures(pod)]
    _fail(failures, "restricted Pod Security failures")


# --- secrets ----------------------------------------------------------------------------------

SECRET_ENV_RE = re.compile(r"KEY|SECRET|PASSWORD|PASSWD|TOKEN|DSN|CREDENTIAL", re.IGNORECASE)
_PATH_ENV_RE = re.compile(r"_(PATH|FILE|DIR)$", re.IGNORECASE)
# scheme://user:password@ (a password that is only an env reference such as $(PGPASSWORD) is fine)
_URI_CREDS_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:(?P<pw>[^/\s@]+)@")
_ENV_REF_RE = re.compile(r"^(\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\{[A-Za-z_][A-Za-z0-9_]*\})$")
_AWS_KEY_RE = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b")
_PRIVATE_KEY_RE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _env_failures(pod: dict[str, Any]) -> list[str]:
    f = []
    for where, c in _containers(pod):
        for env in c.get("env") or []:
            name = str(env.get("name", ""))
            if not SECRET_ENV_RE.search(name):
                continue
            if _PATH_ENV_RE.search(name) and str(env.get("value", "")).startswith("/"):
                continue  # where a mounted secret file is (KF_PIPELINES_SA_TOKEN_PATH), not one
            if "value" in env:
                f.append(f"{where}: env {name} has a literal value (use valueFrom.secretKeyRef)")
            elif "secretKeyRef" not in (env.get("valueFrom") or {}):
                f.append(f"{where}: env {name} is not read from a Secret (valueFrom.secretKeyRef)")
    return f


def assert_no_secret_values(objs: Iterable[dict[str, Any]]) -> None:
    """No secret material: no Secret with data/stringData; env vars with secret-looking names
    (KEY, SECRET, PASSWORD, TOKEN, DSN, CREDENTIAL) only through valueFrom.secretKeyRef (except
    ``*_PATH``/``*_FILE``/``*_DIR`` names whose value is an absolute path: a mount point); no
    ``scheme://user:password@`` credentials, AWS access key ids or private keys in any string."""
    failures: list[str] = []
    for obj in objs:
        who = ident(obj)
        if obj.get("kind") == "Secret" and (obj.get("data") or obj.get("stringData")):
            failures.append(f"{who}: a Secret with data/stringData (reference existing Secrets)")
        for pod in pod_specs(obj):
            failures += [f"{who}: {m}" for m in _env_failures(pod)]
        for path, text in _strings(obj):
            for m in _URI_CREDS_RE.finditer(text):
                if not _ENV_REF_RE.match(m.group("pw")):
                    failures.append(f"{who}: {path} has credentials in a URI")
            if _AWS_KEY_RE.search(text):
                failures.append(f"{who}: {path} has an AWS access key id")
            if _PRIVATE_KEY_RE.search(text):
                failures.append(f"{who}: {path} has a private key")
    _fail(failures, "secret-value failures")
