"""Regenerate ``serving.kserve.io_inferenceservices.yaml``, the InferenceService CRD the deploy
tests validate every rendered manifest against.

Where the schema comes from (and why not KServe's own CRD YAML): KServe publishes its CRD in its
Helm charts and GitHub releases, neither of which reaches this project's machines (only PyPI,
npm and Debian do), and no package on those registries carries the YAML (looked up: the
``kserve`` 0.21.0 wheel and sdist on PyPI, ``kserve`` and ``@kubernetes-models/kserve`` on npm,
``apt-cache search kserve``/``inferenceservice`` on Debian). So the schema is BUILT from the
``kserve==0.21.0`` Python SDK's generated models (``kserve.models.V1beta1*``), which KServe
generates from the same Go API types (pkg/apis/serving/v1beta1) as the CRD: every model's
``openapi_types`` gives the field types, ``attribute_map`` the JSON names, a setter that raises
"must not be `None`" marks a required field, and ``allowed_values`` in a setter gives an enum.
Core Kubernetes types (V1Container, V1ObjectMeta, ...) come the same way from the installed
``kubernetes`` client's models (30.1.0 = the Kubernetes 1.30 API).

Types the SDK names but does not define are mapped by hand, as the CRD has them:
  ResourceQuantity, V1beta1MetricQuantity → x-kubernetes-int-or-string
  datetime, V1Time, KnativeVolatileTime   → string (date-time)
  KnativeURL                              → string (knative.dev/pkg/apis.URL marshals as text)
  K8sIoApiAppsV1DeploymentStrategy        → kubernetes.client V1DeploymentStrategy
  K8sIoApiAutoscalingV2*                  → kubernetes.client V2*
  anything else undefined (Knative's TrafficTarget, types newer than Kubernetes 1.30)
                                          → object with x-kubernetes-preserve-unknown-fields

Differences from KServe's published CRD that matter to a reader: no validation markers beyond
required/enum (KServe's CRD has few on the fields we render), fields newer than Kubernetes 1.30
inside pod templates are absent (a manifest using them would fail here although a 0.21 cluster
takes them). Run: ``.venv/bin/python tests/data/crds/generate_inferenceservice_crd.py``.
"""

from __future__ import annotations

import importlib
import inspect
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).with_name("serving.kserve.io_inferenceservices.yaml")
_PRESERVE: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
_SCALARS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer", "format": "int64"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string", "format": "date-time"},
    "date": {"type": "string", "format": "date"},
    "object": {"x-kubernetes-preserve-unknown-fields": True},
    "ResourceQuantity": {"x-kubernetes-int-or-string": True},
    "V1beta1MetricQuantity": {"x-kubernetes-int-or-string": True},
    "V1Time": {"type": "string", "format": "date-time"},
    "KnativeVolatileTime": {"type": "string", "format": "date-time"},
    "KnativeURL": {"type": "string"},
}
_REQUIRED_RE = re.compile(r"Invalid value for `(\w+)`, must not be `None`")
_ALLOWED_RE = re.compile(r"allowed_values = (\[[^\]]*\])")


def _model_class(name: str) -> type | None:
    import kserve.models as ks
    import kubernetes.client as k8s

    if name.startswith("K8sIoApi"):  # K8sIoApiAppsV1DeploymentStrategy → V1DeploymentStrategy
        name = re.sub(r"^K8sIoApi[A-Z][a-z]+", "", name)
    if name.startswith("Knative"):  # defined in kserve.models.knative_* but not exported
        module = "kserve.models." + re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            return None
    return getattr(ks, name, None) or getattr(k8s, name, None)


def _schema(type_name: str, stack: tuple[str, ...] = ()) -> dict[str, Any]:
    t = type_name.strip()
    if t in _SCALARS:
        return dict(_SCALARS[t])
    if t.startswith("list[") and t.endswith("]"):
        return {"type": "array", "items": _schema(t[5:-1], stack)}
    match = re.match(r"^dict\(str, (.+)\)$", t)
    if match:
        return {"type": "object", "additionalProperties": _schema(match[1], stack)}
    cls = _model_class(t)
    if cls is None or t in stack:  # undefined in the SDK, or recursive (a CRD cannot $ref)
        return dict(_PRESERVE)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for attr, sub in cls.openapi_types.items():
        json_name = cls.attribute_map[attr]
        prop = _schema(sub, stack + (t,))
        setter = getattr(cls, attr, None)
        source = inspect.getsource(setter.fset) if isinstance(setter, property) and setter.fset \
            else ""
        if _REQUIRED_RE.search(source):
            required.append(json_name)
        allowed = _ALLOWED_RE.search(source)
        if allowed and prop.get("type") == "string":
            prop["enum"] = yaml.safe_load(allowed[1])
        properties[json_name] = prop
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = sorted(required)
    return out


def build_crd() -> dict[str, Any]:
    root = _schema("V1beta1InferenceService")
    root.pop("required", None)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "inferenceservices.serving.kserve.io",
            "annotations": {
                "duplexalign.io/generated-by": "tests/data/crds/generate_inferenceservice_crd.py",
                "duplexalign.io/generated-from": (
                    f"kserve=={version('kserve')} Python SDK models, "
                    f"kubernetes=={version('kubernetes')} client models"),
            },
        },
        "spec": {
            "group": "serving.kserve.io",
            "names": {"kind": "InferenceService", "listKind": "InferenceServiceList",
                      "plural": "inferenceservices", "singular": "inferenceservice",
                      "shortNames": ["isvc"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1beta1", "served": True, "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def main() -> None:
    text = yaml.safe_dump(build_crd(), sort_keys=True, width=100)
    OUT.write_text("# GENERATED by tests/data/crds/generate_inferenceservice_crd.py (do not\n"
                   "# edit); its docstring and README.md say where it comes from.\n" + text)
    print(f"wrote {OUT} ({len(text) // 1024} KiB)")


if __name__ == "__main__":
    main()
