"""The OpenAPI 3 document of the served API (``/schema.json`` and ``/docs.json``), exact for the loaded model.

Request and response schemas carry the model's real shapes (feature count and names, classes, row limit, the float32
range), so client generators and API fuzzers (schemathesis) get a contract the server keeps: a request the schema
allows is served, one it forbids gets a 4xx in the documented error shape. Before the model is loaded the shapes are
left open. The Open Inference Protocol's shape/data consistency is beyond what a schema can say and is checked by the
server (400).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kubeforge.serving import oip

FLOAT32_MAX = float(np.finfo(np.float32).max)
JSON = "application/json"


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
NUMBER = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
PREDICT_ERROR = {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}
V2_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
TEXT = {"description": "plain text", "content": {"text/plain": {"schema": {"type": "string"}}}}


def _predict_schemas(runtime: Any, max_payload: int) -> tuple[dict, dict]:
    if runtime is None:
        row_list: dict = {"type": "array", "items": NUMBER}
        row_object: dict = {"type": "object", "additionalProperties": NUMBER}
        class_index, class_name, probabilities = {"type": "integer"}, {"type": "string"}, {
            "type": "array", "items": {"type": "number"}}
        max_rows = None
    else:
        spec, width, classes = runtime.spec, runtime.spec.input_dim, len(runtime.spec.class_names)
        row_list = {"type": "array", "minItems": width, "maxItems": width, "items": NUMBER,
                    "description": "raw features in training order"}
        row_object = {"type": "object", "required": list(spec.feature_names), "additionalProperties": False,
                      "properties": {name: NUMBER for name in spec.feature_names},
                      "description": "every named feature, none unknown"}
        class_index = {"type": "integer", "minimum": 0, "maximum": classes - 1}
        class_name = {"type": "string", "enum": list(spec.class_names)}
        probabilities = {"type": "array", "minItems": classes, "maxItems": classes,
                         "items": {"type": "number", "minimum": 0, "maximum": 1}}
        max_rows = runtime.config.max_instances
    instances: dict = {"type": "array", "minItems": 1, "items": {"oneOf": [row_list, row_object]},
                       "description": f"rows of raw features; the body is at most {max_payload} bytes"}
    if max_rows is not None:
        instances["maxItems"] = max_rows
    request = {"type": "object", "required": ["instances"], "properties": {"instances": instances}}
    response = {"type": "object", "required": ["predictions", "model"], "properties": {
        "predictions": {"type": "array", "items": {
            "type": "object", "required": ["class_index", "class_name", "probabilities"],
            "properties": {"class_index": class_index, "class_name": class_name, "probabilities": probabilities}}},
        "model": {"type": "object", "required": ["classes", "features", "architecture", "precision"], "properties": {
            "classes": {"type": "array", "items": {"type": "string"}}, "features": {"type": "integer"},
            "architecture": {"type": "string"}, "precision": {"type": "string"}}}}}
    return request, response


def _v2_schemas(runtime: Any) -> tuple[dict, dict]:
    width = runtime.spec.input_dim if runtime is not None else None
    shape = {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer", "minimum": 1},
             "description": f"[rows, {width or 'features'}]; rows x features numbers in data"}
    tensor_in = {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
        "name": {"type": "string", "enum": [oip.INPUT]}, "shape": shape,
        "datatype": {"type": "string", "enum": ["FP32"]},
        "data": {"type": "array", "items": {"oneOf": [NUMBER, {"type": "array", "items": NUMBER}]}},
        "parameters": {"type": "object"}}}
    requested = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "enum": list(oip.OUTPUTS)},
        "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}
    request = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": tensor_in},
        "outputs": {"type": "array", "items": requested},
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}}}}
    tensor_out = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string", "enum": list(oip.OUTPUTS)}, "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string", "enum": ["FP32", "INT64", "BYTES"]},
        "data": {"type": "array", "items": {"oneOf": [{"type": "number"}, {"type": "string"}]}},
        "parameters": {"type": "object"}}}
    response = {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "outputs": {"type": "array", "items": tensor_out}}}
    return request, response


def openapi_document(runtime: Any, model_name: str, max_payload: int) -> dict:
    predict_request, predict_response = _predict_schemas(runtime, max_payload)
    infer_request, infer_response = _v2_schemas(runtime)
    name_param = [{"name": "model_name", "in": "path", "required": True,
                   "schema": {"type": "string", "enum": [model_name]}}]
    not_ready = _json(V2_ERROR, "the model is still loading")
    v2_errors = {"400": _json(V2_ERROR, "a malformed request (the message names the problem)"),
                 "404": _json(V2_ERROR, "no such model or version"),
                 "413": _json(V2_ERROR, "too many rows or too large a body"),
                 "503": _json(V2_ERROR, "not ready, or shed by admission control", RETRY_AFTER)}
    metadata = {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"], "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"}, "inputs": {"type": "array", "items": {"type": "object"}},
        "outputs": {"type": "array", "items": {"type": "object"}}}}

    def get(summary: str, ok: dict, **errors: dict) -> dict:
        return {"get": {"summary": summary, "responses": {"200": ok, **errors}}}

    return {
        "openapi": "3.0.3",
        "info": {"title": "kubeforge-classifier", "version": "1",
                 "description": "Predictions of a kubeforge classifier: /predict and the Open Inference Protocol v2."},
        "paths": {
            "/predict": {"post": {
                "summary": "predict classes for rows of raw features",
                "requestBody": {"required": True, "content": {JSON: {"schema": predict_request}}},
                "responses": {
                    "200": _json(predict_response, "one prediction per row"),
                    "400": _json(PREDICT_ERROR, "malformed JSON or a bad row (the message names it)"),
                    "413": _json(PREDICT_ERROR, "too many rows or too large a body"),
                    "503": _json(PREDICT_ERROR, "not ready, or shed by admission control (before any work)",
                                 RETRY_AFTER)}}},
            "/v2": get("server metadata", _json({"type": "object", "required": ["name", "version", "extensions"]},
                                                "name, version and protocol extensions")),
            "/v2/health/live": get("liveness", _json({"type": "object", "properties": {"live": {"type": "boolean"}}},
                                                     "the server is live"),
                                   **{"503": _json(V2_ERROR, "the model failed to load")}),
            "/v2/health/ready": get("readiness", _json({"type": "object", "properties": {
                "ready": {"type": "boolean"}}}, "ready to serve"), **{"503": not_ready}),
            "/v2/models/{model_name}": {"parameters": name_param, **get(
                "model metadata", _json(metadata, "inputs and outputs"),
                **{"404": v2_errors["404"], "503": not_ready})},
            "/v2/models/{model_name}/ready": {"parameters": name_param, **get(
                "model readiness", _json({"type": "object", "properties": {"name": {"type": "string"},
                                                                         "ready": {"type": "boolean"}}}, "ready"),
                **{"404": v2_errors["404"], "503": not_ready})},
            "/v2/models/{model_name}/infer": {"parameters": name_param, "post": {
                "summary": "Open Inference Protocol v2 inference (FP32 input, probabilities and class out)",
                "requestBody": {"required": True, "content": {JSON: {"schema": infer_request}}},
                "responses": {"200": _json(infer_response, "the requested outputs"), **v2_errors}}},
            "/livez": get("liveness probe", TEXT, **{"503": TEXT}),
            "/readyz": get("readiness probe: 200 once the model is loaded and warmed up", TEXT, **{"503": TEXT}),
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
    }
