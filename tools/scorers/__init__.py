"""Scorers: (images, context texts, candidate texts) -> logits (B, n), by model name.

``load_scorer("clip:openai/clip-vit-base-patch32", task="it2t")`` dispatches on the prefix
before the first colon through the family table, ``tools.scorers.families.FAMILIES``: one
frozen ``ScorerFamily`` row per prefix holding its factory (a callable or a lazy
``"module:function"`` string, so registering a family costs no import until it is used), the
tasks it supports, its candidate-text template and whether the bare prefix names a scorer.
To add a family (the image tagger, MCR): subclass ``base.Scorer`` and add its row to
``families.FAMILIES`` (or call ``register_scorer``).
"""

from __future__ import annotations

from tools.scorers.base import PixelPreprocess, Scorer
from tools.scorers.families import (
    FAMILIES,
    PROMPT_TEMPLATE,
    TASKS,
    ScorerFactory,
    ScorerFamily,
    Task,
    available_scorers,
    candidate_prompt,
    load_scorer,
    register_scorer,
    template_for,
)

__all__ = [
    "FAMILIES",
    "PROMPT_TEMPLATE",
    "TASKS",
    "PixelPreprocess",
    "Scorer",
    "ScorerFactory",
    "ScorerFamily",
    "Task",
    "available_scorers",
    "candidate_prompt",
    "load_scorer",
    "register_scorer",
    "template_for",
]
