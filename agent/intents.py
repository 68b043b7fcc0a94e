"""What a chat line asks for, decided by rules, not by the LLM.

The embedded 1.5B model is unreliable at choosing tools, so ``agent.chat`` reads every line
with this deterministic parser first. Commands (``help``, ``summary``, ``node NAME``,
``explain`` (the judge's, pre-ranker's and fused distributions), ``what did you look up``
(the consult step's calls), ``compare A B``, ``evidence X``) and what-ifs (new descriptors, dropping a candidate, the clean
image or another image file) are recognised by patterns and answered without a model; only
``why`` questions and other free text go to the LLM, with the matching trace facts in its
prompt. Candidates are named by QID, label or ``#N`` (pre-ranker rank).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agent.facts import resolve_candidates
from agent.state import NODES

HELP = """\
Ask about this decision (candidates by QID, label or #rank):
  summary                              the decision in a few facts
  node NODE | what went into NODE      what went into and came out of a node ({nodes})
  compare A B                          two candidates side by side (trace facts only)
  explain | distributions              the judge's, pre-ranker's and fused distributions, and what won
  evidence X                           what was retrieved for a candidate
  what did you look up (and why)?      the consult step's tool calls, why it ran and what they changed
  why A and not B?                     the LLM explains from the trace facts (which it quotes)
  what if the descriptors were 'w1, w2'?   re-run from describe's checkpoint with new descriptors
  drop candidate X                     re-run the pre-ranker and judge without a candidate
  use the clean image | use image PATH re-run the whole graph on another image
  quit""".format(nodes=", ".join(NODES))


@dataclass(frozen=True)
class Intent:
    """One parsed line: ``kind`` and what it needs (a node, candidates, descriptor words, a path)."""

    kind: str  # help quit summary node fusion lookups compare evidence why ask descriptors drop clean_image image
    text: str
    node: str | None = None
    candidates: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    path: str | None = None


NODE_PATTERN = "|".join(NODES)
COMMANDS: list[tuple[str, re.Pattern[str]]] = [
    ("help", re.compile(r"^\s*(help|\?|commands)\s*$", re.I)),
    ("quit", re.compile(r"^\s*(quit|exit|bye|q)\s*$", re.I)),
    (
        "summary",
        re.compile(r"^\s*(summary|show|decision|what did (it|the agent) (decide|choose|pick))\??\s*$", re.I),
    ),
    (
        "node",
        re.compile(
            rf"^\s*(?:node|show|state of|what went (?:in(?:to)?|out of)|inputs? (?:of|to)|outputs? of)\s+"
            rf"(?:the\s+)?(?P<node>{NODE_PATTERN})(?:\s+node)?\s*\??\s*$",
            re.I,
        ),
    ),
    ("descriptors", re.compile(r"\bdescriptors?\s+(?:were|are|was|is|=|:|to be|of)\s+(?P<words>.+)$", re.I)),
    (
        "drop",
        re.compile(
            r"\b(?:drop|remove|without|exclude|discard)\s+(?:the\s+)?(?:candidate\s+)?(?P<who>.+)$", re.I
        ),
    ),
    ("clean_image", re.compile(r"\b(?:the\s+)?clean\s+(?:image|picture|photo)\b", re.I)),
    ("image", re.compile(r"\b(?:use|with)\s+(?:the\s+)?image\s+(?P<path>\S+)", re.I)),
    (
        "fusion",
        re.compile(
            r"^\s*(?:explain(?:\s+(?:the|this|it))?(?:\s+decision)?|distributions?|fusion|fused|probabilit(?:y|ies)"
            r"|confidence|how (?:was|were) (?:it|they) (?:fused|combined))\s*\??\s*$",
            re.I,
        ),
    ),
    (
        "lookups",
        re.compile(
            r"\b(?:what did (?:you|it|the agent) (?:look up|search|consult|call)|look-?ups?|tool calls?|consult(?:ed)?)\b",
            re.I,
        ),
    ),
    ("compare", re.compile(r"^\s*(?:compare|vs|versus)\s+(?P<who>.+)$", re.I)),
    ("evidence", re.compile(r"^\s*(?:evidence|sources?)\s+(?:for\s+|of\s+|about\s+)?(?P<who>.+)$", re.I)),
]


def split_words(text: str) -> list[str]:
    """Descriptor words from ``'rocket, launch'``, ``"rocket" and "launch"`` or ``rocket, launch?``."""
    text = text.strip().rstrip("?.!").strip()
    quoted = re.findall(r"['\"“‘]([^'\"”’]+)['\"”’]", text)
    body = ", ".join(quoted) if quoted else text
    parts = re.split(r"\s*(?:,|;|\band\b)\s*", body)
    return [p.strip(" '\"") for p in parts if p.strip(" '\"")]


def parse(line: str, values: dict[str, Any]) -> Intent:
    """The intent of one chat line about the decision ``values`` (a thread's final state)."""
    text = line.strip()
    for kind, pattern in COMMANDS:
        match = pattern.search(text)
        if match is None:
            continue
        if kind == "node":
            return Intent(kind, text, node=match.group("node").lower())
        if kind == "descriptors":
            return Intent(kind, text, words=split_words(match.group("words")))
        if kind == "image":
            return Intent(kind, text, path=match.group("path").strip("'\"?"))
        if kind in ("drop", "compare", "evidence"):
            who = resolve_candidates(values, match.group("who"))
            if kind == "drop" and not who:
                continue  # "without ..." in a question that names no candidate
            return Intent(kind, text, candidates=who)
        return Intent(kind, text)
    if re.match(r"^\s*why\b", text, re.I) or re.search(r"\b(not|rather than|instead of|over)\b", text, re.I):
        return Intent("why", text, candidates=resolve_candidates(values, text))
    return Intent("ask", text, candidates=resolve_candidates(values, text))
