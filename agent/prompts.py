"""The agent's LLM prompts: paper 000's judge questions verbatim, and the enrich prompt.

Paper 000 ("Tasks & Evaluation") gives the MLLM questions for I2T and IT2T; they are used
word for word (``JUDGE_QUESTION``). The paper shows no prompt for stage 2 (writing a
candidate's sentence-level description from retrieved evidence): ``enrich_messages`` is our
interpretation, versioned by ``ENRICH_PROMPT_VERSION`` so stored descriptions written with an
older prompt are never reused. A text-only LLM cannot see the image, so the image reaches it
as the describer's word-level descriptors (stage 1); a VLM judge also gets the pixels.

With ``spotlight`` on (``AgentSettings.spotlight``, the default), retrieved text (evidence for
the writer, written descriptions for the judge) is fenced and datamarked (``agent.spotlight``)
and the system line says that marked text carries no instructions; with it off, the prompts are
the earlier plain ones, word for word (``enrich-v1``). The judge's question is the paper's in
both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.spotlight import SPOTLIGHT_SYSTEM, fence

JUDGE_QUESTION = {
    "i2t": "Which candidate best describes the main object in this image? \n Answer with the index of the candidate.",
    "it2t": (
        "Please observe the image and understand the description. Which candidate best describes "
        "the main object in the image? \n Answer with the index of the candidate."
    ),
}

ENRICH_PROMPT_VERSIONS = {False: "enrich-v1", True: "enrich-v2-spotlight"}
"""The writer's prompt version with spotlighting off and on (stored descriptions are keyed by it)."""
ENRICH_PROMPT_VERSION = ENRICH_PROMPT_VERSIONS[True]
ENRICH_SYSTEM = (
    "You write short encyclopedic descriptions of entities for an entity-linking system. "
    "Use only the evidence given. Answer with one sentence."
)


def enrich_messages(
    label: str, qid: str, evidence: Sequence[str], spotlight: bool = True
) -> list[dict[str, Any]]:
    """Ask for one sentence saying what the entity is and what it looks like (evidence fenced and
    datamarked when ``spotlight``)."""
    lines = (
        "\n".join(f"- {fence(text) if spotlight else text}" for text in evidence) or "- (no evidence found)"
    )
    user = (
        f"Entity: {label} ({qid})\nEvidence:\n{lines}\n\n"
        f"Write one sentence (at most 40 words) saying what {label} is and what it typically looks like."
    )
    system = (
        f"{ENRICH_SYSTEM} {SPOTLIGHT_SYSTEM} Write your sentence in plain words, without the marker."
        if spotlight
        else ENRICH_SYSTEM
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


JUDGE_SYSTEM = "You answer multiple-choice questions with the number of one candidate and nothing else."
"""Ours, not the paper's: a small text-only judge otherwise starts a sentence and runs out of
tokens before the index (seen with the embedded 1.5B model on WikiMEL). The paper's question
itself is unchanged."""


def judge_messages(
    task: str,
    candidates: Sequence[tuple[str, str]],
    descriptors: Sequence[str],
    sentence: str,
    mention: str,
    image_part: dict[str, Any] | None = None,
    spotlight: bool = True,
    found: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The judge's chat: the image (pixels for a VLM, else descriptors), numbered candidates from 1
    (a description, when there is one, fenced and datamarked with ``spotlight``), the caption
    for IT2T, what the consult step looked up (``found``, fenced and datamarked likewise), then
    the paper's question. A candidate without a description is its label alone (the MLLM
    baseline, ``agent.mllm``)."""
    listed = "\n".join(
        f"{i}. {label}: {fence(description) if spotlight else description}"
        if description
        else f"{i}. {label}"
        for i, (label, description) in enumerate(candidates, 1)
    )
    marked = spotlight and (any(description for _, description in candidates) or bool(found))
    words = ", ".join(descriptors) or "(nothing recognised)"
    image_line = "Image: see the attached image." if image_part else f"Image (seen as words): {words}"
    parts = [image_line]
    if task == "it2t":
        parts.append(f'Description: "{sentence}" (the entity mentioned is "{mention}")')
    parts.append(f"Candidates:\n{listed}")
    if found:
        parts.append("Looked up:\n" + "\n".join(f"- {fence(t) if spotlight else t}" for t in found))
    parts.append(JUDGE_QUESTION[task])
    text = "\n\n".join(parts)
    content: Any = [image_part, {"type": "text", "text": text}] if image_part else text
    system = f"{JUDGE_SYSTEM} {SPOTLIGHT_SYSTEM}" if marked else JUDGE_SYSTEM
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]
