"""Any OpenAI-compatible chat model (vLLM, llama.cpp's server, a hosted provider) as a
generation backend: ``POST {base_url}/v1/chat/completions``.

It lives behind Ray Serve like the local model, so the dispatcher sees one contract for
both: the upstream's answers become :class:`Generation` (text, tool calls, the upstream's
own token usage), and its failures become the app's failure kinds, which carry the retry
decision: 429/503 -> :class:`Overloaded` with the upstream's Retry-After, timeouts ->
:class:`GenerationTimeout`, 400/413/422 -> :class:`InputRejected` (never retried),
anything else (5xx, 401/403/404 from a misconfigured pool, connection errors, an answer
that is not a chat completion) -> :class:`BackendFailure`.

The API key is read from the environment variable the pool names, in the replica, and only
ever travels in the Authorization header: no message, log line or repr holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
from pydantic import ValidationError

from clawstream.config import UpstreamSpec
from clawstream.inference.backends.base import DEFAULT_SAMPLING, Generation, Piece, Sampling
from clawstream.inference.backends.simulated import approx_prompt_tokens, approx_tokens
from clawstream.inference.client import parse_retry_after
from clawstream.inference.errors import (
    BackendFailure,
    GenerationTimeout,
    InputRejected,
    Overloaded,
)
from clawstream.inference.protocol import (
    ChatMessage,
    FinishReason,
    ToolCall,
    ToolChoice,
    ToolFunction,
)

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
_MAX_DETAIL_CHARS = 500
_VALIDATION_STATUSES = frozenset({400, 413, 422})
_OVERLOAD_STATUSES = frozenset({429, 503})
_TIMEOUT_STATUSES = frozenset({408, 504})


class UpstreamKeyMissing(RuntimeError):
    """The pool names an API-key variable that is not set where the replica runs."""


def openai_message(message: ChatMessage) -> dict[str, Any]:
    """One message in OpenAI's wire shape."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
        # An empty content stays "" (not null, not left out): OpenAI and vLLM take any of
        # the three, llama.cpp's server only "" (it refuses null, and its
        # function-calling template reads the field).
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def chat_request(
    model: str,
    messages: Sequence[ChatMessage],
    max_tokens: int,
    temperature: float,
    tools: Sequence[ToolFunction],
    tool_choice: ToolChoice,
    sampling: Sampling = DEFAULT_SAMPLING,
) -> dict[str, Any]:
    """The request body; ``tools`` and ``tool_choice`` only when there are tools (some
    servers refuse a tool_choice without tools), and the client's sampling where set."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [openai_message(m) for m in messages],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": False,
    }
    if tools:
        body["tools"] = [{"type": "function", "function": t.model_dump()} for t in tools]
        body["tool_choice"] = tool_choice
    if sampling.top_p is not None:
        body["top_p"] = sampling.top_p
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    return body


def _tool_calls(message: dict[str, Any]) -> tuple[ToolCall, ...]:
    raw = message.get("tool_calls") or []
    if not raw and isinstance(message.get("function_call"), dict):
        raw = [{"function": message["function_call"]}]  # the legacy single-call field
    calls = []
    for index, item in enumerate(raw):
        function = item.get("function") or {}
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):  # a few servers send the object itself
            arguments = json.dumps(arguments)
        calls.append(ToolCall(
            id=item.get("id") or f"call_{index}",
            name=function.get("name", ""),
            arguments=arguments,
        ))
    return tuple(calls)


def _finish_reason(reported: object, calls: tuple[ToolCall, ...]) -> FinishReason:
    if calls:
        return "tool_calls"
    return "length" if reported == "length" else "stop"


def parse_completion(
    data: Any, messages: Sequence[ChatMessage]
) -> Generation:
    """A chat completion as a :class:`Generation`. The upstream's ``usage`` is the truth;
    a server that reports none gets the same 4-characters-per-token estimate as the
    simulated backend, so the limiter still sees a cost."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        calls = _tool_calls(message)
        text = message.get("content") or ""
        if not isinstance(text, str):
            raise TypeError(f"content is {type(text).__name__}, not text")
    except (KeyError, IndexError, TypeError, AttributeError, ValidationError) as exc:
        raise BackendFailure(
            f"upstream answered something that is not a chat completion "
            f"({type(exc).__name__}: {str(exc)[:_MAX_DETAIL_CHARS]})"
        ) from exc
    usage = data.get("usage") or {}
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    if not isinstance(prompt_tokens, int):
        prompt_tokens = approx_prompt_tokens(messages)
    if not isinstance(completion_tokens, int):
        completion_tokens = approx_tokens(text + "".join(c.name + c.arguments for c in calls))
    return Generation(
        text=text,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=_finish_reason(choice.get("finish_reason"), calls),
        tool_calls=calls,
    )


def _error_detail(response: httpx.Response) -> str:
    """OpenAI's ``{"error": {"message": ...}}`` when present, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:_MAX_DETAIL_CHARS]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:_MAX_DETAIL_CHARS]
        if isinstance(error, str):
            return error[:_MAX_DETAIL_CHARS]
        if "detail" in body:
            return str(body["detail"])[:_MAX_DETAIL_CHARS]
    return json.dumps(body)[:_MAX_DETAIL_CHARS]


def error_for_status(model_id: str, response: httpx.Response) -> Exception:
    """The app's failure kind for an upstream's non-2xx answer."""
    status = response.status_code
    message = f"upstream for {model_id}: HTTP {status}: {_error_detail(response)}"
    if status in _OVERLOAD_STATUSES:
        return Overloaded(message, parse_retry_after(response.headers.get("retry-after")))
    if status in _VALIDATION_STATUSES:
        return InputRejected(message)
    if status in _TIMEOUT_STATUSES:
        return GenerationTimeout(message)
    return BackendFailure(message)


def resolve_api_key(spec: UpstreamSpec, model_id: str) -> str | None:
    if spec.api_key_env is None:
        return None
    key = os.environ.get(spec.api_key_env)
    if not key:
        raise UpstreamKeyMissing(
            f"model {model_id}: the environment variable {spec.api_key_env} (its API key) is "
            "not set where the Serve replicas run"
        )
    return key


class OpenAICompatBackend:
    """One upstream model. One keep-alive connection pool per replica and upstream."""

    name = "openai_compat"

    def __init__(
        self,
        model_id: str,
        spec: UpstreamSpec,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.model_id = model_id
        self.upstream_model = spec.model
        self.timeout_s = spec.timeout_s
        key = resolve_api_key(spec, model_id)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.AsyncClient(
            base_url=spec.base_url,
            headers=headers,
            timeout=httpx.Timeout(spec.timeout_s, connect=spec.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=spec.max_connections,
                max_keepalive_connections=spec.max_connections,
            ),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"OpenAICompatBackend({self.model_id!r} -> {self._http.base_url})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[ToolFunction] = (),
        tool_choice: ToolChoice = "auto",
        sampling: Sampling = DEFAULT_SAMPLING,
    ) -> Generation:
        body = chat_request(
            self.upstream_model, messages, max_tokens, temperature, tools, tool_choice, sampling
        )
        with self._transport_errors():
            response = await self._http.post(CHAT_COMPLETIONS_PATH, json=body)
        if not response.is_success:
            raise error_for_status(self.model_id, response)
        try:
            data = response.json()
        except ValueError as exc:
            raise BackendFailure(
                f"upstream for {self.model_id} answered non-JSON: {response.text[:200]!r}"
            ) from exc
        return parse_completion(data, messages)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[ToolFunction] = (),
        tool_choice: ToolChoice = "auto",
        sampling: Sampling = DEFAULT_SAMPLING,
    ) -> AsyncIterator[Piece]:
        """The upstream's own stream (``stream: true``, usage asked for at its end): text as
        it arrives; tool-call deltas are joined by index and come with the whole answer."""
        body = chat_request(
            self.upstream_model, messages, max_tokens, temperature, tools, tool_choice, sampling
        )
        body.update(stream=True, stream_options={"include_usage": True})
        stream = StreamedCompletion()
        with self._transport_errors():
            async with self._http.stream("POST", CHAT_COMPLETIONS_PATH, json=body) as response:
                if not response.is_success:
                    await response.aread()
                    raise error_for_status(self.model_id, response)
                async for line in response.aiter_lines():
                    piece = stream.take(line, self.model_id)
                    if piece:
                        yield piece
        yield parse_completion(stream.completion(), messages)

    @contextlib.contextmanager
    def _transport_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as exc:
            raise GenerationTimeout(
                f"upstream for {self.model_id}: no answer within {self.timeout_s:g} s "
                f"({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise BackendFailure(
                f"upstream for {self.model_id} unreachable: {type(exc).__name__}: {exc}"
            ) from exc


class StreamedCompletion:
    """An OpenAI chat-completion stream (``data:`` lines of chunks), put back together."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: object = None
        self.usage: dict[str, Any] = {}

    def take(self, line: str, model_id: str) -> str:
        """One line of the stream; returns its new text ("" for none)."""
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            return ""
        try:
            chunk = json.loads(line[5:])
            self.usage = chunk.get("usage") or self.usage
            text = ""
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                text += delta.get("content") or ""
                for part in delta.get("tool_calls") or ():
                    call = self.calls.setdefault(int(part.get("index", 0)), {
                        "id": None, "function": {"name": "", "arguments": ""}})
                    call["id"] = call["id"] or part.get("id")
                    function = part.get("function") or {}
                    call["function"]["name"] += function.get("name") or ""
                    call["function"]["arguments"] += function.get("arguments") or ""
                self.finish_reason = choice.get("finish_reason") or self.finish_reason
        except (ValueError, TypeError, AttributeError) as exc:
            raise BackendFailure(f"upstream for {model_id} streamed something that is not a "
                                 f"chat completion chunk: {line[:200]!r}") from exc
        self.pieces.append(text)
        return text

    def completion(self) -> dict[str, Any]:
        """The stream as the one chat completion :func:`parse_completion` reads."""
        message = {"content": "".join(self.pieces),
                   "tool_calls": [self.calls[i] for i in sorted(self.calls)]}
        return {"choices": [{"message": message, "finish_reason": self.finish_reason}],
                "usage": self.usage}
