"""Direct mode: apply the step's manifest through the Kubernetes API (CustomObjectsApi).

Only when asked (``deploy --apply`` with ``deploy.mode=direct``) and only with a kubeconfig:
``deploy.kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config`` (in a pod, the service
account). In GitOps mode nothing calls this: Argo CD owns the cluster state there.
The object is written whole (create, or replace at the resourceVersion just read): a removed
field such as ``canaryTrafficPercent`` must disappear, which a merge patch would need spelt as
null, and the resourceVersion makes a concurrent edit fail loudly instead of being overwritten.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from kubernetes.client import ApiClient

    from components.common.config import Config

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


class NoKubeconfig(RuntimeError):
    """Direct mode was asked for but there is no cluster to talk to."""


def kubeconfig_path(cfg: "Config") -> Path | None:
    """The kubeconfig direct mode uses, or None (then only in-cluster config can work)."""
    for candidate in (cfg.deploy.kubeconfig, os.environ.get("KUBECONFIG", ""),
                      str(Path.home() / ".kube" / "config")):
        if candidate and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser()
    return None


def api_client(cfg: "Config") -> "ApiClient":
    from kubernetes import client, config

    path = kubeconfig_path(cfg)
    if path is not None:
        return config.new_client_from_config(config_file=str(path))
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    raise NoKubeconfig("direct mode needs a kubeconfig: set deploy.kubeconfig, $KUBECONFIG or "
                       "~/.kube/config (or use the default GitOps mode: write + merge)")


@dataclass
class Applied:
    action: str  # "created" | "replaced" | "unchanged"
    resource_version: str
    generation: int | None


def _custom(cfg: "Config") -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client(cfg))


def get_inferenceservice(cfg: "Config") -> dict[str, Any] | None:
    """The live object (spec + status), or None when it does not exist."""
    from kubernetes.client.exceptions import ApiException

    try:
        return _custom(cfg).get_namespaced_custom_object(
            GROUP, VERSION, cfg.deploy.namespace, PLURAL, cfg.deploy.name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def apply_manifest(cfg: "Config", manifest: dict[str, Any]) -> Applied:
    """Create the InferenceService, or replace its spec/labels/annotations (see module doc)."""
    from kubernetes.client.exceptions import ApiException

    api = _custom(cfg)
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        live = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        made = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest)
        meta = made.get("metadata", {})
        return Applied("created", str(meta.get("resourceVersion", "")), meta.get("generation"))
    body = copy.deepcopy(manifest)
    live_meta = live.get("metadata", {})
    if (live.get("spec") == body.get("spec")
            and live_meta.get("annotations") == body["metadata"].get("annotations")
            and live_meta.get("labels") == body["metadata"].get("labels")):
        return Applied("unchanged", str(live_meta.get("resourceVersion", "")),
                       live_meta.get("generation"))
    body["metadata"]["resourceVersion"] = live_meta.get("resourceVersion")
    done = api.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, body)
    meta = done.get("metadata", {})
    return Applied("replaced", str(meta.get("resourceVersion", "")), meta.get("generation"))


def manifest_view(live: dict[str, Any]) -> dict[str, Any]:
    """The parts of a live object a rendered manifest has (server-set metadata and status
    dropped), so plans diff the live state against what `deploy` renders."""
    meta = live.get("metadata") or {}
    view_meta = {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta}
    return {"apiVersion": live.get("apiVersion"), "kind": live.get("kind"),
            "metadata": view_meta, "spec": copy.deepcopy(live.get("spec") or {})}
