"""From a validated request to what the engine runs: prompt token ids, sampling parameters, n.

Every bound is checked here, before anything is queued, and each refusal names the field and, where it is a
server setting, the variable that sets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubeforge.llm.errors import APIError, bad_request
from kubeforge.llm.protocol import ChatCompletionRequest, CompletionRequest
from kubeforge.llm.sampling import SamplingParams
from kubeforge.llm.settings import LLMServeConfig


@dataclass(frozen=True)
class PreparedRequest:
    model: str
    prompts: list[list[int]]
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    return_token_ids: bool


def _unsupported(field: str, detail: str) -> APIError:
    return bad_request(f"{field}: {detail} is not supported by this server", param=field, code="unsupported")


def _check_common(request: CompletionRequest | ChatCompletionRequest, config: LLMServeConfig) -> tuple[str, ...]:
    if request.presence_penalty != 0.0:
        raise _unsupported("presence_penalty", "a non-zero presence_penalty")
    if request.frequency_penalty != 0.0:
        raise _unsupported("frequency_penalty", "a non-zero frequency_penalty")
    if request.logit_bias:
        raise _unsupported("logit_bias", "logit_bias")
    if request.stream_options is not None and not request.stream:
        raise bad_request("stream_options is only allowed with stream: true", param="stream_options")
    if request.n > config.max_n:
        raise bad_request(f"n: {request.n} choices asked, the server's limit is {config.max_n} "
                          "(KUBEFORGE_LLM_MAX_N)", param="n", code="n_too_large")
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    if len(stop) > config.max_stop:
        raise bad_request(f"stop: {len(stop)} stop strings, at most {config.max_stop} are allowed "
                          "(KUBEFORGE_LLM_MAX_STOP)", param="stop")
    if any(not s for s in stop):
        raise bad_request("stop: a stop string may not be empty", param="stop")
    return stop


def _max_tokens(asked: int | None, prompt_tokens: int, context: int, config: LLMServeConfig, field: str) -> int:
    if asked is not None:
        if asked < 1:
            raise bad_request(f"{field}: {asked} is not allowed; ask for at least 1 token", param=field)
        if asked > config.max_tokens_limit:
            raise bad_request(f"{field}: {asked} exceeds the server's limit of {config.max_tokens_limit} "
                              "(KUBEFORGE_LLM_MAX_TOKENS_LIMIT)", param=field)
        if prompt_tokens + asked > context:
            raise bad_request(f"This model's maximum context length is {context} tokens. However, you requested "
                              f"{prompt_tokens + asked} tokens ({prompt_tokens} in the prompt, {asked} for the "
                              "completion). Please reduce the prompt or the completion length.", param=field,
                              code="context_length_exceeded")
        return asked
    return min(config.default_max_tokens, context - prompt_tokens)


def _check_prompt_length(tokens: int, context: int, field: str) -> None:
    if tokens == 0:
        raise bad_request(f"{field}: the prompt is empty (no tokens); send some text", param=field)
    if tokens >= context:
        raise bad_request(f"This model's maximum context length is {context} tokens, and the prompt has {tokens} "
                          "tokens, which leaves no room for a completion. Please shorten the prompt.",
                          param=field, code="context_length_exceeded")


def _params(request: CompletionRequest | ChatCompletionRequest, max_tokens: int, stop: tuple[str, ...]
            ) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=request.temperature, top_p=request.top_p, stop=stop,
                          seed=request.seed, ignore_eos=request.ignore_eos)


def _prepared(request: Any, prompts: list[list[int]], params: SamplingParams) -> PreparedRequest:
    return PreparedRequest(model=request.model, prompts=prompts, params=params, n=request.n, stream=request.stream,
                           include_usage=bool(request.stream_options and request.stream_options.include_usage),
                           return_token_ids=request.return_token_ids)


def prepare_completion(request: CompletionRequest, tokenizer: Any, context: int, vocab: int,
                       config: LLMServeConfig) -> PreparedRequest:
    stop = _check_common(request, config)
    if request.echo:
        raise _unsupported("echo", "echo")
    if request.suffix is not None:
        raise _unsupported("suffix", "suffix")
    if request.logprobs is not None:
        raise _unsupported("logprobs", "logprobs")
    if request.best_of is not None and request.best_of != request.n:
        raise _unsupported("best_of", "best_of other than n")
    prompt = request.prompt
    if isinstance(prompt, str):
        prompts = [tokenizer(prompt, add_special_tokens=True)["input_ids"]]
    elif not prompt:
        raise bad_request("prompt: the list is empty; send a string, strings or token ids", param="prompt")
    elif isinstance(prompt[0], str):
        prompts = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in prompt]
    elif isinstance(prompt[0], int):
        prompts = [list(prompt)]
    else:
        prompts = [list(ids) for ids in prompt]
    if len(prompts) > config.max_prompts:
        raise bad_request(f"prompt: {len(prompts)} prompts in one request, at most {config.max_prompts} are allowed "
                          "(KUBEFORGE_LLM_MAX_PROMPTS)", param="prompt")
    for ids in prompts:
        bad = [token for token in ids if not 0 <= token < vocab]
        if bad:
            raise bad_request(f"prompt: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="prompt")
        _check_prompt_length(len(ids), context, "prompt")
    longest = max(len(ids) for ids in prompts)
    max_tokens = _max_tokens(request.max_tokens, longest, context, config, "max_tokens")
    return _prepared(request, prompts, _params(request, max_tokens, stop))


def _message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def prepare_chat(request: ChatCompletionRequest, tokenizer: Any, context: int, config: LLMServeConfig
                 ) -> PreparedRequest:
    stop = _check_common(request, config)
    if request.logprobs or request.top_logprobs is not None:
        raise _unsupported("logprobs", "logprobs")
    if request.tools:
        raise _unsupported("tools", "tool calling")
    if request.tool_choice not in (None, "none"):
        raise _unsupported("tool_choice", "tool_choice")
    if request.response_format not in (None, {"type": "text"}):
        raise _unsupported("response_format", "a response_format other than text")
    if not getattr(tokenizer, "chat_template", None):
        raise bad_request(f"the model {request.model!r} has no chat template; use /v1/completions",
                          param="messages", code="no_chat_template")
    conversation = [{"role": "system" if m.role == "developer" else m.role, "content": _message_text(m.content)}
                    for m in request.messages]
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    except TemplateError as exc:
        raise bad_request(f"messages: the model's chat template refused the conversation: {exc}",
                          param="messages") from None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    _check_prompt_length(len(ids), context, "messages")
    field = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    asked = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    max_tokens = _max_tokens(asked, len(ids), context, config, field)
    return _prepared(request, [ids], _params(request, max_tokens, stop))
