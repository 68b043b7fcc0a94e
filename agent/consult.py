"""The consult step: an uncertain decision may look things up before the judge answers.

    prerank ─(margin < consult_margin)─> consult ⇄ tools (ToolNode over agent.lookups) ─> judge

When the pre-ranker's top-1 probability beats the runner-up's by less than
``AgentSettings.consult_margin``, the judge's model is offered the look-up tools
(``agent.lookups.LOOKUP_TOOLS``, as OpenAI function schemas) and may call them, at most
``consult_max_calls`` times (K, default 3) and within ``consult_seconds`` (model and tool time
together). Each round the model sees the mention, the shortlist and everything found so far;
the calls it asks for run in LangGraph's ``ToolNode`` (the graph's ``tools`` node) and come
back as ``ToolMessage`` s in the thread's ``messages``, so every call (name, arguments, result,
seconds) is in the checkpoint. The step ends when the model calls no tool, the budget is spent,
or the model cannot call tools at all (a backend without ``call_tools`` or a server that
refuses ``tools``): that is recorded as a fallback and the judge goes on without it.

What was found joins the judge's prompt, fenced and datamarked like all retrieved text
(``agent.prompts.judge_messages``); the judge is also asked once without it, so every consulted
decision records what the agent would have decided without the step (``judge.without_consult``).

**Interpretations** (issue 18 leaves them open): uncertainty is the pre-ranker's margin, the same
quantity ``skip_judge_margin`` reads (the fused distribution does not exist before the judge);
each round's prompt is built afresh with the results so far as fenced data, rather than relying
on a server's template to render ``tool``-role messages (llama.cpp's ``chatml-function-calling``
format drops them); a call for an unknown tool or with unreadable arguments counts against K and
is recorded with its error, as a real agent's wasted call would be.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from agent.lookups import LOOKUP_TOOLS
from agent.resources import Resources
from agent.spotlight import SPOTLIGHT_SYSTEM, fence
from agent.state import LinkState

TOOL_SCHEMAS = [convert_to_openai_tool(t) for t in LOOKUP_TOOLS]
TOOL_NAMES = frozenset(t.name for t in LOOKUP_TOOLS)
CONSULT_SYSTEM = (
    "You help an entity-linking judge. Before it decides which candidate the mention refers to, "
    "you may call the tools to look up facts that tell the leading candidates apart. When you know "
    "enough, or no look-up would help, answer with one short sentence and call no tool."
)
RESULT_CHARS = 600
"""Characters of one tool result the consult and judge prompts show."""


def entropy(probabilities: Sequence[float]) -> float:
    """Shannon entropy (nats) of a distribution: 0 when certain, log(n) when uniform."""
    return round(-sum(p * math.log(p) for p in probabilities if p > 0), 5) + 0.0  # never -0.0


def found_texts(record: dict[str, Any] | None) -> list[str]:
    """What the consult step found, one text per successful call: ``tool(arguments): result``."""
    return [
        f"{call['name']}({json.dumps(call['arguments'], ensure_ascii=False)}): {call['result'][:RESULT_CHARS]}"
        for call in (record or {}).get("calls", [])
        if call.get("status") == "success"
    ]


def consult_messages(
    state: LinkState, record: dict[str, Any], calls_left: int, spotlight: bool
) -> list[dict]:
    """The model's chat for one round: the mention, the shortlist, what was found so far."""
    labels = {c["qid"]: c["label"] for c in state["candidates"]}
    shortlist = state["prerank"]["order"][: record["shortlist_size"]]
    mark = fence if spotlight else (lambda text: text)
    listed = "\n".join(
        f"{i}. {labels[q]} ({q}): {mark(state['descriptions'].get(q, '') or labels[q])}"
        for i, q in enumerate(shortlist, 1)
    )
    words = ", ".join(state["descriptors"]["words"]) or "(nothing recognised)"
    found = "\n".join(f"- {mark(text)}" for text in found_texts(record)) or "(nothing yet)"
    user = (
        f'Mention: "{state["mention"]}" in "{state["sentence"]}"\nImage (seen as words): {words}\n\n'
        f"Candidates:\n{listed}\n\nFound so far:\n{found}\n\n"
        f"You may make {calls_left} more tool call(s)."
    )
    system = f"{CONSULT_SYSTEM} {SPOTLIGHT_SYSTEM}" if spotlight else CONSULT_SYSTEM
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _results(messages: Sequence[Any], pending: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls ``pending`` (id -> call) completed by the ``ToolMessage`` s in ``messages``."""
    done = []
    for message in messages:
        if isinstance(message, ToolMessage) and message.tool_call_id in pending:
            artifact = message.artifact if isinstance(message.artifact, dict) else {}
            call = pending[message.tool_call_id]
            done.append(
                {
                    **call,
                    "result": str(message.content),
                    "status": message.status,
                    "seconds": float(artifact.get("seconds", 0.0)),
                    "fallbacks": artifact.get("fallbacks", []),
                }
            )
    return done


def consult_node(state: LinkState, res: Resources) -> dict[str, Any]:
    """One round of the consult step (see module doc); ``agent.nodes.consult`` calls it."""
    from agent.nodes import _short, _step

    started = time.perf_counter()
    settings = res.settings
    model = res.vlm or res.llm  # the judge's model
    record = dict(state.get("consult") or {})
    if not record:
        shortlist = state["prerank"]["order"][: settings.judge_top_k]
        probabilities = dict(zip(state["prerank"]["qids"], state["prerank"]["probabilities"], strict=True))
        record = {
            "model": model.name,
            "margin": state["prerank"]["margin"],
            "threshold": settings.consult_margin,
            "entropy": entropy([probabilities[q] for q in shortlist]),
            "shortlist_size": len(shortlist),
            "max_calls": settings.consult_max_calls,
            "budget_s": settings.consult_seconds,
            "calls": [],
            "pending": {},
            "rounds": 0,
            "seconds": 0.0,
            "stopped": None,
        }
    finished = _results(state.get("messages", []), record["pending"])
    record["calls"] = [*record["calls"], *finished]
    record["seconds"] += sum(call["seconds"] for call in finished)
    record["pending"] = {}
    fallbacks: list[str] = []
    messages: list[Any] = []
    calls_left = settings.consult_max_calls - len(record["calls"])
    if record["seconds"] >= settings.consult_seconds:
        record["stopped"] = "time budget spent"
    elif calls_left <= 0:
        record["stopped"] = "call budget spent"
    elif not hasattr(model, "call_tools"):
        record["stopped"] = f"model cannot call tools: {model.name} has no tool calling"
        fallbacks.append(f"consult: {record['stopped']}; judged without look-ups")
    else:
        prompt = consult_messages(state, record, calls_left, settings.spotlight)
        try:
            reply = model.call_tools(prompt, TOOL_SCHEMAS)
        except Exception as exc:  # noqa: BLE001 - the judge goes on without look-ups
            record["stopped"] = f"model cannot call tools: {_short(exc)}"
            fallbacks.append(f"consult: {record['stopped']}; judged without look-ups")
        else:
            record["seconds"] += reply.seconds
            record["prompt"] = "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)
            record["answer"] = reply.text
            wanted = list(reply.calls)[:calls_left]
            runnable = [c for c in wanted if c.error is None and c.name in TOOL_NAMES]
            for call in wanted:
                if call not in runnable:
                    why = call.error or f"no tool named {call.name!r}"
                    record["calls"].append(
                        {
                            "id": call.id,
                            "name": call.name,
                            "arguments": call.arguments,
                            "result": why,
                            "status": "error",
                            "seconds": 0.0,
                            "fallbacks": [],
                        }
                    )
            ids = {c.id: f"{c.id}-r{record['rounds']}" for c in runnable}  # unique within the thread
            record["pending"] = {
                ids[c.id]: {"id": ids[c.id], "name": c.name, "arguments": c.arguments} for c in runnable
            }
            messages.append(
                AIMessage(
                    content=reply.text,
                    tool_calls=[{"name": c.name, "args": c.arguments, "id": ids[c.id]} for c in runnable],
                    response_metadata={
                        "model": reply.model,
                        "seconds": round(reply.seconds, 3),
                        "source": reply.source,
                    },
                )
            )
            if not runnable:
                record["stopped"] = "answered" if not wanted else "no usable call"
    record["rounds"] += 1
    step = _step(
        "consult",
        started,
        calls=len(record["calls"]),
        pending=sorted(record["pending"]),
        stopped=record["stopped"],
    )
    step["seconds"] = round(step["seconds"] + sum(call["seconds"] for call in finished), 4)  # tools' time too
    return {"consult": record, "messages": messages, "fallbacks": fallbacks, "steps": [step]}


def route_after_consult(state: LinkState) -> str:
    """The ``tools`` node while calls are pending, else the judge."""
    return "tools" if (state.get("consult") or {}).get("pending") else "judge"
