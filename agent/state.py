"""The typed state one linking decision carries through the graph.

Everything in it is plain JSON (the SQLite checkpointer stores it, ``agent.trace`` reads it),
except ``messages``: the consult step's LangChain messages, which LangGraph's serializer stores:
pixels stay on disk and are named by ``ImageRef``; models live in ``agent.resources``.
Each node writes its own keys and appends one entry to ``steps`` (node, seconds, what it
decided), so a trace reads in order and a diff can find the first node whose output changed.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages


class ImageRef(TypedDict):
    """Where the pixels are: a picture file or an exact float tensor (``.pt``) of an attack."""

    path: str
    bbox: list[float] | None
    condition: str  # "clean" or an attack preset folder such as "PGD-strong"


class Candidate(TypedDict):
    qid: str
    label: str
    description: str  # the KB's own text, used when nothing better is available


class LinkState(TypedDict, total=False):
    run_id: str
    mention_id: str
    mention: str
    sentence: str
    language: str
    gold: str | None  # read by the answer node only, to mark the trace correct or not
    image: ImageRef | None
    candidates: list[Candidate]
    descriptors: dict[str, Any]
    evidence: dict[str, list[dict[str, Any]]]  # QID -> evidence records
    looked_up: list[str]  # QIDs whose evidence this decision fetched (the rest came from the store)
    context_evidence: list[dict[str, Any]]
    retrieval: dict[str, float]  # QID -> cosine of its stored evidence to the image+context query
    descriptions: dict[str, str]  # QID -> the LLM's sentence-level description
    description_origin: dict[str, str]  # QID -> "llm" | "store" | "fallback:<why>"
    enrich_prompts: dict[str, str]  # QID -> the writer's prompt, for descriptions written in this decision
    prerank: dict[str, Any]  # Model*: qids, scores, probabilities (candidate order), order, margin, decisive
    consult: dict[
        str, Any
    ]  # the consult step: margin, entropy, calls (name, arguments, result, seconds), stopped
    messages: Annotated[list[AnyMessage], add_messages]  # the consult step's tool calls and results
    judge: dict[str, Any]  # shortlist, distributions {prerank, judge, fused}, weight, method, decision
    decision: str
    decided_by: str  # "judge" | "prerank" (judge skipped or failed)
    ranking: list[str]
    correct: bool | None
    fallbacks: Annotated[list[str], operator.add]
    steps: Annotated[list[dict[str, Any]], operator.add]


NODES = ("describe", "retrieve", "store", "enrich", "prerank", "consult", "judge", "answer")
"""The graph's nodes in execution order (consult runs only when on and uncertain, the judge may be
skipped); the ``tools`` node that runs the consult step's calls writes ``messages`` only."""
PLAIN_ROUTE = tuple(node for node in NODES if node != "consult")
"""The nodes a decision runs, in order, with the consult step off and the judge on."""
