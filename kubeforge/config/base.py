"""Shared pieces of the config model: the error type, the section base class, name patterns."""

from __future__ import annotations

import re

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

