"""The whole run's configuration: every step section, flattened into the parameters the CLI and pipelines take.

Each section is a step's configuration. Flat names are unique across the run: a section's field names are used as
they are, or with the section's prefix where one class serves two steps (pre-training and fine-tuning), so
``-p pretrain_steps=300`` and ``-p finetune_steps=100`` set the same field of two sections.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, NamedTuple

import yaml
from pydantic import Field, ValidationError

from kubeforge.config.base import ConfigError, _Section
from kubeforge.config.language import (FINETUNE_DEFAULTS, PRETRAIN_DEFAULTS, LMCompressConfig, LMDataConfig,
                                       LMModelConfig, LMRuntimeConfig, LMTrainConfig, LoRAConfig)
from kubeforge.config.sections import (ClusterConfig, CompressConfig, DataConfig, DistributedConfig, ModelConfig,
                                       TrainConfig)


class FlatField(NamedTuple):
    section: str
    info: Any  # pydantic FieldInfo: annotation, default, description
    name: str  # the field's name inside its section


class RunConfig(_Section):
    """A whole run: the union of the step sections, classifier and language model alike."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    lm_model: LMModelConfig = Field(default_factory=LMModelConfig)
    lm_data: LMDataConfig = Field(default_factory=LMDataConfig)
    lm_runtime: LMRuntimeConfig = Field(default_factory=LMRuntimeConfig)
    pretrain: LMTrainConfig = Field(default_factory=lambda: PRETRAIN_DEFAULTS)
    finetune: LMTrainConfig = Field(default_factory=lambda: FINETUNE_DEFAULTS)
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    lm_compress: LMCompressConfig = Field(default_factory=LMCompressConfig)

    PREFIXES: ClassVar[dict[str, str]] = {"pretrain": "pretrain_", "finetune": "finetune_"}

    @classmethod
    def sections(cls) -> dict[str, type[_Section]]:
        return {name: field.annotation for name, field in cls.model_fields.items()}  # type: ignore[misc]

    @classmethod
    def flat_fields(cls, sections: Iterable[str] | None = None) -> dict[str, FlatField]:
        """Map each flat parameter name to (section, pydantic FieldInfo, field name), for the given sections or all."""
        wanted = list(sections) if sections is not None else list(cls.sections())
        unknown = sorted(set(wanted) - set(cls.sections()))
        if unknown:
            raise ConfigError(f"unknown config section {unknown[0]!r}")
        flat: dict[str, FlatField] = {}
        for section, model in cls.sections().items():
            prefix = cls.PREFIXES.get(section, "")
            for name, info in model.model_fields.items():
                if prefix + name in flat:
                    raise RuntimeError(f"parameter {prefix + name!r} is defined in two sections")
                flat[prefix + name] = FlatField(section, info, name)
        return {name: field for name, field in flat.items() if field.section in wanted}

    @classmethod
    def from_flat(cls, values: dict[str, Any], sections: Iterable[str] | None = None) -> RunConfig:
        """Build from flat ``name=value`` pairs (CLI, pipeline parameters), naming any bad key or value.

        ``sections`` limits the accepted names to the steps a pipeline has, so a compression setting given to a
        pipeline without a compress step is reported instead of silently ignored. A section starts from the run's
        default for it (pre-training and fine-tuning have different defaults of one class).
        """
        fields = cls.flat_fields(sections)
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"unknown parameter {unknown[0]!r}; known: {', '.join(sorted(fields))}")
        defaults = cls()
        nested: dict[str, dict[str, Any]] = {}
        for flat_name, value in values.items():
            field = fields[flat_name]
            nested.setdefault(field.section, getattr(defaults, field.section).model_dump())[field.name] = value
        try:
            return cls(**nested)
        except ValidationError as exc:
            raise ConfigError(cls._describe(exc)) from None

    @classmethod
    def from_component_args(cls, values: dict[str, Any], sections: Iterable[str]) -> RunConfig:
        """A component's parameters (its ``locals()``): the config fields of ``sections``, artifacts ignored."""
        fields = cls.flat_fields(sections)
        return cls.from_flat({name: value for name, value in values.items() if name in fields}, sections)

    @classmethod
    def _describe(cls, exc: ValidationError) -> str:
        """One clause per problem, naming the flat parameter (``finetune_steps``, not ``finetune.steps``)."""
        problems = []
        for error in exc.errors():
            loc = [str(part) for part in error["loc"]]
            section = loc[0] if loc else ""
            name = (cls.PREFIXES.get(section, "") + loc[1]) if len(loc) > 1 else (section or "config")
            problems.append(f"{name}: {error['msg']}")
        return "; ".join(problems)

    def to_flat(self, sections: Iterable[str] | None = None) -> dict[str, Any]:
        wanted = list(sections) if sections is not None else list(self.sections())
        flat: dict[str, Any] = {}
        for section in wanted:
            prefix = self.PREFIXES.get(section, "")
            flat.update({prefix + name: value for name, value in getattr(self, section).model_dump().items()})
        return flat

    def section_values(self, section: str) -> dict[str, Any]:
        return getattr(self, section).model_dump()


def parse_param_assignments(assignments: list[str], sections: Iterable[str] | None = None) -> dict[str, Any]:
    """Turn CLI ``key=value`` strings into values typed by the field they target.

    Values are parsed as YAML scalars/lists (``epochs=5``, ``hidden_sizes=[64,32]``, ``mixed_precision=false``) and
    then validated by the model, so a typo in a name or a type is reported with the parameter's name.
    """
    fields = RunConfig.flat_fields(sections)
    values: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"parameter {item!r} is not of the form key=value")
        if key not in fields:
            raise ConfigError(f"unknown parameter {key!r}; known: {', '.join(sorted(fields))}")
        annotation = fields[key].info.annotation
        if annotation is str:
            values[key] = raw
            continue
        try:
            values[key] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            raise ConfigError(f"parameter {key!r}: cannot parse value {raw!r}") from None
    return values
