"""Scorers: (images, context texts, candidate texts) -> logits (B, n), by model name.

``load_scorer("clip:openai/clip-vit-base-patch32", task="it2t")`` dispatches on the prefix
before the first colon through ``SCORER_FACTORIES``. A factory is ``factory(name, **kwargs)``
returning a ``Scorer``; the registry holds either the callable or a lazy ``"module:function"``
string, so registering a family costs no import until it is used. To add a family (the image
tagger, MCR): subclass ``base.Scorer``, add its row to ``base.SUPPORTED_TASKS``, and add
``"prefix": "tools.scorers.<module>:<factory>"`` below (or call ``register_scorer``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from tools.scorers.base import (
    PROMPT_TEMPLATE,
    SUPPORTED_TASKS,
    TASKS,
    PixelPreprocess,
    Scorer,
    Task,
    candidate_prompt,
)

ScorerFactory = Callable[..., Scorer]

_DUAL_ENCODER = "tools.scorers.clip_family:load_dual_encoder"

SCORER_FACTORIES: dict[str, ScorerFactory | str] = {
    "clip": _DUAL_ENCODER,
    "siglip": _DUAL_ENCODER,
    "align": _DUAL_ENCODER,
    "blip": _DUAL_ENCODER,
    "flava": _DUAL_ENCODER,
    "owlvit": _DUAL_ENCODER,
    "chineseclip": _DUAL_ENCODER,
    "openclip": _DUAL_ENCODER,
    "tagger": "tools.scorers.tagger:load_tagger",
    "mcr": "tools.scorers.mcr:load_mcr",
}
"""Name prefix -> factory (callable or lazy "module:function")."""

BARE_NAMES = frozenset({"tagger", "mcr"})
"""Built-in scorers that need no model after the prefix (``tagger``, ``tagger+ocr``, ``mcr``)."""


def register_scorer(prefix: str, factory: ScorerFactory | str, *, replace: bool = False) -> None:
    """Make ``load_scorer("<prefix>:...")`` call ``factory(name, **kwargs)``."""
    if ":" in prefix or not prefix:
        raise ValueError(f"a scorer prefix is a non-empty word without ':', got {prefix!r}")
    if prefix in SCORER_FACTORIES and not replace:
        raise ValueError(f"scorer prefix {prefix!r} is already registered")
    SCORER_FACTORIES[prefix] = factory


def available_scorers() -> list[str]:
    return sorted(SCORER_FACTORIES)


def _resolve(factory: ScorerFactory | str) -> ScorerFactory:
    if callable(factory):
        return factory
    module, _, attribute = factory.partition(":")
    return getattr(importlib.import_module(module), attribute)


def load_scorer(name: str, **kwargs: Any) -> Scorer:
    """The scorer a name denotes, e.g. ``clip:DIR``, ``openclip:ViT-B-32/laion2b_s34b_b79k``.

    Keyword arguments go to the factory (``task=``, ``device=``, ``text_cache=``, ...).
    Raises ``tools.hub.ModelUnavailable`` when the weights are not available here.
    """
    prefix, sep, _ = name.partition(":")
    prefix = prefix.partition("+")[0]
    if (not sep and prefix not in BARE_NAMES) or prefix not in SCORER_FACTORIES:
        raise ValueError(
            f"unknown scorer {name!r}: expected <prefix>:<model>, prefix one of {available_scorers()}"
        )
    return _resolve(SCORER_FACTORIES[prefix])(name, **kwargs)


__all__ = [
    "PROMPT_TEMPLATE",
    "SCORER_FACTORIES",
    "SUPPORTED_TASKS",
    "TASKS",
    "PixelPreprocess",
    "Scorer",
    "ScorerFactory",
    "Task",
    "available_scorers",
    "candidate_prompt",
    "load_scorer",
    "register_scorer",
]
