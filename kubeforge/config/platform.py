"""Scheduling profiles (one definition drives the pipelines' task settings and the chart's values), the platform
file, the project image and submission settings."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from kubeforge.config.base import DNS_LABEL, DNS_LABEL_PATTERN, IMAGE_REFERENCE, ConfigError, _Section, describe_validation_error


class Toleration(_Section):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


_QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"


class SchedulingProfile(_Section):
    """Where and with what a GPU (or CPU) workload runs."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    description: str = ""
    gpu_resource: str = Field("nvidia.com/gpu", description="extended resource name, e.g. a MIG resource")
    gpu_count: int = Field(0, ge=0, description="GPUs per pod (0: CPU only)")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    cpu_request: str = Field("500m", pattern=_QUANTITY_PATTERN)
    memory_request: str = Field("1Gi", pattern=_QUANTITY_PATTERN)
    cpu_limit: str | None = Field(None, pattern=_QUANTITY_PATTERN)
    memory_limit: str | None = Field(None, pattern=_QUANTITY_PATTERN)
    priority_class: str | None = None

    @property
    def uses_gpu(self) -> bool:
        return self.gpu_count > 0

    @model_validator(mode="after")
    def _gpu_settings_need_gpus(self) -> SchedulingProfile:
        if self.gpu_count > 0 and not any(t.key == self.gpu_resource or t.key == "nvidia.com/gpu"
                                          for t in self.tolerations):
            raise ValueError(f"profile {self.name!r} asks for GPUs but does not tolerate the GPU taint")
        return self


class PlatformConfig(_Section):
    """The platform team's file: scheduling profiles and the default project image."""

    image: str = "ghcr.io/kubeforge/kubeforge-runtime:0.1.0"
    default_profile: str = "cpu"
    profiles: list[SchedulingProfile]

    @model_validator(mode="after")
    def _profiles_unique_and_default_known(self) -> PlatformConfig:
        names = [p.name for p in self.profiles]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"profile {duplicates[0]!r} is defined twice")
        if self.default_profile not in names:
            raise ValueError(f"default_profile {self.default_profile!r} is not among the profiles")
        return self

    def profile(self, name: str) -> SchedulingProfile:
        for profile in self.profiles:
            if profile.name == name:
                return profile
        known = ", ".join(p.name for p in self.profiles)
        raise ConfigError(f"unknown profile {name!r}; known: {known}")


PLATFORM_FILE_ENV = "KUBEFORGE_PLATFORM_CONFIG"
_BUILTIN_PLATFORM_FILE = Path(__file__).parent.parent / "platform" / "platform.yaml"


def load_platform(path: str | os.PathLike[str] | None = None) -> PlatformConfig:
    """Load the platform file: an explicit path, then $KUBEFORGE_PLATFORM_CONFIG, then the built-in one."""
    source = Path(path or os.environ.get(PLATFORM_FILE_ENV) or _BUILTIN_PLATFORM_FILE)
    try:
        raw = yaml.safe_load(source.read_text())
    except FileNotFoundError:
        raise ConfigError(f"platform config {source} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"platform config {source} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"platform config {source} must be a mapping")
    try:
        return PlatformConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(f"platform config {source}: {describe_validation_error(exc)}") from None


# --------------------------------------------------------------------------------------------------------------------
# The project image and submission to a Kubeflow Pipelines endpoint.

IMAGE_ENV = "KUBEFORGE_IMAGE"


def runtime_image(platform: PlatformConfig, environ: Mapping[str, str] | None = None) -> str:
    """The one image every pipeline task runs in: $KUBEFORGE_IMAGE, else the platform file's ``image:``."""
    environ = os.environ if environ is None else environ
    image, source = (environ[IMAGE_ENV], f"${IMAGE_ENV}") if environ.get(IMAGE_ENV) else (platform.image, "image")
    if not IMAGE_REFERENCE.match(image):
        raise ConfigError(f"{source} {image!r} is not an image reference (registry/repository:tag or @sha256:<64 hex>)")
    return image


class SubmitConfig(_Section):
    """Where and how `kubeforge submit` sends a pipeline; the token is a secret and is never part of it."""

    host: str = Field("", description="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    namespace: str = Field(description="the tenant's namespace (Kubeflow profile) the run belongs to")
    experiment: str = Field("kubeforge", min_length=1, max_length=128, description="experiment (created if missing)")
    run_name: str = Field("", max_length=128, description="run display name ('' = '<pipeline> <UTC time>')")
    service_account: str = Field("", pattern=r"^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                 description="ServiceAccount the run's pods use ('' = the namespace default)")
    enable_caching: bool = Field(False, description="let the training step reuse cached results")
    kube_context: str = Field("", description="reach KFP through this kubeconfig context's API server proxy")
    kfp_namespace: str = Field("kubeflow", pattern=DNS_LABEL_PATTERN,
                               description="namespace of the ml-pipeline service (kube-context access)")
    ui_host: str = Field("", pattern=r"^$|^https?://\S+$", description="UI address for the printed link ('' = host)")
    timeout_s: float = Field(15.0, gt=0.0, le=600.0, description="timeout of each API request")

    @field_validator("host")
    @classmethod
    def _endpoint_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^\s/]+(/\S*)?$", value):
            raise ValueError(f"{value!r} is not an http(s):// URL")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace_label(cls, value: str) -> str:
        if len(value) > 63 or not DNS_LABEL.match(value):
            raise ValueError(f"{value!r} is not a DNS-1123 label (lower-case letters, digits, '-')")
        return value

    @model_validator(mode="after")
    def _one_way_in(self) -> SubmitConfig:
        if not self.host and not self.kube_context:
            raise ValueError("give --host URL (the KFP API endpoint) or --kube-context NAME")
        if self.host and self.kube_context:
            raise ValueError("give --host or --kube-context, not both")
        return self
