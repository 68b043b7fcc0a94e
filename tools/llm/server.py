"""``python -m tools.llm.server``: the embedded model behind llama-cpp-python's own OpenAI server.

    python -m tools.llm.server [--host 127.0.0.1] [--port 8088] [--model-path GGUF] [--api-key KEY]
        [--chat-format chatml-function-calling]

A thin launcher: it assembles the GGUF (``tools.llm_weights``, once; or takes ``--model-path``)
and runs ``llama_cpp.server`` (llama-cpp-python's ``[server]`` extra: FastAPI + uvicorn) on it,
with the embedded backend's settings (context 4096, every core, seed 0, the GGUF's own chat
template, the model named as ``EmbeddedChat`` names it). Once the model is loaded and the port
is open it prints ``MEL_LLM_BASE_URL=http://HOST:PORT/v1``. ``--port 0`` takes a free port.

What llama.cpp's server gives: ``/v1/chat/completions`` (plain and streamed, ``logprobs`` /
``top_logprobs``, ``response_format`` ``json_object`` and ``json_schema`` through a grammar,
``seed``), ``/v1/completions``, ``/v1/models`` and ``/docs``. With ``--chat-format
chatml-function-calling`` it also answers ``tools`` with OpenAI ``tool_calls`` (its grammar-constrained
function-calling format; plain chats then use that format's ChatML, without the GGUF's default system line). llama-cpp-python 0.3 knows a schema
only as ``{"type": "json_object", "schema": ...}``; ``JsonSchemaFormat`` (the one piece added here)
rewrites OpenAI's ``{"type": "json_schema", "json_schema": {"schema": ...}}`` into that form. It generates one request at a time
(its own lock); ``interrupt_requests`` is off, so a waiting request never cuts another's stream
short. Note what differs from the in-process ``EmbeddedChat``: a request without
``temperature`` gets the server's default (0.2), not greedy decoding (the project's client
always sends one), and the server reuses whatever prompt prefix its KV cache holds from the
previous request, so a greedy answer can differ in float rounding with what was asked before
(``EmbeddedChat`` evaluates every prompt the same way; see its module doc). A request the server
cannot read (a malformed body, a wrong field) is answered with HTTP 500 naming the problem, which
the project's client retries like any 5xx before it gives up.

``serve_embedded()`` starts this launcher as a child process for the length of a ``with`` block
and yields its base URL; ``launched()`` does the same for any command that prints
``MEL_LLM_BASE_URL=`` (the bench's record-and-replay endpoint).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)
DEFAULT_PORT = 8088
ANNOUNCE = "MEL_LLM_BASE_URL="
START_TIMEOUT_S = 600.0  # assembling the GGUF the first time and loading it on a busy 2-core machine


def model_settings(model_path: str | None, chat_format: str | None = None) -> Any:
    """llama_cpp.server's ``ModelSettings`` for the embedded model (assembled on first call);
    ``chat_format`` None keeps the GGUF's own template."""
    from llama_cpp.server.settings import ModelSettings

    from tools.llm.embedded import N_CTX, gguf_path, require_llama_cpp

    require_llama_cpp()
    path = gguf_path(model_path)
    cores = os.cpu_count() or 1
    return ModelSettings(
        model=str(path),
        model_alias=path.stem,  # the id /v1/models lists and replies carry, as EmbeddedChat names it
        n_ctx=N_CTX,
        n_threads=cores,
        n_threads_batch=cores,
        seed=0,
        verbose=False,
        **({"chat_format": chat_format} if chat_format else {}),
    )


class JsonSchemaFormat:
    """ASGI middleware: a chat request's OpenAI ``response_format`` ``{"type": "json_schema",
    "json_schema": {"schema": S}}`` reaches llama-cpp-python as ``{"type": "json_object", "schema":
    S}``, the grammar-constrained form it implements; every other request passes untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].rstrip("/").endswith("/chat/completions")
        ):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        body = openai_schema_as_llama_cpp(b"".join(chunks))
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> dict[str, Any]:
            return pending.pop() if pending else await receive()

        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": headers}, replay, send)


def openai_schema_as_llama_cpp(body: bytes) -> bytes:
    """The request body with a ``json_schema`` response format rewritten (see ``JsonSchemaFormat``)."""
    try:
        request = json.loads(body)
    except ValueError:
        return body  # the server answers a malformed body itself
    form = request.get("response_format") if isinstance(request, dict) else None
    if not isinstance(form, dict) or form.get("type") != "json_schema":
        return body
    spec = form.get("json_schema") if isinstance(form.get("json_schema"), dict) else {}
    request["response_format"] = {
        "type": "json_object",
        **({"schema": spec["schema"]} if "schema" in spec else {}),
    }
    return json.dumps(request).encode()


def announcing_server(config: Any, base_url: str) -> Any:
    """A ``uvicorn.Server`` that prints ``MEL_LLM_BASE_URL=<base_url>`` once it has started."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(f"{ANNOUNCE}{base_url}", flush=True)

    return Server(config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: a free port")
    parser.add_argument(
        "--model-path", default=None, help="a .gguf file (default: the registry's Qwen2.5-Coder)"
    )
    parser.add_argument("--api-key", default=None, help="require this bearer key (default: none)")
    parser.add_argument(
        "--chat-format",
        default=None,
        help="a llama-cpp-python chat format, e.g. chatml-function-calling to answer OpenAI tool "
        "calls (default: the GGUF's own template)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ServerSettings

    listener = socket.create_server((args.host, args.port))  # bound before the model loads: no race
    host, port = listener.getsockname()[:2]
    started = time.monotonic()
    model = model_settings(args.model_path, args.chat_format)
    server_settings = ServerSettings(host=host, port=port, api_key=args.api_key, interrupt_requests=False)
    app = create_app(server_settings=server_settings, model_settings=[model])
    log.info("model %s loaded in %.1f s", model.model_alias, time.monotonic() - started)
    config = uvicorn.Config(JsonSchemaFormat(app), log_level="warning", timeout_graceful_shutdown=5)
    announcing_server(config, f"http://{host}:{port}/v1").run(sockets=[listener])


@contextmanager
def launched(
    argv: Sequence[str], env: dict[str, str] | None = None, timeout_s: float = START_TIMEOUT_S
) -> Iterator[str]:
    """Run ``argv`` as a child process until it prints ``MEL_LLM_BASE_URL=...``; yield that URL and
    stop the child (SIGTERM, then SIGKILL) when the block ends. Its output is drained in a thread
    and its last lines are in the error when it dies or stays silent past ``timeout_s``."""
    process = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    tail: collections.deque[str] = collections.deque(maxlen=40)
    found: list[str] = []
    announced = threading.Event()

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip())
            if not found and line.startswith(ANNOUNCE):
                found.append(line.strip()[len(ANNOUNCE) :])
                announced.set()
        announced.set()  # the child ended

    reader = threading.Thread(target=drain, name="server-output", daemon=True)
    reader.start()
    try:
        if not announced.wait(timeout_s) or not found:
            state = f"exited with {process.poll()}" if process.poll() is not None else "still silent"
            raise RuntimeError(
                f"{' '.join(argv)} gave no base URL within {timeout_s:.0f} s ({state}):\n" + "\n".join(tail)
            )
        yield found[0]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=5)


@contextmanager
def serve_embedded(
    port: int = 0, host: str = "127.0.0.1", model_path: str | None = None, chat_format: str | None = None
) -> Iterator[str]:
    """Serve the embedded model with ``python -m tools.llm.server`` in a child process; yields the
    base URL (``.../v1``) once the model is loaded. ``port=0`` takes a free port."""
    argv = [sys.executable, "-m", "tools.llm.server", "--host", host, "--port", str(port)]
    if model_path is not None:
        argv += ["--model-path", model_path]
    if chat_format is not None:
        argv += ["--chat-format", chat_format]
    with launched(argv) as url:
        yield url


if __name__ == "__main__":
    main()
