"""Chat through any OpenAI-compatible server (vLLM, llama.cpp's server, Ollama, OpenAI).

The SDK's own retries are off (``max_retries=0``) so that one loop here owns the time: each
attempt runs in a worker thread the caller waits on for at most ``timeout_s`` (or what is left of
``budget_s``), so a server that accepts the connection and then dribbles or stalls cannot hold a
call past its limit. Connection errors, timeouts, HTTP 408/409/429/5xx, malformed bodies, empty
``choices`` and streams cut before their ``finish_reason`` are retried with exponential backoff
(``backoff_s`` doubling; a longer ``Retry-After`` wins); other 4xx answers are final. When the
retries or the budget run out, ``LLMError`` names the server, the model and the last cause.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from typing import Any, TypeVar

import openai

from tools.llm.base import ChatReply, ChatStats, ChoiceReply, LLMError, LLMSettings
from tools.llm.tool_calls import ToolCall, ToolReply, calls_in_text, openai_tool_calls
from tools.retry_after import retry_after_seconds

T = TypeVar("T")
# Local servers ignore the key, but the SDK refuses to start without one.
PLACEHOLDER_API_KEY = "EMPTY"
_RETRY_STATUS = frozenset({408, 409, 429})


class BadReply(RuntimeError):
    """A 2xx answer that carries no usable message (malformed, empty ``choices``, cut stream)."""


class OpenAIChat:
    """``ChatModel`` over an OpenAI-compatible ``/v1/chat/completions`` endpoint (see module doc)."""

    def __init__(self, settings: LLMSettings) -> None:
        if not settings.base_url:
            raise ValueError("OpenAIChat needs settings.base_url")
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self.model: str | None = settings.model
        self.stats = ChatStats()
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=settings.api_key or PLACEHOLDER_API_KEY,
            timeout=settings.timeout_s,
            max_retries=0,
        )
        self._model_lock = threading.Lock()

    @property
    def name(self) -> str:
        """``openai:<model>@<base_url>``; ``auto`` until the server's first model is looked up."""
        return f"openai:{self.model or 'auto'}@{self.base_url}"

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float | None = None,
        max_tokens: int = 256,
        seed: int = 0,
    ) -> ChatReply:
        """One answer within ``budget_s``; ``LLMError`` once retries or budget are spent."""
        temp = self.settings.temperature if temperature is None else temperature
        (text, usage, served), attempts, start = self._retrying(
            partial(self._attempt, messages, temp, max_tokens, seed)
        )
        return ChatReply(
            text=text,
            model=served or self.model or "",
            seconds=time.monotonic() - start,
            attempts=attempts,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )

    def _retrying(self, attempt: Callable[[float], T]) -> tuple[T, int, float]:
        """``attempt(limit)`` (one request, its body read and parsed) retried with backoff within
        ``budget_s`` as the module doc says: (its result, attempts, start time); ``LLMError``
        naming the last cause once retries or budget are spent or an answer is final."""
        settings = self.settings
        start = time.monotonic()
        deadline = start + settings.budget_s
        attempts = 0
        while True:
            limit = min(settings.timeout_s, deadline - time.monotonic())
            attempts += 1
            try:
                result = _within(limit, partial(attempt, limit))
            except Exception as exc:  # classified below; the last one is reported
                retry, wait, cause = classify(exc, limit)
                delay = max(settings.backoff_s * 2 ** (attempts - 1), wait or 0.0)
                if retry and attempts > settings.retries:
                    cause += f" (retries exhausted: {settings.retries})"
                elif retry and time.monotonic() + delay >= deadline:
                    cause += f" (a retry in {delay:.2f} s would pass the {settings.budget_s:g} s budget)"
                elif retry:
                    self.stats.add(retries=1)
                    time.sleep(delay)
                    continue
                self.stats.add(calls=1, attempts=attempts, failures=1)
                raise LLMError(self.name, cause, attempts) from exc
            self.stats.add(calls=1, attempts=attempts)
            return result, attempts, start

    def _attempt(
        self, messages: list[dict[str, Any]], temperature: float, max_tokens: int, seed: int, limit: float
    ) -> tuple[str, dict[str, Any], str | None]:
        """One request; the body is read here, chunk by chunk, so that it stops at ``limit``."""
        stream = self.settings.stream
        body = self._body(
            limit,
            messages=messages,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            stream=stream,
        )
        return parse_sse(body) if stream else parse_completion(body)

    def _body(self, limit: float, **request: Any) -> bytes:
        """The raw body of one ``/chat/completions`` request, read chunk by chunk until ``limit``."""
        deadline = time.monotonic() + limit
        with self._client.chat.completions.with_streaming_response.create(
            model=self._resolve_model(limit), timeout=limit, **request
        ) as response:
            body = bytearray()
            for piece in response.iter_bytes():
                if time.monotonic() > deadline:
                    raise BadReply(f"reply still arriving after {limit:.2f} s")
                body += piece
        return bytes(body)

    def call_tools(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, max_tokens: int = 160
    ) -> ToolReply:
        """A greedy answer with ``tools`` offered (``tool_choice="auto"``), retried and bounded
        like ``chat``. The server's own ``tool_calls`` are used; a server without a tool parser
        that leaves Hermes-style calls in the text has them read there (``source="text"``). A
        server that refuses tools answers 4xx: an ``LLMError``, and the caller skips the step."""

        def attempt(limit: float) -> tuple[str, list[ToolCall], str, str | None]:
            body = self._body(
                limit,
                messages=messages,
                tools=tools,
                tool_choice="auto",
                temperature=0.0,
                max_tokens=max_tokens,
            )
            return parse_tool_reply(body)

        (text, calls, source, served), attempts, start = self._retrying(attempt)
        model = served or self.model or ""
        return ToolReply(text, tuple(calls), model, time.monotonic() - start, attempts, source)

    def choose(
        self,
        messages: list[dict[str, Any]],
        options: Sequence[str],
        *,
        seed: int = 0,
        structured: bool = False,
        top_logprobs: int = 20,
    ) -> ChoiceReply:
        """A distribution over ``options`` from the endpoint's ``logprobs``/``top_logprobs``
        (greedy, a few tokens), retried and bounded like ``chat``.

        ``structured`` also sends vLLM's structured-output choice (``extra_body={"structured_outputs":
        {"choice": options}}``; vLLM 0.12 removed the older ``guided_choice``), so the text itself
        is one of the options; other servers may reject it. An endpoint that returns no logprobs,
        or none for an option's first token, gives ``probabilities=None`` and its free-text
        answer (``method="free-text"``), for the caller to parse.
        """
        from tools.llm.answers import distribution_from_top_logprobs

        extra = {"structured_outputs": {"choice": list(options)}} if structured else None
        max_tokens = max(len(o) for o in options) + 1

        def attempt(limit: float) -> tuple[str, Any, Any, str | None]:
            body = self._choice_attempt(messages, max_tokens, seed, limit, top_logprobs, extra)
            return parse_choice_logprobs(body)

        (text, positions, generated, served), attempts, start = self._retrying(attempt)
        found = distribution_from_top_logprobs(positions, generated, options) if positions else None
        seconds = time.monotonic() - start
        model = served or self.model or ""
        if found is None:
            return ChoiceReply(tuple(options), None, text, model, seconds, "free-text", attempts=attempts)
        probabilities, valid, top, approximate = found
        method = "top_logprobs" + ("~approx" if approximate else "") + ("+structured" if structured else "")
        return ChoiceReply(
            tuple(options), tuple(probabilities), text, model, seconds, method, valid, top, attempts
        )

    def _choice_attempt(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int,
        seed: int,
        limit: float,
        top_logprobs: int,
        extra: dict[str, Any] | None,
    ) -> bytes:
        return self._body(
            limit,
            messages=messages,
            temperature=0.0,
            max_tokens=max_tokens,
            seed=seed,
            logprobs=True,
            top_logprobs=top_logprobs,
            extra_body=extra,
        )

    def _resolve_model(self, limit: float) -> str:
        """The configured model, else the first one the server lists (asked once)."""
        with self._model_lock:
            if self.model is None:
                listed = self._client.models.list(timeout=limit).data
                if not listed:
                    raise BadReply("server lists no models; set the model explicitly")
                self.model = listed[0].id
            return self.model


def _within(limit: float, fn: Callable[[], T]) -> T:
    """``fn()`` in a daemon thread, waited on for at most ``limit`` seconds.

    On time-out the thread is abandoned: its own request timeout (the same ``limit``) ends it soon
    after, and nothing it returns is used.
    """
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the waiting caller
            future.set_exception(exc)

    threading.Thread(target=run, name="llm-attempt", daemon=True).start()
    return future.result(timeout=max(limit, 0.0))


def classify(exc: BaseException, limit: float) -> tuple[bool, float | None, str]:
    """(retry?, server-requested wait in seconds, cause) for one failed attempt."""
    if isinstance(exc, FutureTimeout):
        return True, None, f"no answer within {limit:.2f} s"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry = status in _RETRY_STATUS or status >= 500
        body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else None
        detail = body.get("message") if isinstance(body, dict) else None
        return retry, retry_after(exc.response.headers), f"HTTP {status}: {str(detail or exc.message)[:200]}"
    if isinstance(exc, openai.APITimeoutError):
        return True, None, f"timed out after {limit:.2f} s"
    if isinstance(exc, openai.APIConnectionError):
        return True, None, f"connection failed: {exc.__cause__ or exc}"
    # Malformed JSON, cut streams and transport errors raised while reading a body are transient.
    return True, None, f"{type(exc).__name__}: {str(exc)[:200]}"


def retry_after(headers: Any) -> float | None:
    """Seconds a 429/503 asks to wait: ``retry-after-ms``, ``Retry-After`` seconds or HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    return retry_after_seconds(headers.get("retry-after"))


def parse_completion(body: bytes) -> tuple[str, dict[str, Any], str | None]:
    """(text, usage, model that served it) of a ``chat.completion`` JSON body; ``BadReply``
    when it has no message."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadReply(f"malformed JSON reply ({exc}): {body[:120]!r}") from exc
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        raise BadReply(f"reply has no choices list: {body[:120]!r}")
    if not choices:
        raise BadReply("reply has empty choices")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise BadReply(f"reply's first choice has no text content: {body[:120]!r}")
    usage = data.get("usage")
    return content, usage if isinstance(usage, dict) else {}, _served(data)


def parse_tool_reply(body: bytes) -> tuple[str, list[ToolCall], str, str | None]:
    """(text, calls, where the calls came from, model that served it) of a ``chat.completion``
    body answered with tools offered; ``BadReply`` when it has no message."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadReply(f"malformed JSON reply ({exc}): {body[:120]!r}") from exc
    choices = data.get("choices") if isinstance(data, dict) else None
    message = choices[0].get("message") if isinstance(choices, list) and choices else None
    if not isinstance(message, dict):
        raise BadReply(f"reply has no message: {body[:120]!r}")
    text = message.get("content") if isinstance(message.get("content"), str) else ""
    calls = openai_tool_calls(message)
    if calls:
        return text, calls, "structured", _served(data)
    return text, calls_in_text(text), "text", _served(data)


def parse_sse(body: bytes) -> tuple[str, dict[str, Any], str | None]:
    """(text, usage, model that served it) of a streamed ``chat.completion.chunk`` body; ``BadReply`` when it was cut.

    A stream is whole only when choice 0 reached a ``finish_reason``; ``[DONE]`` alone is not
    required (some servers omit it) and does not suffice.
    """
    parts: list[str] = []
    finish, usage, served = None, {}, None
    for line in body.decode("utf-8", errors="replace").splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise BadReply(f"malformed stream event: {payload[:120]!r}") from exc
        if isinstance(event.get("usage"), dict):
            usage = event["usage"]
        served = _served(event) or served
        for choice in event.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str):
                parts.append(content)
            finish = choice.get("finish_reason") or finish
    if finish is None:
        raise BadReply(f"stream ended before its finish_reason after {len(''.join(parts))} characters")
    return "".join(parts), usage, served


def _served(data: dict[str, Any]) -> str | None:
    model = data.get("model")
    return model if isinstance(model, str) and model else None


def parse_choice_logprobs(
    body: bytes,
) -> tuple[str, list[list[tuple[str, float]]], list[str], str | None]:
    """(text, ``top_logprobs`` per answer position as (token, logprob) pairs, the generated
    tokens, model that served it) of a ``chat.completion`` body; positions are empty when the
    server sent no ``logprobs``."""
    text, _usage, served = parse_completion(body)
    data = json.loads(body)
    logprobs = (data["choices"][0] or {}).get("logprobs") or {}
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    positions: list[list[tuple[str, float]]] = []
    generated: list[str] = []
    for entry in content or []:
        if not isinstance(entry, dict):
            continue
        tops = [
            (str(t.get("token", "")), float(t["logprob"]))
            for t in entry.get("top_logprobs") or []
            if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)
        ]
        if not tops and isinstance(entry.get("logprob"), int | float):
            tops = [(str(entry.get("token", "")), float(entry["logprob"]))]
        positions.append(tops)
        generated.append(str(entry.get("token", "")))
    return text, positions, generated, served
