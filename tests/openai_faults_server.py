"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat API and misbehaves on purpose.

Each request to ``/v1/chat/completions`` takes the next mode from a script (then ``default``):

* ``ok``: a normal answer (JSON, or SSE when the request asks ``stream: true``)
* ``429:S``: HTTP 429 with ``Retry-After: S``; ``500``: HTTP 500; ``400``: HTTP 400 (final)
* ``malformed``: HTTP 200 with a JSON body cut in the middle; ``empty``: ``choices: []``
* ``cut``: the answer stops mid-way and the connection closes (SSE without ``finish_reason`` and
  ``[DONE]``; plain JSON shorter than its ``Content-Length``)
* ``sleep:S``: waits S seconds, then answers normally
* ``drip``: sends headers, then one byte of body every 0.2 s until the client hangs up
* ``drip-headers``: sends the status line, then one byte of a header every 0.2 s
* ``hangup``: closes the connection without a byte

Given ``top_logprobs`` ({token: probability}), a request that asks for ``logprobs`` gets them for
its first answer token, as llama.cpp's and vLLM's servers send them (a judge's distribution).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "Candidate 2: Barack Obama"
MODEL = "fault-model"


def completion(text: str, top_logprobs: dict[str, float] | None = None) -> dict[str, Any]:
    body = {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
    }
    if top_logprobs:
        tops = [{"token": t, "logprob": math.log(p)} for t, p in top_logprobs.items()]
        first = {"token": text, "logprob": math.log(top_logprobs.get(text, 1e-9)), "top_logprobs": tops}
        body["choices"][0]["logprobs"] = {"content": [first]}
    return body


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, script: Sequence[str], default: str, answer: str, top_logprobs: dict[str, float] | None
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.top_logprobs = top_logprobs
        self.script = list(script)
        self.default = default
        self.answer = answer
        self.seen: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-answer is what these tests do; stay quiet about it."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/v1"

    def next_mode(self) -> str:
        with self.lock:
            mode = self.script.pop(0) if self.script else self.default
            self.seen.append(mode)
            return mode


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "test"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.server.bodies.append(body)
        stream = bool(body.get("stream"))
        answer = self.server.answer
        mode = self.server.next_mode()
        kind, _, arg = mode.partition(":")
        if kind == "sleep":
            time.sleep(float(arg))
            kind = "ok"
        if kind == "ok":
            if stream:
                half = len(answer) // 2
                self._sse(
                    [
                        chunk({"role": "assistant", "content": answer[:half]}),
                        chunk({"content": answer[half:]}),
                    ]
                )
                self._send_raw(chunk({}, "stop") + b"data: [DONE]\n\n")
            else:
                self._json(
                    200, completion(answer, self.server.top_logprobs if body.get("logprobs") else None)
                )
        elif kind == "429":
            self._json(429, _error("rate limited", "rate_limit_exceeded"), {"Retry-After": arg})
        elif kind == "500":
            self._json(500, _error("boom", "server_error"))
        elif kind == "400":
            self._json(400, _error("bad model", "invalid_request_error"))
        elif kind == "malformed":
            self._raw(200, b'{"id": "chatcmpl-fault", "choices": [{"index": 0, "mess')
        elif kind == "empty":
            self._json(200, {**completion(answer), "choices": []})
        elif kind == "cut":
            if stream:
                self._sse([chunk({"role": "assistant", "content": "Cand"})])
            else:
                data = json.dumps(completion(answer)).encode()
                self._raw(200, data[: len(data) // 2], length=len(data))
        elif kind == "drip":
            self._sse([])
            while not self.server.stopping.is_set() and self._send_raw(b" "):
                time.sleep(0.2)
        elif kind == "drip-headers":
            self._send_raw(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not self.server.stopping.is_set() and self._send_raw(b"a"):
                time.sleep(0.2)
        elif kind == "hangup":
            pass
        else:
            raise ValueError(f"unknown mode {mode!r}")
        self.close_connection = True

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._raw(status, json.dumps(body).encode(), headers=headers)

    def _raw(
        self, status: int, data: bytes, headers: dict[str, str] | None = None, length: int | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _sse(self, events: list[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for event in events:
            self._send_raw(event)

    def _send_raw(self, data: bytes) -> bool:
        """Write ``data``; False once the client has hung up."""
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            return False
        return True


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "code": code}}


@contextmanager
def fault_server(
    script: Sequence[str] = (),
    default: str = "ok",
    answer: str = ANSWER,
    top_logprobs: dict[str, float] | None = None,
) -> Iterator[FaultServer]:
    """Serve in a thread; yields the server (``.url``: the base URL; ``.bodies``: requests seen)."""
    server = FaultServer(script, default, answer, top_logprobs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
