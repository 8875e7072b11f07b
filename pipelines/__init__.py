"""Pipelines: wiring of components plus scheduling profiles; no domain logic lives here."""

from collections.abc import Callable
from dataclasses import dataclass

from kubeforge.config import ConfigError, PlatformConfig, SchedulingProfile
from kubeforge_pipelines import train_compress, train_evaluate


@dataclass(frozen=True)
class PipelineEntry:
    build: Callable[[SchedulingProfile, SchedulingProfile], Callable]
    sections: tuple[str, ...]  # the RunConfig sections whose fields are this pipeline's parameters
    description: str


PIPELINES: dict[str, PipelineEntry] = {
    module.NAME: PipelineEntry(module.build, module.SECTIONS, module.DESCRIPTION)
    for module in (train_compress, train_evaluate)
}
DEFAULT_PIPELINE = train_compress.NAME


def pipeline_entry(name: str) -> PipelineEntry:
    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")
    return PIPELINES[name]


def build_pipeline(name: str, platform: PlatformConfig, profile: str | None = None) -> Callable:
    """The named pipeline with its heavy step on ``profile`` (default: the platform's) and light steps on CPU."""
    entry = pipeline_entry(name)
    heavy = platform.profile(profile or platform.default_profile)
    light = platform.profile(platform.default_profile)
    return entry.build(heavy, light)
