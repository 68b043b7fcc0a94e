"""A record-and-replay OpenAI-compatible endpoint: a real model's recorded answers, served after a
fixed delay, as a remote server would answer them.

    python -m tools.llm.record_replay --recording FILE [--upstream URL] [--delay 0.5] [--port 0]

With ``--upstream`` (record mode) a request the recording lacks is forwarded to that real server
(e.g. ``python -m tools.llm.server``), and its answer is appended to ``FILE`` (JSON lines) and
returned; without it (replay mode) such a request gets HTTP 404 ``not recorded``, which the
project's client does not retry, so the agent records a fallback and the miss is counted. A
recorded request is answered with the recorded body after ``--delay`` seconds, each request in
its own thread, so any number wait at once (latency without a throughput limit: what a large
served GPU backend looks like from a 2-core client). Nothing is generated here: every answer
text was the real model's answer to that very request.

A request is keyed by its JSON body without ``model``, ``stream`` and ``stream_options`` (the
messages, temperature, max_tokens, seed, logprobs and response format all count). Upstream is
always asked for a plain JSON answer; a streamed request gets that answer as server-sent events
(one content chunk, one ``finish_reason`` chunk, ``[DONE]``). ``GET /v1/models`` lists the
recorded models (upstream's in record mode); ``GET /stats`` gives hits, misses, recorded and the most requests in flight at
once. Prints ``MEL_LLM_BASE_URL=http://127.0.0.1:PORT/v1`` when it listens (``tools.llm.server.
launched`` starts it as a child process).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tools.llm.server import ANNOUNCE

TRANSPORT_FIELDS = ("model", "stream", "stream_options")


def request_key(body: dict[str, Any]) -> str:
    """What identifies a request: its body without the transport fields, canonically dumped."""
    kept = {k: v for k, v in body.items() if k not in TRANSPORT_FIELDS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Recording:
    """The recorded answers (key -> chat.completion body), read from and appended to a JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.answers[entry["key"]] = entry["response"]

    def add(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        with self.lock:
            if key in self.answers:
                return
            self.answers[key] = response
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                out.write(json.dumps({"key": key, "request": request, "response": response}) + "\n")

    def models(self) -> list[str]:
        with self.lock:
            return sorted({r.get("model") for r in self.answers.values() if r.get("model")})


class ReplayServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], recording: Recording, delay_s: float, upstream: str | None
    ) -> None:
        super().__init__(address, _Handler)
        self.recording = recording
        self.delay_s = delay_s
        self.upstream = upstream.rstrip("/") if upstream else None
        self.counts = {"hits": 0, "misses": 0, "recorded": 0, "in_flight": 0, "peak_in_flight": 0}
        self.count_lock = threading.Lock()

    def count(self, name: str, by: int = 1) -> None:
        with self.count_lock:
            self.counts[name] += by
            self.counts["peak_in_flight"] = max(self.counts["peak_in_flight"], self.counts["in_flight"])

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ReplayServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the bench prints its own
        pass

    def do_GET(self) -> None:
        path = self.path.rstrip("/")
        if path == "/stats":
            with self.server.count_lock:
                self._json(200, dict(self.server.counts))
        elif path in ("/v1/models", "/models") and self.server.upstream is not None:
            with urllib.request.urlopen(f"{self.server.upstream}/models", timeout=60) as response:
                self._json(200, json.loads(response.read()))
        elif path in ("/v1/models", "/models"):
            models = self.server.recording.models() or ["recorded"]
            self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in models]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            key = request_key(body)
        except (ValueError, TypeError) as exc:
            self._json(400, {"error": {"message": f"bad request: {exc}"}})
            return
        server = self.server
        server.count("in_flight")
        try:
            answer = server.recording.answers.get(key)
            if answer is not None:
                server.count("hits")
                time.sleep(server.delay_s)
            elif server.upstream is not None:
                answer = self._forward(body)
                if answer is None:
                    return
                server.recording.add(key, body, answer)
                server.count("recorded")
            else:
                server.count("misses")
                time.sleep(server.delay_s)
                self._json(
                    404, {"error": {"message": "not recorded: this request was never answered upstream"}}
                )
                return
            if body.get("stream"):
                self._stream(answer)
            else:
                self._json(200, answer)
        finally:
            server.count("in_flight", -1)

    def _forward(self, body: dict[str, Any]) -> dict[str, Any] | None:
        plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        request = urllib.request.Request(
            f"{self.server.upstream}/chat/completions",
            data=json.dumps(plain).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            self._json(exc.code, {"error": {"message": f"upstream: {exc.read()[:300]!r}"}})
        except OSError as exc:
            self._json(502, {"error": {"message": f"upstream unreachable: {exc}"}})
        return None

    def _stream(self, answer: dict[str, Any]) -> None:
        choice = (answer.get("choices") or [{}])[0]
        base = {k: answer.get(k) for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
        content = (choice.get("message") or {}).get("content") or ""
        events = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}}]},
            {
                **base,
                "choices": [
                    {"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}
                ],
                "usage": answer.get("usage"),
            },
        ]
        data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def stats(base_url: str) -> dict[str, int]:
    """The endpoint's counters (``GET /stats``)."""
    root = base_url.rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/stats", timeout=10) as response:
        return json.loads(response.read())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recording", type=Path, required=True, help="JSON lines of recorded answers")
    parser.add_argument("--upstream", default=None, help="record mode: the real server's base URL")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds before each replayed answer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = ReplayServer((args.host, args.port), Recording(args.recording), args.delay, args.upstream)
    print(f"{ANNOUNCE}{server.base_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
