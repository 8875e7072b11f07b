"""Values for charts/kubeforge-serving from a run: the image, and resources/GPU/placement from the named scheduling
profile — the same profile objects the pipelines apply to their tasks, so a profile is defined once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from kubeforge.config import ConfigError, PlatformConfig, SchedulingProfile, ServeConfig
from kubeforge.models import load_spec
from kubeforge.serving.source import resolve_model_dir

GFD_PRODUCT_LABEL = "nvidia.com/gpu.product"
_IMAGE = re.compile(r"^(?P<repository>[^@\s]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$")


def image_values(image: str) -> dict[str, str]:
    match = _IMAGE.match(image)
    if not match or ("/" not in match["repository"] and not match["tag"] and not match["digest"]):
        raise ConfigError(f"image {image!r} is not a valid reference (registry/repository:tag or @sha256:...)")
    values = {"repository": match["repository"]}
    if match["digest"]:
        values["digest"] = match["digest"]  # a digest pins the image; the chart refuses tag and digest together
    elif match["tag"]:
        values["tag"] = match["tag"]
    return values


def scheduling_values(profile: SchedulingProfile) -> dict[str, Any]:
    resources: dict[str, dict[str, str]] = {"requests": {"cpu": profile.cpu_request, "memory": profile.memory_request}}
    limits = {k: v for k, v in (("cpu", profile.cpu_limit), ("memory", profile.memory_limit)) if v}
    if limits:
        resources["limits"] = limits
    values: dict[str, Any] = {"resources": resources}
    node_selector = dict(profile.node_selector)
    if profile.uses_gpu:
        values["gpu"] = {"enabled": True, "count": profile.gpu_count, "resource": profile.gpu_resource,
                         "product": node_selector.pop(GFD_PRODUCT_LABEL, ""), "productLabelPreset": "gfd",
                         "tolerateGpuTaint": any(t.key == "nvidia.com/gpu" for t in profile.tolerations)}
        other = [t.model_dump(exclude_none=True) for t in profile.tolerations if t.key != "nvidia.com/gpu"]
    else:
        values["gpu"] = {"enabled": False, "count": 0}
        other = [t.model_dump(exclude_none=True) for t in profile.tolerations]
    if node_selector:
        values["nodeSelector"] = node_selector
    if other:
        values["tolerations"] = other
    if profile.priority_class:
        values["priorityClassName"] = profile.priority_class
    return values


def values_for_run(source: str | Path, profile: SchedulingProfile, image: str,
                   serve: ServeConfig | None = None) -> dict[str, Any]:
    """Chart values for the model of ``source`` (a run or model directory) placed by ``profile``."""
    from kubeforge.llm.source import is_lm_source, resolve_lm_source

    if is_lm_source(source):
        served = resolve_lm_source(source)
        return {"image": image_values(image), **scheduling_values(profile), "llm": {"enabled": True},
                "podAnnotations": {"kubeforge.io/model-dir": str(served.base), "kubeforge.io/profile": profile.name,
                                   "kubeforge.io/adapters": ",".join(sorted(served.adapters))}}
    model_dir = resolve_model_dir(source)
    spec = load_spec(model_dir)
    values: dict[str, Any] = {"image": image_values(image), **scheduling_values(profile),
                              "serving": (serve or ServeConfig()).model_dump(),
                              "podAnnotations": {"kubeforge.io/model-dir": str(model_dir),
                                                 "kubeforge.io/profile": profile.name,
                                                 "kubeforge.io/precision": spec.precision}}
    return values


def write_values(source: str | Path, output: str | Path, platform: PlatformConfig, profile: str | None,
                 image: str, serve: ServeConfig | None = None) -> Path:
    chosen = platform.profile(profile or platform.default_profile)
    values = values_for_run(source, chosen, image, serve)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(f"# kubeforge deploy values: profile {chosen.name}\n" + yaml.safe_dump(values, sort_keys=False))
    return output
