"""Pipelines: wiring of components plus scheduling profiles; no domain logic lives here."""

from collections.abc import Callable

from kubeforge.config import ConfigError, PlatformConfig, SchedulingProfile
from kubeforge_pipelines import train_evaluate

Builder = Callable[[SchedulingProfile, SchedulingProfile], Callable]

PIPELINES: dict[str, Builder] = {
    train_evaluate.NAME: train_evaluate.build,
}
DEFAULT_PIPELINE = train_evaluate.NAME


def build_pipeline(name: str, platform: PlatformConfig, profile: str | None = None) -> Callable:
    """The named pipeline with its heavy step on ``profile`` (default: the platform's) and light steps on CPU."""
    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")
    heavy = platform.profile(profile or platform.default_profile)
    light = platform.profile(platform.default_profile)
    return PIPELINES[name](heavy, light)
