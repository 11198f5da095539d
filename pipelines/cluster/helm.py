"""The Helm chart (helm/duplexalign) rendered and linted offline through Helm's own Go SDK.

``helm_python`` (helm-python-sdk) binds Helm v4's Go SDK through a C ABI: no ``helm`` binary and
no cluster are needed. Values compose as ``helm template -f a.yaml -f b.yaml --set-json ...``
does: the chart's defaults, then each values file (maps merged, later wins), then ``set_values``
(dotted keys, e.g. ``{"serving.storageUri": "s3://models/champion/"}``). The merged values are
validated against the chart's values.schema.json before anything renders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from components.common.config import deep_merge

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "duplexalign"

# Severity of helm lint messages: 1 info, 2 warning, 3 error.
_SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


class ChartError(RuntimeError):
    """The values do not validate, or a template does not render (Helm's message inside)."""


def user_values(values_files: Iterable[str | Path] = (),
                set_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The user-supplied values: values files in order, then ``set_values`` (dotted keys, JSON
    values, Helm's ``--set-json`` semantics: ``a.b[0].c`` works too)."""
    import helm_python as helm

    values: dict[str, Any] = {}
    for path in values_files:
        p = Path(path)
        if not p.is_absolute() and not p.exists() and (CHART_DIR / p).exists():
            p = CHART_DIR / p  # "values-prod.yaml" names the chart's own file
        values = deep_merge(values, yaml.safe_load(p.read_text(encoding="utf-8")) or {})
    for key, value in (set_values or {}).items():
        values = deep_merge(values, helm.parse_set_json(f"{key}={json.dumps(value)}"))
    return values


def render_chart(values_files: Iterable[str | Path] = (),
                 set_values: Mapping[str, Any] | None = None,
                 release: str = "duplexalign", namespace: str = "duplexalign",
                 chart_dir: str | Path = CHART_DIR) -> list[dict[str, Any]]:
    """Every object the chart renders (hooks included), in a stable order: by template file,
    then as written in it. Raises ChartError on invalid values or a failing template."""
    import helm_python as helm

    values = user_values(values_files, set_values)
    helm.validate_release_name(release)
    with helm.Chart.load(str(chart_dir)) as chart:
        try:
            chart.validate_schema(chart.merge_values(values))
            rendered = chart.render(values, name=release, namespace=namespace,
                                    is_install=True)
        except helm.HelmError as exc:
            raise ChartError(str(exc)) from exc
    objects: list[dict[str, Any]] = []
    for template in sorted(rendered):
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(rendered[template]):
            if doc:
                objects.append(doc)
    return objects


def lint_chart(values_files: Iterable[str | Path] = (),
               set_values: Mapping[str, Any] | None = None,
               chart_dir: str | Path = CHART_DIR, namespace: str = "duplexalign",
               strict: bool = True) -> list[str]:
    """``helm lint --strict``: the warnings and errors as "SEVERITY path: message" lines
    (empty = clean; informational messages such as "icon is recommended" are left out)."""
    import helm_python as helm

    report = helm.lint(str(chart_dir), user_values(values_files, set_values), strict=strict,
                       namespace=namespace)
    findings = [f"{_SEVERITY.get(m.get('severity', 0), 'UNKNOWN')} {m.get('path', '')}: "
                f"{str(m.get('error', '')).strip()}" for m in report.get("messages") or []
                if m.get("severity", 0) != 1]
    findings += [f"ERROR {str(e).strip()}" for e in report.get("errors") or []
                 if not any(str(e).strip() in f for f in findings)]
    return findings
