"""The agent's LLM prompts: paper 000's judge questions verbatim, and the enrich prompt.

Paper 000 ("Tasks & Evaluation") gives the MLLM questions for I2T and IT2T; they are used
word for word (``JUDGE_QUESTION``). The paper shows no prompt for stage 2 (writing a
candidate's sentence-level description from retrieved evidence): ``enrich_messages`` is our
interpretation, versioned by ``ENRICH_PROMPT_VERSION`` so stored descriptions written with an
older prompt are never reused. A text-only LLM cannot see the image, so the image reaches it
as the describer's word-level descriptors (stage 1); a VLM judge also gets the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

JUDGE_QUESTION = {
    "i2t": "Which candidate best describes the main object in this image? \n Answer with the index of the candidate.",
    "it2t": (
        "Please observe the image and understand the description. Which candidate best describes "
        "the main object in the image? \n Answer with the index of the candidate."
    ),
}

ENRICH_PROMPT_VERSION = "enrich-v1"
ENRICH_SYSTEM = (
    "You write short encyclopedic descriptions of entities for an entity-linking system. "
    "Use only the evidence given. Answer with one sentence."
)


def enrich_messages(label: str, qid: str, evidence: Sequence[str]) -> list[dict[str, Any]]:
    """Ask for one sentence saying what the entity is and what it looks like."""
    lines = "\n".join(f"- {text}" for text in evidence) or "- (no evidence found)"
    user = (
        f"Entity: {label} ({qid})\nEvidence:\n{lines}\n\n"
        f"Write one sentence (at most 40 words) saying what {label} is and what it typically looks like."
    )
    return [{"role": "system", "content": ENRICH_SYSTEM}, {"role": "user", "content": user}]


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
) -> list[dict[str, Any]]:
    """The judge's chat: the image (pixels for a VLM, else descriptors), numbered candidates from 1,
    the caption for IT2T, then the paper's question."""
    listed = "\n".join(f"{i}. {label}: {description}" for i, (label, description) in enumerate(candidates, 1))
    words = ", ".join(descriptors) or "(nothing recognised)"
    image_line = "Image: see the attached image." if image_part else f"Image (seen as words): {words}"
    parts = [image_line]
    if task == "it2t":
        parts.append(f'Description: "{sentence}" (the entity mentioned is "{mention}")')
    parts += [f"Candidates:\n{listed}", JUDGE_QUESTION[task]]
    text = "\n\n".join(parts)
    content: Any = [image_part, {"type": "text", "text": text}] if image_part else text
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}]
