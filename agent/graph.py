"""The LLM-RetLink graph and its SQLite checkpointer.

    describe → retrieve → store → enrich → prerank ─┬─> judge → answer
                                                    ├─> consult ⇄ tools ─> judge   (uncertain)
                                                    └─> answer   (pre-ranker decisive)

``consult`` and ``tools`` (LangGraph's ``ToolNode`` over ``agent.lookups``) run only with
``AgentSettings.consult_margin`` set and a pre-ranker margin below it (``agent.consult``).

One thread per linking decision, named ``<run id>|<mention id>|<condition>`` (condition is
``clean`` or an attack preset folder such as ``PGD-strong``), so ``agent.trace`` can find,
list, diff and replay it. ``graph`` at the bottom is what ``langgraph dev`` opens
(``langgraph.json``): compiled without a checkpointer (LangGraph's server brings its own), it
gets an ``AgentContext`` the server builds from the run's JSON, so its resources come from the
environment (``agent.resources.default_resources``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode

from agent import nodes
from agent.consult import route_after_consult
from agent.lookups import LOOKUP_TOOLS
from agent.nodes import AgentContext
from agent.state import LinkState

THREAD_SEPARATOR = "|"


def build_graph() -> StateGraph:
    builder = StateGraph(LinkState, context_schema=AgentContext)
    builder.add_node("describe", nodes.describe)
    builder.add_node("retrieve", nodes.retrieve)
    builder.add_node("store", nodes.store)
    builder.add_node("enrich", nodes.enrich)
    builder.add_node("prerank", nodes.prerank)
    builder.add_node("consult", nodes.consult)
    builder.add_node("tools", ToolNode(LOOKUP_TOOLS, handle_tool_errors=True))
    builder.add_node("judge", nodes.judge)
    builder.add_node("answer", nodes.answer)
    builder.add_edge(START, "describe")
    builder.add_edge("describe", "retrieve")
    builder.add_edge("retrieve", "store")
    builder.add_edge("store", "enrich")
    builder.add_edge("enrich", "prerank")
    builder.add_conditional_edges("prerank", nodes.route_after_prerank, ["consult", "judge", "answer"])
    builder.add_conditional_edges("consult", route_after_consult, ["tools", "judge"])
    builder.add_edge("tools", "consult")
    builder.add_edge("judge", "answer")
    builder.add_edge("answer", END)
    return builder


def open_checkpointer(path: Path) -> SqliteSaver:
    """A SQLite checkpointer on ``path`` (created with its folder). Safe to share across threads:
    the connection allows other threads (``check_same_thread=False``) and ``SqliteSaver`` runs
    every statement under its own lock (langgraph-checkpoint-sqlite's ``SqliteSaver.cursor``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteSaver(sqlite3.connect(str(path), check_same_thread=False))


def compile_graph(checkpointer: SqliteSaver | None = None) -> CompiledStateGraph:
    return build_graph().compile(checkpointer=checkpointer, name="llm-retlink")


def thread_id(run_id: str, mention_id: str, condition: str) -> str:
    for part, what in ((run_id, "run id"), (condition, "condition")):
        if THREAD_SEPARATOR in part:
            raise ValueError(f"a {what} may not contain {THREAD_SEPARATOR!r}: {part!r}")
    return THREAD_SEPARATOR.join((run_id, mention_id, condition))


def split_thread_id(thread: str) -> tuple[str, str, str]:
    """(run id, mention id, condition); a mention id may itself contain the separator."""
    run_id, _, rest = thread.partition(THREAD_SEPARATOR)
    mention_id, _, condition = rest.rpartition(THREAD_SEPARATOR)
    return run_id, mention_id, condition


graph = compile_graph()
