"""Pipeline parameters derived from the one config model, so no pipeline lists them by hand.

KFP reads a pipeline's interface from ``inspect.signature`` and its parameter descriptions from the docstring's
``Args:`` block, and calls the function once at compile time with one channel per parameter. So a pipeline here is a
body that takes those channels as a dict, wrapped in a function whose signature (names, KFP types, defaults) and
docstring are built from the sections the pipeline uses. Components keep their explicit typed parameters (KFP runs
their source in the container); ``section_args`` picks a section's channels out of the dict to pass to them.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kfp import dsl

from kubeforge.config import RunConfig

Params = Mapping[str, Any]


def kfp_type(annotation: Any) -> type:
    """The KFP parameter type of a pydantic field: str, int, float, bool, list or dict."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0])
    if origin in (list, tuple) or annotation in (list, tuple):
        return list
    if origin is dict or annotation is dict:
        return dict
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return kfp_type(members[0])
    if annotation in (bool, int, float, str):
        return annotation
    raise TypeError(f"no KFP parameter type for {annotation!r}")


def pipeline_parameters(sections: Iterable[str], fixed: Iterable[str] = ()) -> list[inspect.Parameter]:
    fields = RunConfig.flat_fields(sections)
    defaults = RunConfig().to_flat(sections)
    return [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[name],
                              annotation=kfp_type(field.info.annotation))
            for name, field in fields.items() if name not in set(fixed)]


def _docstring(description: str, parameters: list[inspect.Parameter], sections: Iterable[str]) -> str:
    fields = RunConfig.flat_fields(sections)
    lines = [description, "", "Args:"]
    lines += [f"    {p.name}: {fields[p.name].info.description or p.name}" for p in parameters]
    return "\n".join(lines)


def derived_pipeline(name: str, description: str, sections: Iterable[str], body: Callable[[Params], Any], *,
                     fixed: Iterable[str] = ()) -> Callable:
    """A ``@dsl.pipeline`` whose parameters are the flat fields of ``sections`` (less ``fixed``) with their
    defaults; ``body`` receives them as a dict of channels and returns the pipeline's output (the report)."""
    sections = tuple(sections)
    parameters = pipeline_parameters(sections, fixed)
    signature = inspect.Signature(parameters, return_annotation=dsl.HTML)

    def pipeline_function(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return body(dict(bound.arguments))

    pipeline_function.__signature__ = signature  # type: ignore[attr-defined]
    pipeline_function.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": dsl.HTML}
    pipeline_function.__name__ = pipeline_function.__qualname__ = name.replace("-", "_")
    pipeline_function.__doc__ = _docstring(description, parameters, sections)
    return dsl.pipeline(name=name, description=description)(pipeline_function)


def section_args(params: Params, *sections: str, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The channels of the given sections' fields, to pass to a component that takes exactly those parameters."""
    names = set(RunConfig.flat_fields(sections)) - set(exclude)
    return {name: value for name, value in params.items() if name in names}
