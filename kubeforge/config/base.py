"""Shared pieces of the config model: the error type, the section base class, name patterns."""

from __future__ import annotations

import re

import os
from collections.abc import Iterable, Mapping
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError


# Kubernetes object names (namespaces, labels, Helm releases) and image references, checked wherever they are taken
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_LABEL = re.compile(DNS_LABEL_PATTERN)
IMAGE_REFERENCE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
                             r"(:[\w][\w.-]{0,127})?(@sha256:[a-f0-9]{64})?$")


class ConfigError(ValueError):
    """A configuration value was rejected; the message names the setting and the reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the offending setting."""
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"] if part != "__root__") or "config"
        name = location.split(".")[-1] if location != "config" else location
        problems.append(f"{name}: {error['msg']}")
    return "; ".join(problems)



def check_method_chains(value: list[str], known: Iterable[str], what: str) -> list[str]:
    """Candidates are methods or '+' chains of them; every link must be a known method."""
    known = tuple(known)
    if not value:
        raise ValueError("at least one compression method is required")
    for candidate in value:
        for method in candidate.split("+"):
            if method not in known:
                raise ValueError(f"unknown {what} {method!r} in {candidate!r}; known: {', '.join(known)}")
    return value


class EnvSection(_Section):
    """A section a pod reads from ``<ENV_PREFIX><FIELD>`` variables, which the chart renders from ``to_env``.
    ``prefix`` overrides ENV_PREFIX where one section serves two programs (the tenant layer: service and gateway)."""

    ENV_PREFIX: ClassVar[str] = ""
    ENV_LABEL: ClassVar[str] = "environment"

    def to_env(self, prefix: str | None = None) -> dict[str, str]:
        """The environment a serving pod gets (the chart renders exactly these names; booleans as YAML does)."""
        prefix = prefix or self.ENV_PREFIX
        return {f"{prefix}{name.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
                for name, value in self.model_dump().items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, prefix: str | None = None):
        """Read the prefixed variables; a bad value is a ConfigError naming the variable."""
        environ = os.environ if environ is None else environ
        prefix = prefix or cls.ENV_PREFIX
        values = {name: environ[f"{prefix}{name.upper()}"] for name in cls.model_fields
                  if f"{prefix}{name.upper()}" in environ}
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(f"{cls.ENV_LABEL}: {describe_validation_error(exc)} "
                              f"(variables {prefix}<NAME>)") from None
