"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}``, the one every client parses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from kubeforge.serving.admission import retry_headers

INVALID_REQUEST = "invalid_request_error"
NOT_FOUND = "not_found_error"
SERVER_ERROR = "server_error"
OVERLOADED = "overloaded_error"
PERMISSION = "permission_error"


class APIError(Exception):
    """A refusal with its HTTP status; ``param`` names the offending field (``messages[0].role``)."""

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST, param: str | None = None,
                 code: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return json.dumps(self.payload()).encode()

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after_s is None:
            return []
        return retry_headers(max(1, round(self.retry_after_s)))


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def overloaded(message: str, retry_after_s: float = 1.0, code: str = "overloaded") -> APIError:
    return APIError(503, message, type=OVERLOADED, code=code, retry_after_s=retry_after_s)


def model_not_found(name: str, known: Sequence[str]) -> APIError:
    listed = ", ".join(sorted(known)) or "none"
    return APIError(404, f"The model {name!r} does not exist; served models: {listed} (GET /v1/models)",
                    type=NOT_FOUND, param="model", code="model_not_found")


def field_path(location: Sequence[Any]) -> str:
    """pydantic's ('messages', 0, 'role') -> 'messages[0].role'; union branch tags are dropped."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_union_tag(str(part)):
            path += ("." if path else "") + str(part)
    return path


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "json-or-python", "lax-or-strict"})


def _is_union_tag(part: str) -> bool:
    """pydantic names the branch of a union it tried in ``loc`` (``list[int]``, ``function-after[...]``)."""
    return part in _UNION_TAGS or "[" in part or part.startswith(("function-", "constrained-"))


def from_validation_error(exc: ValidationError) -> APIError:
    """The first problem of a request body, as a 400 that names its field."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return bad_request(f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}", code="invalid_json")
    if first["type"] == "model_type" or (first["type"] in ("dict_type", "model_attributes_type")
                                         and not first["loc"]):
        return bad_request("the request body must be a JSON object", code="invalid_type")
    param = field_path(first["loc"])
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    value = first.get("input")
    shown = f"; got {json.dumps(value, default=str)[:80]}" if value is not None and first["type"] != "missing" else ""
    return bad_request(f"{param or 'body'}: {first['msg']}{shown}{more}", param=param or None,
                       code="missing_field" if first["type"] == "missing" else "invalid_value")
