"""An in-cluster image build for clusters without a local builder: a Kubernetes Job that builds the Bento's
Dockerfile context with Kaniko or rootless BuildKit and pushes the image.

The context reaches the Job from a PersistentVolumeClaim (both builders) or an object-store/tar URI (Kaniko's
``--context`` accepts ``s3://``, ``gs://``, ``tar://`` ...). Registry credentials come from a docker-config Secret.
"""

from __future__ import annotations

from typing import Any, Literal

from kubeforge.config import DNS_LABEL, IMAGE_REFERENCE, ConfigError

BUILDER_IMAGES = {  # pinned builder images; override with --builder-image for a mirror
    "kaniko": "gcr.io/kaniko-project/executor:v1.23.2",
    "buildkit": "moby/buildkit:v0.16.0-rootless",
}


def _check(image: str, namespace: str, name: str, context_pvc: str | None, context_uri: str | None,
           builder: str) -> None:
    if not IMAGE_REFERENCE.match(image):
        raise ConfigError(f"image {image!r} is not a valid image reference (registry/repository:tag)")
    for label, value in (("namespace", namespace), ("name", name)):
        if not DNS_LABEL.match(value) or len(value) > 63:
            raise ConfigError(f"{label} {value!r} is not a valid DNS-1123 label")
    if (context_pvc is None) == (context_uri is None):
        raise ConfigError("give exactly one build context source: --context-pvc or --context-uri")
    if context_uri is not None and builder != "kaniko":
        raise ConfigError("--context-uri needs the kaniko builder; buildkit reads the context from a PVC")
    if builder not in BUILDER_IMAGES:
        raise ConfigError(f"unknown builder {builder!r}; known: {', '.join(BUILDER_IMAGES)}")


def render_image_job(image: str, *, namespace: str, name: str = "kubeforge-image-build",
                     builder: Literal["kaniko", "buildkit"] = "kaniko", context_pvc: str | None = None,
                     context_subpath: str = "", context_uri: str | None = None,
                     registry_secret: str = "registry-credentials", builder_image: str | None = None,
                     service_account: str | None = None) -> dict[str, Any]:
    _check(image, namespace, name, context_pvc, context_uri, builder)
    workspace = "/workspace"
    volumes: list[dict] = [{"name": "registry", "secret": {"secretName": registry_secret,
                                                           "items": [{"key": ".dockerconfigjson",
                                                                      "path": "config.json"}]}}]
    mounts: list[dict] = []
    if context_pvc:
        volumes.append({"name": "context", "persistentVolumeClaim": {"claimName": context_pvc, "readOnly": True}})
        mounts.append({"name": "context", "mountPath": workspace, "subPath": context_subpath, "readOnly": True}
                      if context_subpath else {"name": "context", "mountPath": workspace, "readOnly": True})
    if builder == "kaniko":
        mounts.append({"name": "registry", "mountPath": "/kaniko/.docker", "readOnly": True})
        container = {
            "name": "kaniko", "image": builder_image or BUILDER_IMAGES["kaniko"],
            "args": [f"--context={context_uri or 'dir://' + workspace}", "--dockerfile=env/docker/Dockerfile",
                     f"--destination={image}", "--snapshot-mode=redo", "--use-new-run"],
        }
        pod_security: dict[str, Any] = {}
    else:
        mounts.append({"name": "registry", "mountPath": "/home/user/.docker", "readOnly": True})
        volumes.append({"name": "buildkitd", "emptyDir": {}})
        mounts.append({"name": "buildkitd", "mountPath": "/home/user/.local/share/buildkit"})
        container = {
            "name": "buildkit", "image": builder_image or BUILDER_IMAGES["buildkit"],
            "command": ["buildctl-daemonless.sh"],
            "args": ["build", "--frontend", "dockerfile.v0", "--local", f"context={workspace}",
                     "--local", f"dockerfile={workspace}/env/docker",
                     "--output", f"type=image,name={image},push=true"],
            "env": [{"name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox"}],
            # rootless BuildKit needs unconfined seccomp/AppArmor to create its user namespaces
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000,
                                "seccompProfile": {"type": "Unconfined"},
                                "appArmorProfile": {"type": "Unconfined"}},
        }
        pod_security = {"fsGroup": 1000}
    container.update({"volumeMounts": mounts,
                      "resources": {"requests": {"cpu": "1", "memory": "2Gi"},
                                    "limits": {"cpu": "2", "memory": "4Gi"}}})
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": volumes}
    if pod_security:
        spec["securityContext"] = pod_security
    if service_account:
        spec["serviceAccountName"] = service_account
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "kubeforge-image-build",
                                "app.kubernetes.io/managed-by": "kubeforge"}},
        "spec": {"backoffLimit": 1, "ttlSecondsAfterFinished": 3600, "activeDeadlineSeconds": 3600,
                 "template": {"metadata": {"labels": {"app.kubernetes.io/name": "kubeforge-image-build"}},
                              "spec": spec}},
    }
