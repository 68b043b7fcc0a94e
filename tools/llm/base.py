"""What every chat backend shares: the reply, the error, the protocol, the settings, the counters.

One chat interface serves the agent's LLM and the describer's VLM, so vLLM, llama.cpp's server,
Ollama, OpenAI or the embedded model swap by configuration alone.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class ChatReply:
    """One answer: its text, which model gave it, wall seconds and attempts it took, token counts."""

    text: str
    model: str
    seconds: float
    attempts: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class LLMError(RuntimeError):
    """A chat call that gave no answer once its retries or time budget were spent.

    The message names the backend (base URL and model) and the last cause, so the agent can record
    why it fell back to the pre-ranker.
    """

    def __init__(self, backend: str, cause: str, attempts: int = 1) -> None:
        super().__init__(f"{backend}: no answer after {attempts} attempt(s): {cause}")
        self.backend = backend
        self.cause = cause
        self.attempts = attempts


@runtime_checkable
class ChatModel(Protocol):
    """An OpenAI-style chat model: ``messages`` in, one ``ChatReply`` out, ``LLMError`` on failure."""

    name: str

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float | None = None,
        max_tokens: int = 256,
        seed: int = 0,
    ) -> ChatReply:
        """``temperature`` None means the backend's configured ``LLMSettings.temperature`` (0 by default)."""
        ...


class ChatStats:
    """Thread-safe counters of one backend: calls, attempts, retries, failures (calls ending in LLMError)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = self.attempts = self.retries = self.failures = 0

    def add(self, *, calls: int = 0, attempts: int = 0, retries: int = 0, failures: int = 0) -> None:
        with self._lock:
            self.calls += calls
            self.attempts += attempts
            self.retries += retries
            self.failures += failures

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {
                "calls": self.calls,
                "attempts": self.attempts,
                "retries": self.retries,
                "failures": self.failures,
            }


@dataclass(frozen=True)
class LLMSettings:
    """Where chat calls go and how patient they are.

    ``base_url`` None selects the embedded Qwen2.5-Coder GGUF (``model`` may then name another
    ``.gguf`` path); otherwise any OpenAI-compatible server (``model`` None asks its ``/v1/models``
    and takes the first). ``timeout_s`` bounds one attempt, ``budget_s`` the whole call including
    retries and backoff. Temperature 0 (greedy) is the evaluation default; the seed paper's 0.75 is
    an option.
    """

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 0.5
    budget_s: float = 180.0
    temperature: float = 0.0
    stream: bool = False

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.budget_s <= 0 or self.retries < 0 or self.backoff_s < 0:
            raise ValueError(f"LLM settings need timeout_s, budget_s > 0 and retries, backoff_s >= 0: {self}")

    @classmethod
    def from_env(cls, prefix: str = "MEL_LLM", **overrides: Any) -> LLMSettings:
        """Settings from ``{prefix}_BASE_URL``, ``_MODEL``, ``_API_KEY``, ``_TIMEOUT_S``, ``_RETRIES``,
        ``_BACKOFF_S``, ``_BUDGET_S``, ``_TEMPERATURE``, ``_STREAM`` (prefix ``MEL_VLM`` for the VLM).

        ``overrides`` whose value is None are ignored, so unset command-line flags keep the
        environment's value and explicit flags win.
        """
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = os.environ.get(f"{prefix}_{spec.name.upper()}")
            if raw is None or raw.strip() == "":
                continue
            values[spec.name] = _parse(spec.name, raw.strip(), str(spec.type))
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown LLM settings: {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The settings for run records, with the API key masked."""
        data = asdict(self)
        if data["api_key"]:
            data["api_key"] = "***"
        return data


def _parse(name: str, raw: str, kind: str) -> Any:
    try:
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError as exc:
        raise ValueError(f"LLM setting {name}: cannot read {raw!r} as {kind}") from exc
    return raw
