"""What every chat backend shares: the reply, the error, the protocol, the settings, the counters.

One chat interface serves the agent's LLM and the describer's VLM, so vLLM, llama.cpp's server,
Ollama, OpenAI or the embedded model swap by configuration alone. ``MelSettings`` is the base of
the project's one settings layer (pydantic-settings): ``LLMSettings`` here, ``WikiSettings`` and
``AgentSettings`` build on it; the README's Settings table lists every variable.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)


@dataclass(frozen=True)
class ChatReply:
    """One answer: its text, which model gave it, wall seconds and attempts it took, token counts."""

    text: str
    model: str
    seconds: float
    attempts: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class ChoiceReply:
    """One constrained answer: a probability per offered option (``options``, e.g. ``"1"``..``"k"``).

    ``probabilities`` is None when the backend gave no distribution (an endpoint without
    logprobs); ``text`` is then the free-text answer, for the caller to parse. ``method`` says
    where the numbers came from: ``logits`` (the embedded model's own next-token logits, exact
    over every option), ``top_logprobs`` (an endpoint's ``top_logprobs``, see
    ``tools.llm.answers.distribution_from_top_logprobs``) or ``free-text``. ``valid_mass`` is the
    unconstrained probability of the options' first tokens at the answer position (how much the
    model wanted to answer with an index at all) and ``free_top`` the unconstrained most likely
    first token: together they say whether an unconstrained answer would have been valid.
    """

    options: tuple[str, ...]
    probabilities: tuple[float, ...] | None
    text: str
    model: str
    seconds: float
    method: str
    valid_mass: float | None = None
    free_top: str | None = None
    attempts: int = 1

    @property
    def choice(self) -> int | None:
        """0-based index of the most probable option (ties: the first), None without a distribution."""
        if self.probabilities is None:
            return None
        return max(range(len(self.probabilities)), key=lambda i: (self.probabilities[i], -i))


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


@runtime_checkable
class ChoiceModel(Protocol):
    """A chat model that can also answer with a distribution over a closed set of answers."""

    name: str

    def choose(self, messages: list[dict[str, Any]], options: Sequence[str], *, seed: int = 0) -> ChoiceReply:
        """The probability of each answer in ``options`` (short strings such as ``"1"``..``"k"``);
        ``LLMError`` when the backend gives no answer at all."""
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


def env(variable: str | None) -> dict[str, Any]:
    """``Field(json_schema_extra=env(...))``: the variable a field is read from, or None for none."""
    return {"env": variable}


class _VariablesSource(EnvSettingsSource):
    """pydantic-settings' environment source, with the variable names ``MelSettings.variables``
    gives (exact case; a blank value counts as unset)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = self.settings_cls.variables(self.env_prefix).get(field_name)
        value = self.env_vars.get(variable) if variable else None
        if value is not None:
            value = value.strip() or None
        return value, field_name, False


class MelSettings(BaseSettings):
    """The base of the one settings layer: frozen pydantic-settings, defaults < environment < arguments.

    A field is read from ``<env_prefix><FIELD>`` unless ``Field(json_schema_extra=env(NAME))``
    names another variable or none. Constructing a class with arguments alone reads no
    environment, so ``LLMSettings(base_url=...)`` is exactly what it says; ``from_env`` is where
    the environment comes in. A value the environment gets wrong raises ``SettingsError``
    (a ``ValueError``) naming the variable and what was expected.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid", case_sensitive=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @classmethod
    def variables(cls, prefix: str | None = None) -> dict[str, str]:
        """Field name -> the environment variable it is read from (``prefix`` replaces the class's)."""
        start = (prefix or cls.model_config.get("env_prefix", "")).rstrip("_") + "_"
        found: dict[str, str] = {}
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            variable = extra["env"] if "env" in extra else start + name.upper()
            if variable:
                found[name] = str(variable)
        return found

    @classmethod
    def _from_environment(cls, overrides: dict[str, Any], prefix: str | None = None) -> Self:
        """Defaults, then the environment, then ``overrides`` (applied as given)."""
        unknown = set(overrides) - set(cls.model_fields)
        if unknown:
            raise TypeError(f"unknown {cls.__name__} settings: {sorted(unknown)}")
        variables = cls.variables(prefix)
        found = _VariablesSource(cls, env_prefix=prefix)()
        read = {name: (variables[name], value) for name, value in found.items() if name not in overrides}
        try:
            return cls(**{**found, **overrides})
        except ValidationError as exc:
            raise SettingsError(_explain(cls.__name__, exc, read)) from exc

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes`` (``dataclasses.replace`` for these frozen settings)."""
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise TypeError(f"unknown {type(self).__name__} settings: {sorted(unknown)}")
        return type(self)(**{**dict(self), **changes})

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON values (paths as strings)."""
        return self.model_dump(mode="json")


def _explain(owner: str, exc: ValidationError, read: dict[str, tuple[str, str]]) -> str:
    """One clause per problem, naming the variable (and its value) when it came from the environment."""
    problems = []
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        message = str(error["msg"])
        if name in read:
            variable, raw = read[name]
            problems.append(f"{variable}={raw!r} {_expected(str(error['type']), message)}")
        else:
            problems.append(f"{owner}.{name}: {message}" if name else f"{owner}: {message}")
    return "; ".join(problems)


def _expected(kind: str, message: str) -> str:
    if kind.startswith("float_") or kind == "finite_number":
        return "is not a number"
    if kind.startswith("int_"):
        return "is not a whole number"
    if kind.startswith("bool_"):
        return "is not a boolean (true/false, 1/0, yes/no, on/off)"
    return f"is not valid: {message[:1].lower()}{message[1:]}"


class LLMSettings(MelSettings):
    """Where chat calls go and how patient they are.

    ``base_url`` None selects the embedded Qwen2.5-Coder GGUF (``model`` may then name another
    ``.gguf`` path); otherwise any OpenAI-compatible server (``model`` None asks its ``/v1/models``
    and takes the first). ``timeout_s`` bounds one attempt, ``budget_s`` the whole call including
    retries and backoff. Temperature 0 (greedy) is the evaluation default; the seed paper's 0.75 is
    an option. Read from ``MEL_LLM_<FIELD>`` (``MEL_VLM_<FIELD>`` for the VLM).
    """

    model_config = SettingsConfigDict(env_prefix="MEL_LLM_")

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    timeout_s: float = Field(default=60.0, gt=0)
    retries: int = Field(default=3, ge=0)
    backoff_s: float = Field(default=0.5, ge=0)
    budget_s: float = Field(default=180.0, gt=0)
    temperature: float = 0.0
    stream: bool = False

    @classmethod
    def from_env(cls, prefix: str = "MEL_LLM", **overrides: Any) -> LLMSettings:
        """Settings from ``{prefix}_BASE_URL``, ``_MODEL``, ``_API_KEY``, ``_TIMEOUT_S``, ``_RETRIES``,
        ``_BACKOFF_S``, ``_BUDGET_S``, ``_TEMPERATURE``, ``_STREAM`` (prefix ``MEL_VLM`` for the VLM).

        ``overrides`` whose value is None are ignored, so unset command-line flags keep the
        environment's value and explicit flags win.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(overrides) - set(cls.model_fields)
        if unknown:
            raise TypeError(f"unknown LLM settings: {sorted(unknown)}")
        return cls._from_environment(given, prefix=prefix)

    def to_json(self) -> dict[str, Any]:
        """The settings for run records, with the API key masked."""
        data = super().to_json()
        if data["api_key"]:
            data["api_key"] = "***"
        return data

    def identity(self) -> dict[str, Any]:
        """What of these settings changes answers, for a run's ``config.json`` to pin (no API key,
        no timeouts): the backend, base URL, model and temperature, and for the embedded default
        the GGUF file it loads (``model_file``; None for a server, which names its own model)."""
        from tools.llm_weights import GGUF_NAME

        if self.base_url:
            backend, base_url, model_file = "openai", self.base_url.rstrip("/"), None
        else:
            backend, base_url = "embedded", None
            model_file = Path(self.model).name if self.model else GGUF_NAME
        return {
            "backend": backend,
            "base_url": base_url,
            "model": self.model,
            "model_file": model_file,
            "temperature": self.temperature,
        }
