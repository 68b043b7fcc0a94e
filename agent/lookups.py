"""The agent's look-ups as LangChain tools: what the consult step (``agent.consult``) lets the
judge model call, and what any other LangGraph agent can bind.

    wikipedia_search, wikipedia_extract, wikidata_search, wikidata_entity,
    nearest_evidence (the candidate store), read_image_text (describer + OCR on an image region)

Each is a langchain-core ``@tool`` with typed arguments and a docstring written for a model. The
resources come from the run's context through the injected ``ToolRuntime`` (hidden from the
model's schema): ``AgentContext.resources``, else the environment's (``default_resources``), so
the tools work in this graph, under ``langgraph dev`` and in another agent's ``ToolNode`` alike.
Wiki tools ask the configured client (online or the offline replica) and fall back to the
replica exactly as the retrieve node does; the two tools that need the decision (its candidates,
its image) read them from the injected graph state and say so when there is none.

A tool answers with a short text for the model and an artifact for the trace:
``{"records": [...], "seconds": ..., "fallbacks": [...]}`` (``response_format="content_and_artifact"``).
The text is retrieved data: the consult and judge prompts fence and datamark it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from langchain_core.tools import BaseTool, tool
from langgraph.prebuilt import ToolRuntime

from agent.nodes import run_resources, with_wiki_fallback
from agent.resources import load_pixels

TEXT_CHARS = 300
"""Characters of each record's text a tool shows the model (the artifact keeps the whole record)."""
Region = Literal["whole", "top", "bottom", "left", "right", "center"]


def _answer(
    records: list[dict[str, Any]], started: float, fallbacks: list[str], empty: str
) -> tuple[str, dict]:
    lines = [
        f"- {r.get('title') or r.get('qid')}"
        + (f" ({r['qid']})" if r.get("qid") and r.get("title") else "")
        + f": {' '.join(str(r.get('text', '')).split())[:TEXT_CHARS]}"
        for r in records
    ]
    artifact = {
        "records": records,
        "seconds": round(time.perf_counter() - started, 4),
        "fallbacks": fallbacks,
    }
    return "\n".join(lines) or empty, artifact


def _wiki(
    runtime: ToolRuntime[Any, Any], call: Callable[[Any], Any], what: str, empty: str
) -> tuple[str, dict]:
    """``call(wiki)`` on the run's client, falling back to the replica as the retrieve node does;
    its hits (a list, or a dict of them) as the tool's answer."""
    started = time.perf_counter()
    fallbacks: list[str] = []
    found = with_wiki_fallback(run_resources(runtime), call, fallbacks, what) or []
    hits = found.values() if isinstance(found, dict) else found
    return _answer([hit.to_json() for hit in hits], started, fallbacks, empty)


@tool(response_format="content_and_artifact", parse_docstring=True)
def wikipedia_search(query: str, runtime: ToolRuntime[Any, Any], limit: int = 3) -> tuple[str, dict]:
    """Search English Wikipedia and get the best-matching pages with their first sentences.

    Args:
        query: What to search for, e.g. a name and a distinguishing word ("Mercury planet").
        limit: How many pages to return (1 to 5).
    """
    return _wiki(
        runtime, lambda wiki: wiki.wikipedia_search(query, max(1, min(limit, 5))), "search", "no pages found"
    )


@tool(response_format="content_and_artifact", parse_docstring=True)
def wikipedia_extract(title: str, runtime: ToolRuntime[Any, Any]) -> tuple[str, dict]:
    """Read the introduction of one English Wikipedia page.

    Args:
        title: The page title exactly, e.g. "Mercury (planet)".
    """
    return _wiki(runtime, lambda wiki: wiki.wikipedia_pages([title]), "extract", f"no page titled {title!r}")


@tool(response_format="content_and_artifact", parse_docstring=True)
def wikidata_search(query: str, runtime: ToolRuntime[Any, Any], limit: int = 5) -> tuple[str, dict]:
    """Search Wikidata items by name; each hit has its QID and a short description.

    Args:
        query: A name or label to look up, e.g. "Katsu Kaishu".
        limit: How many items to return (1 to 10).
    """
    return _wiki(
        runtime,
        lambda wiki: wiki.wikidata_search(query, max(1, min(limit, 10))),
        "wikidata search",
        "no items found",
    )


@tool(response_format="content_and_artifact", parse_docstring=True)
def wikidata_entity(qid: str, runtime: ToolRuntime[Any, Any]) -> tuple[str, dict]:
    """Get one Wikidata item by its QID: its label, description and other names.

    Args:
        qid: The item's identifier, e.g. "Q42".
    """
    return _wiki(runtime, lambda wiki: wiki.wikidata_entities([qid.strip()]), "entity", f"no item {qid!r}")


@tool(response_format="content_and_artifact", parse_docstring=True)
def nearest_evidence(query: str, runtime: ToolRuntime[Any, Any], limit: int = 3) -> tuple[str, dict]:
    """Find which candidate's stored evidence best matches some words (e.g. what the image shows).

    Args:
        query: Words to match against the candidates' evidence, e.g. "bronze statue horse".
        limit: How many candidates to return (1 to 5).
    """
    started = time.perf_counter()
    res = run_resources(runtime)
    state = runtime.state if isinstance(runtime.state, dict) else {}
    qids = [c["qid"] for c in state.get("candidates", [])] or None  # another agent: the whole store
    found = res.store.nearest_evidence(query, res.settings.wiki.mode, qids, max(1, min(limit, 5)))
    records = [
        {
            "qid": qid,
            "title": f"{res.entities[qid].label if qid in res.entities else qid}, similarity {score}",
            "similarity": score,
            "text": " ".join(r.get("text", "") for r in evidence),
        }
        for qid, score, evidence in found
    ]
    return _answer(records, started, [], "no stored evidence")


@tool(response_format="content_and_artifact", parse_docstring=True)
def read_image_text(runtime: ToolRuntime[Any, Any], region: Region = "whole") -> tuple[str, dict]:
    """Look again at a part of this decision's image: what objects it shows and any text written in it.

    Args:
        region: Which part to read: whole, top, bottom, left, right or center (the middle half).
    """
    started = time.perf_counter()
    state = runtime.state if isinstance(runtime.state, dict) else {}
    if state.get("image") is None:
        return "this decision has no image", {"records": [], "seconds": 0.0, "fallbacks": []}
    pixels = crop(load_pixels(state["image"]), region)
    descriptors = run_resources(runtime).describer.describe(pixels).to_json()
    record = {
        "title": f"image {region}",
        "text": f"objects: {', '.join(descriptors['words']) or 'none'}; text: {' '.join(descriptors['ocr']) or 'none'}",
        "descriptors": descriptors,
    }
    return _answer([record], started, [], "")


def crop(pixels: Any, region: Region) -> Any:
    """The ``region`` of a (3, H, W) image: a half (top, bottom, left, right), the middle half
    of each side (center) or all of it."""
    _, height, width = pixels.shape
    h, w = height // 2, width // 2
    boxes = {
        "whole": (0, height, 0, width),
        "top": (0, h, 0, width),
        "bottom": (h, height, 0, width),
        "left": (0, height, 0, w),
        "right": (0, height, w, width),
        "center": (height // 4, height // 4 + h, width // 4, width // 4 + w),
    }
    top, bottom, left, right = boxes[region]
    return pixels[:, top:bottom, left:right]


LOOKUP_TOOLS: tuple[BaseTool, ...] = (
    wikipedia_search,
    wikipedia_extract,
    wikidata_search,
    wikidata_entity,
    nearest_evidence,
    read_image_text,
)
"""Every look-up tool, in the order the consult prompt lists them."""
