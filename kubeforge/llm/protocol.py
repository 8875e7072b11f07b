"""The OpenAI wire format: request models (parsed strictly: a string where a number belongs is a 400, not a guess)
and response models (documentation for /docs.json; responses are assembled as plain dicts on the hot path, and a
test checks them against these schemas).

Fields clients commonly send that this server does not implement are declared so that a non-default value is
refused with a message naming the field instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = Field(False, description="send a last chunk with the usage of the whole request")


class _Sampling(_Request):
    model: str = Field(min_length=1, description="the base model or an adapter, as listed by GET /v1/models")
    max_tokens: int | None = Field(None, description="tokens to generate at most (1 .. the server's bound)")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling: keep the most likely tokens whose "
                         "probabilities add up to top_p")
    n: int = Field(1, ge=1, description="choices per prompt (at most the server's bound)")
    stop: str | list[str] | None = Field(None, description="strings that end a choice (not included in its text)")
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1],
                             description="makes sampling repeatable: the same seed and request give the same text")
    stream: bool = Field(False, description="server-sent events, one chunk per step, ending with data: [DONE]")
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(False, description="(vLLM extension) keep generating past the end-of-sequence token")
    return_token_ids: bool = Field(False, description="(vLLM extension) add each choice's generated token ids")
    presence_penalty: float = Field(0.0, description="not supported: only 0 is accepted")
    frequency_penalty: float = Field(0.0, description="not supported: only 0 is accepted")
    logit_bias: dict[str, float] | None = Field(None, description="not supported: only null or {} is accepted")
    user: str | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="a string, a list of strings, a list of token ids or a list of such lists")
    echo: bool = Field(False, description="not supported: only false is accepted")
    suffix: str | None = Field(None, description="not supported: only null is accepted")
    logprobs: int | None = Field(None, description="not supported: only null is accepted")
    best_of: int | None = Field(None, description="not supported beyond n: only null or n is accepted")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = Field(description="text, or a list of text parts")
    name: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, description="the conversation, rendered with the model's "
                                        "chat template")
    max_completion_tokens: int | None = Field(None, description="the newer name of max_tokens (wins when both "
                                              "are set)")
    logprobs: bool = Field(False, description="not supported: only false is accepted")
    top_logprobs: int | None = Field(None, description="not supported: only null is accepted")
    tools: list[Any] | None = Field(None, description="not supported: only null or [] is accepted")
    tool_choice: Any = Field(None, description="not supported: only null or 'none' is accepted")
    response_format: dict[str, Any] | None = Field(None, description="only {'type': 'text'} is accepted")


class LoadAdapterRequest(_Request):
    lora_name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    lora_path: str = Field(min_length=1, description="a directory or URI (hf://, s3://, pvc://, ...)")


class UnloadAdapterRequest(_Request):
    lora_name: str = Field(min_length=1)


# ---- responses (documentation and tests; the server builds the same shapes as dicts) -------------------------

FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = Field(description="null in stream chunks until the choice ends")
    token_ids: list[int] | None = Field(None, description="only with return_token_ids")


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = Field(None, description="always in a response; in a stream only in the last chunk, "
                                "with stream_options.include_usage")
    system_fingerprint: str | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason
    token_ids: list[int] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReason | None
    token_ids: list[int] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str = Field(description="the base model's source, or the adapter's")
    parent: str | None = Field(description="for an adapter, the base model's name")
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class AdapterResponse(BaseModel):
    id: str
    object: Literal["model"]
    status: Literal["loaded", "unloaded"]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with every $ref replaced by its definition: self-contained, so it can sit inside
    an OpenAPI operation without components (BentoML merges only route-derived components)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)
