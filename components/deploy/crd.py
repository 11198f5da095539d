"""Validate a rendered manifest against a CustomResourceDefinition's openAPIV3Schema.

The API server prunes unknown fields of a structural CRD silently, but ``kubectl apply`` asks for
strict field validation (its default since Kubernetes 1.27), so a misspelt field such as
``canaryTrafficPrecent`` is an error there: here too (objects with ``properties`` get
``additionalProperties: false`` unless the CRD preserves unknown fields).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml


class ManifestInvalid(ValueError):
    """The manifest does not validate against the CRD schema (every error in the message)."""


def _to_json_schema(node: Any) -> Any:
    """OpenAPI v3 structural schema → JSON Schema (the Kubernetes extensions made explicit)."""
    if isinstance(node, list):
        return [_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_json_schema(v) for k, v in node.items()
           if k not in ("x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
                        "format")}  # int64/date-time formats: informational here
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        out.pop("type", None)
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=8)
def _load(crd_path: str, version: str) -> tuple[str, str, str, dict[str, Any]]:
    with open(crd_path, encoding="utf-8") as fh:
        crd = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    spec = crd["spec"]
    for v in spec["versions"]:
        if v["name"] == version:
            schema = _to_json_schema(v["schema"]["openAPIV3Schema"])
            return spec["group"], spec["names"]["kind"], v["name"], schema
    raise ValueError(f"{crd_path} has no version {version!r}")


def validate_manifest(manifest: dict[str, Any], crd_path: str | Path,
                      version: str = "v1beta1") -> None:
    """Raise ManifestInvalid listing every schema error (apiVersion and kind checked too)."""
    from jsonschema import Draft7Validator

    group, kind, ver, schema = _load(str(crd_path), version)
    errors = []
    if manifest.get("apiVersion") != f"{group}/{ver}":
        errors.append(f"apiVersion: {manifest.get('apiVersion')!r} is not {group}/{ver}")
    if manifest.get("kind") != kind:
        errors.append(f"kind: {manifest.get('kind')!r} is not {kind}")
    for err in sorted(Draft7Validator(schema).iter_errors(manifest), key=lambda e: e.json_path):
        errors.append(f"{err.json_path}: {err.message}")
    if errors:
        raise ManifestInvalid(f"{kind} manifest does not match {crd_path}:\n  " +
                              "\n  ".join(errors))
