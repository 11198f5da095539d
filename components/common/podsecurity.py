"""The restricted Pod Security Standard, as the pods we render carry it.

Both images run as the numeric non-root user 10001 (components/Dockerfile, serving/Dockerfile)
with HOME=/tmp, so every pod mounts a writable emptyDir at /tmp and keeps its root filesystem
read-only. The Helm chart's templates (helm/duplexalign) set the same fields.
"""

from __future__ import annotations

from typing import Any

RUN_AS_USER = 10001
TMP_VOLUME = "tmp"


def container_security_context() -> dict[str, Any]:
    """Complete on its own (seccomp included): Knative accepts a pod-level securityContext
    only behind its ``kubernetes.podspec-securitycontext`` flag, so a served model's pod relies
    on the container's alone."""
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def tmp_volume(size_limit: str = "8Gi") -> dict[str, Any]:
    """The writable scratch space (HOME=/tmp: caches, torch's and Whisper's temporary files)."""
    return {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": size_limit}}


def tmp_mount() -> dict[str, Any]:
    return {"name": TMP_VOLUME, "mountPath": "/tmp"}
