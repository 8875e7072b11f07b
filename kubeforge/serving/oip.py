"""The Open Inference Protocol v2 (KServe / Triton HTTP) for a kubeforge classifier: codec only, no I/O.

One FP32 input ``input`` of shape ``[rows, features]`` (raw features, training order), as JSON data (flat or nested)
or through the binary tensor extension (``Inference-Header-Content-Length``, raw little-endian bytes after the JSON
header); outputs ``probabilities`` (FP32 ``[rows, classes]``), ``class_index`` (INT64 ``[rows]``) and ``class_name``
(BYTES ``[rows]``), each as JSON or binary as the request asks (``binary_data`` per output, ``binary_data_output``
for all). Errors are ``{"error": "..."}`` with a 4xx status, as the protocol specifies.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import numpy as np

from kubeforge.serving.runtime import RequestError, ServedSpec

INPUT = "input"
OUTPUTS = ("probabilities", "class_index", "class_name")
MODEL_VERSION = "1"
FLOAT32_MAX = float(np.finfo(np.float32).max)
HEADER_LENGTH = b"inference-header-content-length"


def error_json(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def model_metadata(name: str, spec: ServedSpec, platform: str) -> dict:
    return {"name": name, "versions": [MODEL_VERSION], "platform": platform,
            "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, spec.input_dim]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(spec.class_names)]},
                        {"name": "class_index", "datatype": "INT64", "shape": [-1]},
                        {"name": "class_name", "datatype": "BYTES", "shape": [-1]}]}


@dataclass(frozen=True)
class InferRequest:
    rows: np.ndarray
    request_id: str | None
    outputs: list[tuple[str, bool]]  # (name, binary) in the order to answer


def _binary_flag(parameters: Any, key: str, default: bool) -> bool:
    if parameters is None:
        return default
    if not isinstance(parameters, dict):
        raise RequestError("'parameters' must be an object")
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise RequestError(f"parameter {key!r} must be true or false")
    return value


def parse_infer_request(body: bytes, header_length: int | None, spec: ServedSpec, max_instances: int) -> InferRequest:
    """Validate an infer request against the model's single FP32 input; RequestError names every problem."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise RequestError(f"Inference-Header-Content-Length {header_length} does not fit a body of {len(body)} bytes")
    head, binary = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    try:
        request = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestError('the body must be a JSON object {"inputs": [tensor, ...]}')
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("'id' must be a string")
    if len(request["inputs"]) != 1:
        raise RequestError(f"expected exactly one input tensor {INPUT!r}, got {len(request['inputs'])}")
    rows = _input_rows(request["inputs"][0], binary, spec, max_instances)
    binary_all = _binary_flag(request.get("parameters"), "binary_data_output", False)
    wanted = request.get("outputs")
    if wanted is None:
        return InferRequest(rows, request_id, [(name, binary_all) for name in OUTPUTS])
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
        raise RequestError("'outputs' must be a list of objects with a 'name'")
    unknown = [o["name"] for o in wanted if o["name"] not in OUTPUTS]
    if unknown:
        raise RequestError(f"unknown output(s) {', '.join(map(repr, unknown))}; the model has {', '.join(OUTPUTS)}")
    return InferRequest(rows, request_id,
                        [(o["name"], _binary_flag(o.get("parameters"), "binary_data", binary_all)) for o in wanted])


def _input_rows(tensor: Any, binary: bytes, spec: ServedSpec, max_instances: int) -> np.ndarray:
    if not isinstance(tensor, dict):
        raise RequestError("an input tensor must be an object with name, shape, datatype and data")
    if tensor.get("name") != INPUT:
        raise RequestError(f"unknown input {tensor.get('name')!r}; the model's input is {INPUT!r}")
    if tensor.get("datatype") != "FP32":
        raise RequestError(f"input {INPUT!r} must have datatype FP32, not {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    width = spec.input_dim
    if (not isinstance(shape, list) or len(shape) != 2 or not all(type(d) is int for d in shape)
            or shape[1] != width or shape[0] < 1):
        raise RequestError(f"input {INPUT!r} must have shape [rows, {width}] with rows >= 1, got {shape!r}")
    if shape[0] > max_instances:
        raise RequestError(f"too many rows: {shape[0]} > limit {max_instances}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    parameters = tensor.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise RequestError("'parameters' must be an object")
    size = (parameters or {}).get("binary_data_size")
    if size is not None:
        if type(size) is not int or size != shape[0] * width * 4 or size != len(binary):
            raise RequestError(f"binary_data_size must be rows x {width} x 4 = {shape[0] * width * 4} bytes and "
                               f"match the {len(binary)} bytes after the JSON header, got {size!r}")
        rows = np.frombuffer(binary, dtype="<f4").reshape(shape).astype(np.float32, copy=True)
    else:
        if binary:
            raise RequestError("bytes after the JSON header but no input declares binary_data_size")
        rows = _json_rows(tensor.get("data"), shape)
    if not np.isfinite(rows).all():
        index, position = (int(i) for i in np.argwhere(~np.isfinite(rows))[0])
        raise RequestError(f"row {index}, feature {spec.feature_names[position]!r}: the value is NaN, inf or outside "
                           "the float32 range")
    return rows


def _json_rows(data: Any, shape: list[int]) -> np.ndarray:
    if not isinstance(data, list):
        raise RequestError(f"input {INPUT!r} needs 'data': a flat or nested list of {shape[0] * shape[1]} numbers")
    try:
        values = np.asarray(data)
    except (ValueError, OverflowError):
        raise RequestError(f"input {INPUT!r}: 'data' is ragged or holds a number too large for a float") from None
    if values.dtype.kind not in "iuf" or values.size != shape[0] * shape[1]:
        raise RequestError(f"input {INPUT!r}: 'data' must hold {shape[0] * shape[1]} numbers (shape {shape}), "
                           f"got {values.size} value(s) of kind {values.dtype.name}")
    if values.dtype.kind == "f" and np.abs(values).max() > FLOAT32_MAX:
        raise RequestError(f"input {INPUT!r}: a value is outside the float32 range (|x| > 3.4e38)")
    with np.errstate(over="ignore"):
        return values.reshape(shape).astype(np.float32)


def _bytes_tensor(strings: list[str]) -> bytes:
    encoded = [s.encode() for s in strings]
    return b"".join(struct.pack("<I", len(e)) + e for e in encoded)


def encode_infer_response(request: InferRequest, probabilities: np.ndarray, class_names: list[str],
                          model_name: str) -> tuple[bytes, bytes | None]:
    """The response body and, when any output is binary, the JSON header's length (for the response header)."""
    indices = probabilities.argmax(axis=1)
    rows = len(probabilities)
    outputs, blobs = [], []
    for name, binary in request.outputs:
        if name == "probabilities":
            tensor = {"name": name, "datatype": "FP32", "shape": list(probabilities.shape)}
            raw = probabilities.astype("<f4").tobytes() if binary else None
            data = None if binary else [round(p, 7) for p in probabilities.ravel().tolist()]
        elif name == "class_index":
            tensor = {"name": name, "datatype": "INT64", "shape": [rows]}
            raw = indices.astype("<i8").tobytes() if binary else None
            data = None if binary else indices.tolist()
        else:
            labels = [class_names[i] for i in indices.tolist()]
            tensor = {"name": name, "datatype": "BYTES", "shape": [rows]}
            raw = _bytes_tensor(labels) if binary else None
            data = None if binary else labels
        if raw is not None:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = data
        outputs.append(tensor)
    response: dict[str, Any] = {"model_name": model_name, "model_version": MODEL_VERSION, "outputs": outputs}
    if request.request_id is not None:
        response["id"] = request.request_id
    head = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), str(len(head)).encode()
