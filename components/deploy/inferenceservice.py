"""The served model's InferenceService (serving.kserve.io/v1beta1, Serverless mode) and the
manifest changes of each rollout step.

KServe in Serverless (Knative) mode makes a new revision whenever the predictor's pod template
changes and, while ``spec.predictor.canaryTrafficPercent: N`` is set, splits traffic N% to that
latest revision and the rest to the last revision that had 100%. So every step is a small edit
of ONE manifest:

  init      the champion's template, no canary field (the first revision takes 100%)
  canary    the challenger's storage URI (a new template → a new revision) + canaryTrafficPercent
  promote   the canary field removed, nothing else touched (no new revision: the canary takes 100%)
  rollback  1) canaryTrafficPercent: 0 (instant: all traffic back on the last rolled-out revision)
            2) the champion's template restored and the field removed (after 1 has synced)

The manifest carries its own history in annotations (``duplexalign.io/*``: the model version it
serves, the one it replaced, the gate decision), so a rollback restores the champion's exact URI
from the file in Git without asking the registry, and a reviewer reads the change in the diff.
Custom containers receive the model through the ``STORAGE_URI`` env var: KServe's storage
initializer downloads it to /mnt/models before the predictor starts (KServe's documented way for
custom predictors; ``storageUri`` lives on the built-in model spec, not on containers).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.common.config import CONFIG_ENV
from components.common.podsecurity import container_security_context, tmp_mount, tmp_volume

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config
    from components.deploy.sources import DeploySource

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
MODEL_DIR = "/mnt/models"  # where the storage initializer puts the storage URI's objects
CONTAINER_NAME = "kserve-container"  # the name KServe mounts /mnt/models into
PORT = 8080  # ONE port: Knative routes exactly one (OIP v2 REST + the WebSocket stream)
A = "duplexalign.io/"  # annotation / label prefix
_LABEL_VALUE_RE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ServedModel:
    """What one pod template serves (recorded in the manifest's annotations)."""

    model_version: str  # "<registered name>/<version>" or "s3:<uri>"
    storage_uri: str  # s3://.../ (a folder)
    registry_name: str = ""
    registry_version: str = ""
    weights_sha256: str = ""

    @classmethod
    def from_source(cls, src: "DeploySource") -> "ServedModel":
        return cls(src.model_version, src.uri, src.registry_name, src.registry_version,
                   src.weights_sha256)

    def annotations(self, prefix: str) -> dict[str, str]:
        out = {f"{A}{prefix}model-version": self.model_version,
               f"{A}{prefix}storage-uri": self.storage_uri}
        if self.registry_name:
            out[f"{A}{prefix}registry-name"] = self.registry_name
            out[f"{A}{prefix}registry-version"] = self.registry_version
        if self.weights_sha256:
            out[f"{A}{prefix}weights-sha256"] = self.weights_sha256
        return out

    @classmethod
    def from_annotations(cls, ann: dict[str, str], prefix: str) -> "ServedModel | None":
        version = ann.get(f"{A}{prefix}model-version")
        if not version:
            return None
        return cls(version, ann.get(f"{A}{prefix}storage-uri", ""),
                   ann.get(f"{A}{prefix}registry-name", ""),
                   ann.get(f"{A}{prefix}registry-version", ""),
                   ann.get(f"{A}{prefix}weights-sha256", ""))


@dataclass(frozen=True)
class ManifestState:
    """What a manifest says about the rollout (read back from its annotations and spec)."""

    served: ServedModel  # the latest template's model
    previous: ServedModel | None  # the model it replaced (the stable one while a canary runs)
    canary_percent: int | None  # spec.predictor.canaryTrafficPercent (None: not set)
    gate_decision: str  # the attached decision record's path ("" when none)
    rolled_back: str  # model version a rollback removed ("" when none)

    @property
    def phase(self) -> str:
        """stable | canary | rolled-back-traffic (rollback commit 1 merged, commit 2 pending)."""
        if self.canary_percent is None:
            return "stable"
        return "rolled-back-traffic" if self.canary_percent == 0 else "canary"


def _label_value(text: str) -> str:
    """Kubernetes label values: ≤ 63 chars of [A-Za-z0-9_.-], alphanumeric at both ends."""
    return _LABEL_VALUE_RE.sub("-", text)[:63].strip("-_.")


def secret_env(cfg: "Config") -> list[dict[str, Any]]:
    """The predictor's secrets as env vars read from existing Secrets (``cfg.secrets``, by
    reference: no value ever reaches a manifest), under the names the configuration reads them
    from: S3 (the storage initializer and the conversation log), the pseudonymisation key and
    the consent registry's DSN (consent is asked at close)."""
    refs = cfg.secret_env("s3_access_key", "s3_secret_key", "pseudonym_key", "consent_dsn")
    return [{"name": env, "valueFrom": {"secretKeyRef": {
        "name": ref.name, "key": ref.key, **({"optional": True} if ref.optional else {})}}}
        for env, ref in refs.items()]


def render_inferenceservice(
    cfg: "Config",
    served: ServedModel,
    *,
    previous: ServedModel | None = None,
    canary_percent: int | None = None,
    gate_decision: str = "",
    rolled_back: str = "",
) -> dict[str, Any]:
    """The InferenceService serving ``served`` (see the module doc for the fields per step)."""
    d, s = cfg.deploy, cfg.serving
    pool = cfg.gpu_pool
    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": d.cpu_request, "memory": d.memory_request},
        "limits": {"memory": d.memory_limit}}
    if d.gpu:  # one accelerator per replica: the batcher serves every stream on it
        resources["requests"][pool.accelerator_type] = "1"
        resources["limits"][pool.accelerator_type] = "1"
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": d.image or cfg.pipeline.gpu_image,
        # the predictor binds the pod's one port on every interface and loads /mnt/models
        # serving/__main__.py: the folder the storage initializer filled, on the pod's one port,
        # reporting the REGISTRY version (a folder alone would be tagged "path:<sha>"): metrics
        # and logged conversations must carry the tag the canary figures are grouped by
        "command": ["python", "-m", "serving"],
        "args": ["--model-source", MODEL_DIR, "--model-name", s.model_name,
                 "--model-version", served.model_version, "--host", "0.0.0.0",
                 "--port", str(PORT)],
        "env": [{"name": "STORAGE_URI", "value": served.storage_uri},
                # the pod's configuration: the production profile, the platform's settings
                # (the Helm chart's ConfigMap, when present), secrets by reference only
                {"name": "DUPLEXALIGN_PROFILE", "value": "production"},
                {"name": CONFIG_ENV, "value": f"{cfg.pipeline.config_mount}/config.yaml"},
                *secret_env(cfg)],
        "ports": [{"containerPort": PORT, "name": "http1", "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": PORT}},
        "resources": resources,
        "securityContext": container_security_context(),
        "volumeMounts": [tmp_mount(), {"name": "platform-config", "readOnly": True,
                                       "mountPath": cfg.pipeline.config_mount}],
    }
    pod_annotations = {f"{A}model-version": served.model_version}
    pod_labels = {"app.kubernetes.io/name": "duplexalign-serving",
                  f"{A}model-version": _label_value(served.model_version)}
    predictor: dict[str, Any] = {
        "minReplicas": d.min_replicas,
        "maxReplicas": d.max_replicas,
        "serviceAccountName": d.service_account,
        "automountServiceAccountToken": False,  # the predictor never calls the Kubernetes API
        # Knative's revision timeout: the longest one request (a whole WebSocket conversation)
        # may last, and the grace a pod gets to drain its streams after SIGTERM (Knative sets
        # the pod's terminationGracePeriodSeconds from it and refuses that field itself)
        "timeout": max(d.request_timeout_s, int(s.drain_timeout_s) + 10),
        "annotations": pod_annotations,
        "labels": pod_labels,
        "containers": [container],
        # the restricted Pod Security Standard lives on the container (the image's user 10001,
        # /tmp writable): Knative takes a pod securityContext only behind a feature flag
        "volumes": [tmp_volume(), {"name": "platform-config", "configMap": {
            "name": cfg.pipeline.config_map, "items": [{"key": "config.yaml",
                                                        "path": "config.yaml"}]}}],
    }
    if d.gpu:  # the GPU node pool, as the train task reaches it (config.GpuPoolConfig)
        if pool.node_selector:
            predictor["nodeSelector"] = dict(pool.node_selector)
        predictor["tolerations"] = [
            {k: v for k, v in t.model_dump().items() if v != "" and not (
                k == "value" and t.operator == "Exists")} for t in pool.tolerations]
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = int(canary_percent)
    annotations = {"serving.kserve.io/deploymentMode": d.deployment_mode,
                   **served.annotations("")}
    if previous is not None:
        annotations.update(previous.annotations("previous-"))
    if gate_decision:
        annotations[f"{A}gate-decision"] = gate_decision
    if rolled_back:
        annotations[f"{A}rolled-back"] = rolled_back
    labels = {"app.kubernetes.io/name": "duplexalign-serving",
              "app.kubernetes.io/part-of": "duplexalign"}
    if served.registry_version:
        labels[f"{A}registry-version"] = _label_value(served.registry_version)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": d.name, "namespace": d.namespace, "labels": labels,
                     "annotations": annotations},
        "spec": {"predictor": predictor},
    }


def read_state(manifest: dict[str, Any]) -> ManifestState:
    """The rollout state a manifest (rendered here, or read from the cluster) describes."""
    if manifest.get("kind") != KIND:
        raise ValueError(f"not an {KIND}: kind={manifest.get('kind')!r}")
    ann = (manifest.get("metadata") or {}).get("annotations") or {}
    served = ServedModel.from_annotations(ann, "")
    if served is None:
        raise ValueError(f"the {KIND} has no {A}model-version annotation: it was not rendered "
                         "by `duplexalign deploy`; render the champion with `deploy --init`")
    percent = ((manifest.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
    return ManifestState(served=served, previous=ServedModel.from_annotations(ann, "previous-"),
                         canary_percent=None if percent is None else int(percent),
                         gate_decision=ann.get(f"{A}gate-decision", ""),
                         rolled_back=ann.get(f"{A}rolled-back", ""))


# ------------------------------------------------------------------------ the steps (pure)


class StepRefused(RuntimeError):
    """The step does not apply to the current manifest (the message says what would)."""


def init_manifest(cfg: "Config", champion: ServedModel) -> dict[str, Any]:
    return render_inferenceservice(cfg, champion)


def canary_manifest(cfg: "Config", current: dict[str, Any], challenger: ServedModel,
                    percent: int, gate_decision: str = "") -> dict[str, Any]:
    """The challenger's template with ``canaryTrafficPercent: percent``; the current (stable)
    model becomes the ``previous-*`` the rollback restores."""
    state = read_state(current)
    if state.phase != "stable":
        raise StepRefused(f"a canary of {state.served.model_version} is in progress "
                          f"({state.canary_percent}%): promote or roll it back first")
    if challenger.storage_uri == state.served.storage_uri:
        raise StepRefused(f"{challenger.model_version} is already what the manifest serves")
    if not 0 < percent < 100:
        raise StepRefused(f"canary percent must be in 1..99, got {percent}")
    return render_inferenceservice(cfg, challenger, previous=state.served,
                                   canary_percent=percent, gate_decision=gate_decision)


def promote_manifest(current: dict[str, Any]) -> dict[str, Any]:
    """The same manifest without canaryTrafficPercent: no template change, so no new revision;
    the canary revision takes all traffic."""
    state = read_state(current)
    if state.phase != "canary":
        raise StepRefused("no canary to promote" if state.phase == "stable" else
                          "the canary was rolled back (0%): finish the rollback with "
                          "`deploy --rollback`, then open a new canary")
    out = copy.deepcopy(current)
    del out["spec"]["predictor"]["canaryTrafficPercent"]
    return out


def rollback_manifest(cfg: "Config", current: dict[str, Any]) -> dict[str, Any]:
    """Rollback commit 1 (canary → 0%, nothing else) or, once that is in place, commit 2 (the
    previous model's template restored, no canary field)."""
    state = read_state(current)
    if state.phase == "canary":
        out = copy.deepcopy(current)
        out["spec"]["predictor"]["canaryTrafficPercent"] = 0
        return out
    if state.phase == "rolled-back-traffic":
        if state.previous is None:
            raise StepRefused("the manifest records no previous model to restore")
        return render_inferenceservice(cfg, state.previous,
                                       rolled_back=state.served.model_version)
    raise StepRefused("nothing to roll back: no canary in the manifest (after a promotion, "
                      "roll back by a canary of previous-champion)")
