"""Pipelines: wiring of components plus scheduling profiles; no domain logic lives here."""

from collections.abc import Callable
from dataclasses import dataclass

from kubeforge.config import ConfigError, PlatformConfig, runtime_image
from kubeforge_pipelines import (lm_finetune, lm_finetune_cluster, lm_pretrain_finetune, train_compress,
                                 train_compress_cluster, train_evaluate)
from kubeforge_pipelines.scheduling import Placement


@dataclass(frozen=True)
class PipelineEntry:
    build: Callable[[Placement], Callable]
    sections: tuple[str, ...]  # the RunConfig sections whose fields are this pipeline's parameters
    description: str
    fixed: tuple[str, ...] = ()  # fields of those sections kept at their default: KFP needs them at compile time
    cluster_only: str = ""  # why kfp.local cannot run it ('' = it can)
    kind: str = "classifier"  # or "language-model": what the run summary and `kubeforge runs` read
    training_tasks: tuple[str, ...] = ("train",)  # tasks placed by the heavy (GPU) profile


PIPELINES: dict[str, PipelineEntry] = {
    module.NAME: PipelineEntry(module.build, module.SECTIONS, module.DESCRIPTION, getattr(module, "FIXED", ()),
                               getattr(module, "CLUSTER_ONLY", ""), getattr(module, "KIND", "classifier"),
                               module.TRAINING_TASKS)
    for module in (train_compress, train_compress_cluster, train_evaluate, lm_pretrain_finetune, lm_finetune,
                   lm_finetune_cluster)
}
DEFAULT_PIPELINE = train_compress.NAME


def pipeline_entry(name: str) -> PipelineEntry:
    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")
    return PIPELINES[name]


def build_pipeline(name: str, platform: PlatformConfig, profile: str | None = None, *,
                   cache_training: bool = False) -> Callable:
    """The named pipeline with its heavy step on ``profile`` (default: the platform's), light steps on the default
    profile, and every task in the project image (raises ConfigError on an unknown name, profile or bad image)."""
    entry = pipeline_entry(name)
    placement = Placement(heavy=platform.profile(profile or platform.default_profile),
                          light=platform.profile(platform.default_profile), image=runtime_image(platform),
                          cache_training=cache_training)
    return entry.build(placement)
