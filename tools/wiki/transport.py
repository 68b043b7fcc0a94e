"""GET a MediaWiki API answer as JSON: disk cache first, then HTTP with retries in a budget.

Connection errors, timeouts, HTTP 429 and 5xx, malformed JSON, an answer of the wrong shape
and the API's own transient errors (``maxlag``, ``ratelimited``, ``internal_api_error_*``)
are retried with exponential backoff and jitter, or after the server's ``Retry-After``; any
other 4xx or API error fails at once. Each attempt runs in a worker thread that the caller
waits on for at most ``min(timeout_s, budget left)``: httpx's own timeouts bound each socket
operation, not the whole exchange (a server trickling bytes, a slow DNS lookup), so the wait
is what guarantees that no call outlives its timeout or its budget. When the next wait would
end past the budget the call gives up at once rather than sleep only to fail.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import httpx

from tools.retry_after import retry_after_seconds
from tools.wiki.cache import ResponseCache
from tools.wiki.evidence import WikiError
from tools.wiki.settings import WikiSettings
from tools.wiki.stats import WikiStats

MAX_BODY_BYTES = 16 << 20
RETRYABLE_API_ERRORS = ("maxlag", "ratelimited", "internal_api_error")
_WORKERS = 4

Shape = Callable[[dict[str, Any]], bool]


class _Retryable(Exception):
    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.retry_after = retry_after


class _Fatal(Exception):
    pass


class ApiTransport:
    """One HTTP connection pool, the response cache and the retry policy of ``settings``."""

    def __init__(self, settings: WikiSettings, stats: WikiStats, cache: ResponseCache) -> None:
        self.settings = settings
        self.stats = stats
        self.cache = cache
        self._http = httpx.Client(
            headers={"User-Agent": settings.user_agent, "Accept": "application/json"},
            follow_redirects=True,
        )
        self._workers = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="wiki-http")
        self._jitter = random.Random()

    def close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def get_json(
        self, api: str, params: Mapping[str, str], query: str, shape: Shape
    ) -> tuple[dict[str, Any], str]:
        """The answer and its origin (``cache`` or ``live``); ``shape`` says whether a parsed
        answer is the one asked for (a wrong shape is retried like malformed JSON)."""
        cached = self.cache.get(api, params)
        if cached is not None:
            self.stats.add(cache_hits=1)
            return cached, "cache"
        payload = self._fetch(api, dict(params), query, shape)
        self.cache.put(api, params, payload)
        return payload, "live"

    def _fetch(self, api: str, params: dict[str, str], query: str, shape: Shape) -> dict[str, Any]:
        endpoint = f"{api} action={params.get('action', '?')}"
        start = time.monotonic()
        deadline = start + self.settings.budget_s
        attempts = 0
        while True:
            timeout = min(self.settings.timeout_s, deadline - time.monotonic())
            attempts += 1
            self.stats.add(requests=1)
            try:
                return self._attempt(api, params, timeout, shape)
            except _Fatal as exc:
                cause = str(exc)
                break
            except _Retryable as exc:
                cause = str(exc)
                wait = exc.retry_after if exc.retry_after is not None else self._backoff(attempts)
            if attempts > self.settings.retries:
                break
            if time.monotonic() + wait >= deadline:
                cause += f"; next attempt would start after the {self.settings.budget_s:g} s budget"
                break
            time.sleep(wait)
            self.stats.add(retries=1)
        error = WikiError(endpoint, query, cause, attempts, time.monotonic() - start)
        self.stats.failed(error)
        raise error

    def _backoff(self, attempts: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        step = self.settings.backoff_s * 2 ** (attempts - 1)
        return step / 2 + self._jitter.uniform(0, step / 2)

    def _attempt(self, api: str, params: dict[str, str], timeout: float, shape: Shape) -> dict[str, Any]:
        future = self._workers.submit(self._request, api, params, timeout, time.monotonic() + timeout)
        try:
            status, headers, body = future.result(timeout=timeout)
        except FutureTimeout:
            future.cancel()
            raise _Retryable(f"no complete answer within {timeout:.2f} s") from None
        return _interpret(status, headers, body, shape)

    def _request(
        self, api: str, params: dict[str, str], timeout: float, deadline: float
    ) -> tuple[int, httpx.Headers, bytes]:
        """One GET, read to the end unless ``deadline`` passes first (runs in a worker thread)."""
        body = bytearray()
        try:
            with self._http.stream("GET", api, params=params, timeout=timeout) as response:
                for chunk in response.iter_bytes():
                    body += chunk
                    if time.monotonic() > deadline:
                        raise _Retryable(f"answer still arriving after {timeout:.2f} s")
                    if len(body) > MAX_BODY_BYTES:
                        raise _Fatal(f"answer larger than {MAX_BODY_BYTES} bytes")
                status, headers = response.status_code, response.headers
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timed out after {timeout:.2f} s ({type(exc).__name__})") from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise _Fatal(f"bad API URL {api!r}: {exc}") from exc
        except httpx.RequestError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        return status, headers, bytes(body)


def _interpret(status: int, headers: httpx.Headers, body: bytes, shape: Shape) -> dict[str, Any]:
    retry_after = retry_after_seconds(headers.get("Retry-After"))
    if status == 429 or status >= 500:
        raise _Retryable(f"HTTP {status}", retry_after)
    if status >= 300:
        raise _Fatal(f"HTTP {status}")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise _Retryable(f"malformed JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise _Retryable(f"malformed answer: a JSON {type(payload).__name__}, not an object")
    error = payload.get("error")
    if isinstance(error, dict):
        code = str(error.get("code", "?"))
        cause = f"API error {code}: {error.get('info', '')}"
        if code.startswith(RETRYABLE_API_ERRORS):
            raise _Retryable(cause, retry_after)
        raise _Fatal(cause)
    if not shape(payload):
        raise _Retryable("malformed answer: not the expected MediaWiki shape")
    return payload
