"""A local OpenAI-compatible server for the embedded model, on the standard library alone.

``python -m tools.llm.server [--host 127.0.0.1] [--port 8088] [--model-path GGUF]`` serves
``POST /v1/chat/completions`` (plain JSON, or server-sent events with ``"stream": true``) and
``GET /v1/models``, so anything that speaks the OpenAI API (the project's own client, LangChain,
curl) can use the offline model. ``serve_embedded()`` runs the same server in a thread for the
length of a ``with`` block. Requests are accepted concurrently but generate one at a time (the
model's lock). A request without ``temperature`` is greedy (0), not OpenAI's 1: this server
exists for reproducible evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import chain
from typing import Any

from tools.llm.base import LLMError, LLMSettings
from tools.llm.embedded import EmbeddedChat

log = logging.getLogger(__name__)
DEFAULT_PORT = 8088


class EmbeddedServer(ThreadingHTTPServer):
    """HTTP server holding one ``EmbeddedChat``."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], chat: EmbeddedChat) -> None:
        super().__init__(address, _Handler)
        self.chat = chat

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EmbeddedServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = {"id": self.server.chat.model_id, "object": "model", "created": 0, "owned_by": "local"}
            self._json(200, {"object": "list", "data": [model]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route {self.path}")
            return
        try:
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            messages = request["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
            options = {
                "temperature": float(request.get("temperature") or 0.0),
                "max_tokens": int(request.get("max_completion_tokens") or request.get("max_tokens") or 256),
                "seed": int(request.get("seed") or 0),
            }
        except (ValueError, KeyError, TypeError) as exc:
            self._error(400, f"bad request: {exc}")
            return
        try:
            if request.get("stream"):
                self._stream(self.server.chat.stream(messages, **options))
            else:
                self._json(200, self.server.chat.completion(messages, **options))
        except LLMError as exc:
            self._error(400, exc.cause)

    def _stream(self, chunks: Iterator[dict[str, Any]]) -> None:
        with closing(chunks):  # releases the model when the client hangs up mid-answer
            first = next(chunks)  # errors before any byte is sent still get an HTTP status
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for event in chain([first], chunks):
                    self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                log.info("client hung up mid-stream")
            except LLMError as exc:  # headers are out: ending without finish_reason tells the client
                log.warning("stream failed: %s", exc)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._json(status, {"error": {"message": message, "type": kind, "code": status}})


@contextmanager
def serve_embedded(port: int = 0, host: str = "127.0.0.1", model_path: str | None = None) -> Iterator[str]:
    """Serve the embedded model in a background thread; yields the base URL (``.../v1``).

    ``port=0`` takes a free port. The model loads on the first request (or was already loaded
    in this process); the server stops when the block ends.
    """
    server = EmbeddedServer((host, port), EmbeddedChat(LLMSettings(model=model_path)))
    thread = threading.Thread(target=server.serve_forever, name="llm-server", daemon=True)
    thread.start()
    try:
        yield server.base_url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--model-path", default=None, help="a .gguf file (default: the registry's Qwen2.5-Coder)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    chat = EmbeddedChat(LLMSettings(model=args.model_path))
    start = time.monotonic()
    chat.completion([{"role": "user", "content": "hi"}], max_tokens=1)  # load before announcing the URL
    server = EmbeddedServer((args.host, args.port), chat)
    log.info("model %s ready in %.1f s; serving %s", chat.model_id, time.monotonic() - start, server.base_url)
    print(f"MEL_LLM_BASE_URL={server.base_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
