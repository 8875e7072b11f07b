"""The OpenAI-compatible routes, as a FastAPI app mounted on the BentoML service (so BentoML's metrics and timeout
middlewares wrap them and their schemas reach /docs.json). FastAPI only routes: each POST handler returns an
``Exchange``, a Response whose ASGI call reads the body itself (size limit), streams events as the engine produces
them and cancels the generation when the client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from kubeforge.llm import asgi
from kubeforge.llm.engine import QUEUE_FULL, QUEUE_TIMEOUT
from kubeforge.llm.errors import OVERLOADED, SERVER_ERROR, APIError, from_validation_error
from kubeforge.llm.protocol import (AdapterResponse, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
                                    Completion, CompletionRequest, ErrorResponse, LoadAdapterRequest, ModelList,
                                    UnloadAdapterRequest, inline_schema)
from kubeforge.llm.prepare import PreparedRequest, prepare_chat, prepare_completion
from kubeforge.llm.responses import ResponseBuilder, dumps
from kubeforge.llm.runtime import LLMRuntime
from kubeforge.llm.settings import LLMServeConfig
from kubeforge.llm.tenancy.layer import TenantLayer, current_tenant_request
from kubeforge.serving.admission import SHED_QUEUE_FULL, Admission, AdmissionPolicy, Shed
from kubeforge.serving.meters import Meters
from kubeforge.serving.rawasgi import drain_unread, header

logger = logging.getLogger("kubeforge.llm")
COMPLETIONS, CHAT, MODELS = "/v1/completions", "/v1/chat/completions", "/v1/models"
LOAD_ADAPTER, UNLOAD_ADAPTER = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"


@dataclass
class LLMState:
    """What one worker serves with; filled by the loader thread, read by every request."""

    config: LLMServeConfig
    admission: Admission
    meters: Meters
    runtime: LLMRuntime | None = None
    load_error: str | None = None
    tenancy: TenantLayer | None = None  # keys, budgets, audit (kubeforge.llm.tenancy); None: no authentication

    def shed(self, error: APIError) -> None:
        """Count an engine-side 503 as admission's (kubeforge_admission_shed_total, what the HPA reads)."""
        if error.code == QUEUE_FULL:
            self.admission.shed(Shed(SHED_QUEUE_FULL, error.message, self.config.retry_after_s))
        elif error.code == QUEUE_TIMEOUT:
            self.admission.timed_out(counted_as_shed=True)


def admission_policy(config: LLMServeConfig) -> AdmissionPolicy:
    """HTTP admission for long requests: a fixed in-flight limit per worker and no HTTP queue (requests wait in the
    engine's queue, bounded by max_waiting and max_queue_wait_s, where queue length and token budget decide)."""
    return AdmissionPolicy(max_concurrency=math.ceil(config.max_concurrency / config.workers), max_queue=0,
                           deadline_s=config.max_queue_wait_s, mode="fixed", retry_after_s=config.retry_after_s)


Handler = Callable[[LLMState, bytes, Any, Any], Awaitable[None]]


class Exchange(Response):
    """One POST as a raw ASGI exchange: admission, body, then ``handler`` (which sends the response). FastAPI calls
    it as a Response; the service's front door calls ``run`` directly, in front of BentoML's middleware stack."""

    def __init__(self, state: LLMState, handler: Handler):
        self.state = state
        self.handler = handler
        self.background = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.run(scope, receive, send)

    async def run(self, scope: dict, receive: Any, send: Any) -> int:
        """Answer the request; returns the status sent (for the front door's request metrics)."""
        if self.state.tenancy is not None and scope.get("method") == "POST":  # the key comes before all else
            tenancy, limit = self.state.tenancy, self.state.config.max_payload_bytes
            return await tenancy.serve(scope, receive, send, self._run, limit)
        return await self._run(scope, receive, send)

    async def _run(self, scope: dict, receive: Any, send: Any) -> int:
        state = self.state
        state.meters.start()
        if scope.get("method") != "POST":
            await drain_unread(scope, receive, state.config.max_payload_bytes)
            await asgi.send_error(send, APIError(405, f"{scope.get('method')} is not allowed here; use POST",
                                                 code="method_not_allowed"))
            return 405
        if state.runtime is None:  # the one HTTP admission point: before the body is read
            ticket = state.admission.refuse_not_ready(state.load_error or "the model is still loading; retry when "
                                                      "/readyz is 200")
        else:
            ticket = state.admission.admit()
        if isinstance(ticket, Shed):
            # small: the client gets the 503, not a reset
            await drain_unread(scope, receive, state.config.max_payload_bytes)
            await asgi.send_error(send, APIError(503, ticket.message, type=OVERLOADED, code=ticket.reason,
                                                 retry_after_s=ticket.retry_after_s))
            return 503
        try:
            try:
                body = await asgi.read_body(scope, receive, state.config.max_payload_bytes)
            except APIError as exc:
                await asgi.send_error(send, exc, close=True)
                return exc.status
            if body is None:  # the client left while sending
                return 499
            state.admission.received(ticket)
            try:
                await self.handler(state, body, receive, send)
            except APIError as exc:
                if exc.status == 503:
                    state.shed(exc)
                await asgi.send_error(send, exc)
                return exc.status
            return 200
        finally:
            state.admission.done(ticket)


def parse(model: type[BaseModel], body: bytes) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def _vocabulary(runtime: LLMRuntime) -> int:
    return min(len(runtime.tokenizer), runtime.vocab_size or 10**9)


async def generate(state: LLMState, prepared: PreparedRequest, chat: bool, receive: Any, send: Any) -> None:
    """Queue the request and answer it; nothing is sent before the first token (or a refusal) is known, so a
    request dropped from the queue still gets a proper 503 and a stream's status is final when it starts."""
    runtime = state.runtime
    tenant = current_tenant_request()
    if tenant is not None:  # the tenant's token budget: prompt + max_tokens of every choice, reserved now
        tenant.reserve_for(prepared)
    generation = runtime.submit(prepared.model, prepared.prompts, prepared.params, prepared.n,
                                asyncio.get_running_loop(), share=None if tenant is None else tenant.share)
    builder = ResponseBuilder(prepared, chat=chat)
    watcher = asgi.watch_disconnect(receive, generation.cancel)
    started = False
    try:
        async for batch in generation.events():
            for event in batch:
                if event.error is not None:
                    error = APIError(event.status, event.error, type=SERVER_ERROR if event.status == 500
                                     else OVERLOADED, code=event.code, retry_after_s=state.config.retry_after_s
                                     if event.status == 503 else None)
                    if not started:
                        raise error
                    await asgi.send_event(send, error.body())
                    continue
                builder.add(event)
                if not prepared.stream:
                    continue
                if not started:
                    await asgi.start_event_stream(send)
                    started = True
                chunk = builder.chunk(event)
                if chunk is not None:
                    await asgi.send_event(send, chunk)
        if not prepared.stream:
            await asgi.send_bytes(send, 200, dumps(builder.response()))
            return
        if prepared.include_usage:
            await asgi.send_event(send, dumps(builder.usage_chunk()))
        await asgi.end_event_stream(send)
    finally:
        watcher.cancel()
        generation.cancel()  # a no-op once finished; frees the rows after a timeout or a failed send
        if tenant is not None:
            tenant.used_by(builder, generation, runtime.tokenizer)


async def completions(state: LLMState, body: bytes, receive: Any, send: Any) -> None:
    request = parse(CompletionRequest, body)
    runtime = state.runtime
    _check_model(runtime, request.model)
    prepared = prepare_completion(request, runtime.tokenizer, runtime.context_length, _vocabulary(runtime),
                                  state.config)
    await generate(state, prepared, False, receive, send)


async def chat_completions(state: LLMState, body: bytes, receive: Any, send: Any) -> None:
    request = parse(ChatCompletionRequest, body)
    runtime = state.runtime
    _check_model(runtime, request.model)
    prepared = prepare_chat(request, runtime.tokenizer, runtime.context_length, state.config)
    await generate(state, prepared, True, receive, send)


def _check_model(runtime: LLMRuntime, model: str) -> None:
    """A model the tenant may not call is refused exactly as one that does not exist (404)."""
    tenant = current_tenant_request()
    if tenant is not None:
        tenant.authorise(model, [runtime.config.base_name], [name for name, _ in runtime.served()])
    runtime.check_model(model)


def _admin_allowed(state: LLMState) -> None:
    if not state.config.admin_api:
        raise APIError(403, "the adapter admin API is off; set KUBEFORGE_LLM_ADMIN_API=true to enable it",
                       type="permission_error", code="admin_api_disabled")
    tenant = current_tenant_request()
    if tenant is not None:
        tenant.require_admin()


async def load_adapter(state: LLMState, body: bytes, receive: Any, send: Any) -> None:
    _admin_allowed(state)
    request = parse(LoadAdapterRequest, body)
    await asyncio.to_thread(state.runtime.load_adapter, request.lora_name, request.lora_path)
    await asgi.send_bytes(send, 200, dumps({"id": request.lora_name, "object": "model", "status": "loaded"}))


async def unload_adapter(state: LLMState, body: bytes, receive: Any, send: Any) -> None:
    _admin_allowed(state)
    request = parse(UnloadAdapterRequest, body)
    state.runtime.unload_adapter(request.lora_name)
    await asgi.send_bytes(send, 200, dumps({"id": request.lora_name, "object": "model", "status": "unloaded"}))


def model_list(runtime: LLMRuntime) -> dict[str, Any]:
    base = runtime.config.base_name
    data = []
    for name, info in runtime.served():
        data.append({"id": name, "object": "model", "created": runtime.loaded_at(name), "owned_by": "kubeforge",
                     "root": runtime.base_source if info is None else info.source,
                     "parent": None if info is None else base, "max_model_len": runtime.context_length})
    return {"object": "list", "data": data}


ERRORS = {400: "a bad request (the message names the field)", 401: "a missing, malformed or wrong API key",
          403: "the admin API is off (or the tenant is not an admin)",
          429: "over the tenant's token or concurrency budget (Retry-After says when to retry)",
          405: "a method other than POST",
          404: "unknown model", 409: "the adapter name is taken", 413: "the body is over the size limit",
          503: "not ready, or overloaded (Retry-After says when to retry)"}


def _responses(json_model: type[BaseModel], stream_model: type[BaseModel] | None) -> dict:
    error = {"application/json": {"schema": inline_schema(ErrorResponse)}}
    ok: dict[str, Any] = {"application/json": {"schema": inline_schema(json_model)}}
    if stream_model is not None:
        ok["text/event-stream"] = {"schema": inline_schema(stream_model),
                                   "description": "with stream: true, one `data: <chunk>` event per step, "
                                                  "ending with `data: [DONE]`"}
    return {200: {"description": "the answer", "content": ok},
            **{code: {"description": text, "content": error} for code, text in ERRORS.items()}}


def _body(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(model)}}}}


POST_ROUTES: list[tuple[str, Handler, str, type[BaseModel], type[BaseModel], type[BaseModel] | None]] = [
    (COMPLETIONS, completions, "text completion (OpenAI)", CompletionRequest, Completion, Completion),
    (CHAT, chat_completions, "chat completion with the model's chat template (OpenAI)", ChatCompletionRequest,
     ChatCompletion, ChatCompletionChunk),
    (LOAD_ADAPTER, load_adapter, "load a LoRA adapter without a restart (vLLM's admin route)", LoadAdapterRequest,
     AdapterResponse, None),
    (UNLOAD_ADAPTER, unload_adapter, "unload an adapter; running requests finish first", UnloadAdapterRequest,
     AdapterResponse, None)]


def front_door_routes(state: LLMState) -> dict[str, Callable[[dict, Any, Any], Awaitable[int]]]:
    """The POST routes for kubeforge.serving.frontdoor: answered before BentoML's middleware stack, whose four
    send wrappers were half of the event loop's cost per streamed token (py-spy)."""
    return {path: Exchange(state, handler).run for path, handler, *_ in POST_ROUTES}


class LLMAPI(FastAPI):
    """The routes as a FastAPI app: BentoML mounts it (its schemas reach /docs.json) and serves GET /v1/models;
    the POST routes reach it only where no front door answers them first."""

    def __init__(self, state: LLMState):
        super().__init__(title="kubeforge-llm", openapi_url=None, docs_url=None, redoc_url=None)
        self.state = state
        for path, handler, summary, request_model, response_model, stream_model in POST_ROUTES:
            self._post(path, handler, summary, request_model, response_model, stream_model)

        @self.get(MODELS, summary="the base model and every adapter (OpenAI)",
                  responses=_responses(ModelList, None))
        async def models(request: Request) -> JSONResponse:
            if state.runtime is None:
                error = APIError(503, state.load_error or "the model is still loading", type="server_error")
                return JSONResponse(error.payload(), status_code=503)
            listing = model_list(state.runtime)
            if state.tenancy is not None:  # only what the key's tenant may call
                try:
                    visible = set(state.tenancy.visible_models(header(request.scope, b"authorization"),
                                                               [m["id"] for m in listing["data"]],
                                                               [state.runtime.config.base_name]))
                except APIError as exc:
                    return JSONResponse(exc.payload(), status_code=exc.status, headers={
                        k.decode(): v.decode() for k, v in exc.headers()})
                listing["data"] = [m for m in listing["data"] if m["id"] in visible]
            return JSONResponse(listing)

    def _post(self, path: str, handler: Handler, summary: str, request_model: type[BaseModel],
              response_model: type[BaseModel], stream_model: type[BaseModel] | None) -> None:
        state = self.state

        async def endpoint(request: Request) -> Exchange:
            return Exchange(state, handler)

        self.add_api_route(path, endpoint, methods=["POST"], summary=summary, openapi_extra=_body(request_model),
                           responses=_responses(response_model, stream_model), response_class=Response)
