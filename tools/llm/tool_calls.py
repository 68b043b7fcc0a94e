"""Tool calls: what a tool-calling chat answer carries, and how one is read from text.

Two ways a backend hands tool calls back:

* **structured**: an OpenAI-compatible server that parses them itself returns
  ``message.tool_calls`` (vLLM with ``--enable-auto-tool-choice --tool-call-parser hermes`` for
  Qwen2.5; llama.cpp's server with ``--chat-format chatml-function-calling``);
* **in the text**: a model that renders its own chat template with the tools (the embedded
  Qwen2.5 GGUF, or a server without a tool parser) writes Hermes-style calls, a JSON object
  ``{"name": ..., "arguments": {...}}`` per call, normally between ``<tool_call>`` tags.
  ``calls_in_text`` reads them leniently: with or without the tags, and with the doubled
  braces ``{{ ... }}`` the small Qwen2.5 copies from its template's example (seen with the
  embedded 1.5B model). A call whose JSON does not parse is kept with ``error`` set, so the
  caller can record it instead of losing it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

_NAME_KEY = re.compile(r'\{\s*"name"\s*:')


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for: its id, the tool's name and the arguments it gave."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the arguments could not be read (kept, not dropped)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ToolReply:
    """A tool-calling answer: any text, the calls (none: the model answered instead), which
    model gave it, wall seconds and attempts, and ``source``: ``structured`` or ``text``."""

    text: str
    calls: tuple[ToolCall, ...]
    model: str
    seconds: float
    attempts: int = 1
    source: str = "structured"


def calls_in_text(text: str, prefix: str = "call") -> list[ToolCall]:
    """Every ``{"name": ..., "arguments": ...}`` object in ``text`` (see module doc), in order."""
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    position = 0
    while (match := _NAME_KEY.search(text, position)) is not None:
        start = match.start()
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            name = re.match(r'\{\s*"name"\s*:\s*"([^"]*)"', text[start:])
            calls.append(
                ToolCall(
                    f"{prefix}-{len(calls)}", name.group(1) if name else "", {}, f"unreadable JSON: {exc}"
                )
            )
            position = match.end()
            continue
        position = end
        calls.append(structured_call(value, f"{prefix}-{len(calls)}"))
    return calls


def structured_call(value: Any, call_id: str) -> ToolCall:
    """A ``ToolCall`` from ``{"name", "arguments"}`` (arguments an object or a JSON string)."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return ToolCall(call_id, "", {}, f"not a call object: {str(value)[:80]}")
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return ToolCall(call_id, value["name"], {}, f"unreadable arguments: {exc}")
    if not isinstance(arguments, dict):
        return ToolCall(call_id, value["name"], {}, f"arguments are not an object: {str(arguments)[:80]}")
    return ToolCall(call_id, value["name"], arguments)


def openai_tool_calls(message: dict[str, Any]) -> list[ToolCall]:
    """The calls of an OpenAI ``message.tool_calls`` list (``function.arguments`` a JSON string)."""
    calls = []
    for index, raw in enumerate(message.get("tool_calls") or []):
        function = raw.get("function") or {} if isinstance(raw, dict) else {}
        call_id = (raw.get("id") if isinstance(raw, dict) else None) or f"call-{index}"
        calls.append(structured_call(function, call_id))
    return calls
