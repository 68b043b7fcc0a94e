"""The scorer-family table: one frozen row per name prefix, and the dispatch that reads it.

A scorer's name is ``<prefix>:<model>`` (``clip:openai/clip-vit-base-patch32``,
``openclip:ViT-B-32/laion2b_s34b_b79k``), or a bare prefix for families that need no model
after it (``tagger``, ``tagger+ocr``, ``mcr``). Everything known about a family before any of
its code is imported lives in its ``ScorerFamily`` row:

* ``factory``: ``factory(name, **kwargs) -> Scorer``, a callable or a lazy ``"module:function"``
  string, so listing a family costs no import until it is used;
* ``tasks``: the tasks its scorers accept (``Scorer.supported_tasks``);
* ``template``: its candidate text around an entity label (``template_for``; paper 000's
  "a photo of <label>", MCR's bare label);
* ``bare``: whether the prefix alone names a scorer.

The built-in rows are written out below and nothing changes them at import. To add a family:
subclass ``base.Scorer`` and either add its row here or call ``register_scorer`` at run time.
This module imports nothing heavy (no torch), so ``template_for`` and ``available_scorers``
are cheap for callers that never load a model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from tools.scorers.base import Scorer

Task = Literal["i2t", "it2t", "t2t"]
TASKS: tuple[Task, ...] = get_args(Task)

PROMPT_TEMPLATE = "a photo of {}"
"""Candidate text of paper 000: 'we construct all candidates in the format of "a photo of <candidate>"'."""

ScorerFactory = Callable[..., "Scorer"]


@dataclass(frozen=True)
class ScorerFamily:
    """One scorer family: its name prefix, how to build it and what is known before building it."""

    prefix: str
    factory: ScorerFactory | str
    """``factory(name, **kwargs)`` returning a ``Scorer``, or a lazy ``"module:function"``."""
    tasks: tuple[Task, ...] = TASKS
    template: str = PROMPT_TEMPLATE
    bare: bool = False
    """Whether the prefix alone (``tagger``, ``tagger+ocr``, ``mcr``) names a scorer."""

    def __post_init__(self) -> None:
        if not self.prefix or ":" in self.prefix or "+" in self.prefix:
            raise ValueError(f"a scorer prefix is a non-empty word without ':' or '+', got {self.prefix!r}")
        unknown = [task for task in self.tasks if task not in TASKS]
        if not self.tasks or unknown:
            raise ValueError(f"family {self.prefix!r}: tasks must be a non-empty subset of {TASKS}")
        if isinstance(self.factory, str) and not _is_lazy_reference(self.factory):
            raise ValueError(
                f"family {self.prefix!r}: a lazy factory is 'module:function', got {self.factory!r}"
            )

    def resolve(self) -> ScorerFactory:
        """The factory callable (imports its module the first time a lazy one is used)."""
        if callable(self.factory):
            return self.factory
        module, _, attribute = self.factory.partition(":")
        return getattr(importlib.import_module(module), attribute)


def _is_lazy_reference(reference: str) -> bool:
    module, sep, attribute = reference.partition(":")
    return bool(sep and module and attribute)


_DUAL_ENCODER = "tools.scorers.clip_family:load_dual_encoder"

FAMILIES: dict[str, ScorerFamily] = {
    row.prefix: row
    for row in (
        # Dual encoders (tools/scorers/clip_family.py): one text encoder shared by context and
        # candidates, so all three tasks are defined.
        ScorerFamily("clip", _DUAL_ENCODER),
        ScorerFamily("siglip", _DUAL_ENCODER),
        ScorerFamily("align", _DUAL_ENCODER),
        ScorerFamily("blip", _DUAL_ENCODER),
        ScorerFamily("flava", _DUAL_ENCODER),
        ScorerFamily("owlvit", _DUAL_ENCODER),
        ScorerFamily("chineseclip", _DUAL_ENCODER),
        ScorerFamily("openclip", _DUAL_ENCODER),
        # The offline image tagger: tagger, tagger:e5, tagger+ocr, tagger:e5+ocr.
        ScorerFamily("tagger", "tools.scorers.tagger:load_tagger", bare=True),
        # MCR (paper 003) reads bare entity labels; its visual branch adds paper 000's prompt itself.
        ScorerFamily("mcr", "tools.scorers.mcr:load_mcr", template="{}", bare=True),
    )
}
"""Name prefix -> its row. ``register_scorer`` adds rows at run time; nothing edits it at import."""


def family_of(scorer_name: str) -> str:
    """The prefix a scorer name dispatches on: before the first ':' and any '+option'."""
    return scorer_name.partition(":")[0].partition("+")[0]


def supported_tasks(prefix: str) -> tuple[Task, ...]:
    """The tasks a family's scorers accept; NotImplementedError for a family without a row."""
    row = FAMILIES.get(prefix)
    if row is None:
        raise NotImplementedError(
            f"scorer family {prefix!r} has no row in the family table (tools.scorers.families)"
        )
    return row.tasks


def template_for(scorer_name: str) -> str:
    """The candidate-text template of a scorer, known from its name before it is loaded."""
    row = FAMILIES.get(family_of(scorer_name))
    return row.template if row is not None else PROMPT_TEMPLATE


def candidate_prompt(label: str, template: str = PROMPT_TEMPLATE) -> str:
    """The text a scorer compares against: the paper's prompt around an entity label."""
    return template.format(label)


def register_scorer(
    prefix: str,
    factory: ScorerFactory | str,
    *,
    replace: bool = False,
    tasks: tuple[Task, ...] = TASKS,
    template: str = PROMPT_TEMPLATE,
    bare: bool = False,
) -> ScorerFamily:
    """Add a family row: ``load_scorer("<prefix>:...")`` then calls ``factory(name, **kwargs)``."""
    row = ScorerFamily(prefix, factory, tasks=tuple(tasks), template=template, bare=bare)
    if prefix in FAMILIES and not replace:
        raise ValueError(f"scorer prefix {prefix!r} is already registered")
    FAMILIES[prefix] = row
    return row


def available_scorers() -> list[str]:
    """Every registered prefix, sorted."""
    return sorted(FAMILIES)


def load_scorer(name: str, **kwargs: Any) -> Scorer:
    """The scorer a name denotes, e.g. ``clip:DIR``, ``openclip:ViT-B-32/laion2b_s34b_b79k``.

    Keyword arguments go to the factory (``task=``, ``device=``, ``text_cache=``, ...).
    Raises ``tools.hub.ModelUnavailable`` when the weights are not available here.
    """
    _, sep, _ = name.partition(":")
    row = FAMILIES.get(family_of(name))
    if row is None or (not sep and not row.bare):
        raise ValueError(
            f"unknown scorer {name!r}: expected <prefix>:<model>, prefix one of {available_scorers()}"
        )
    return row.resolve()(name, **kwargs)
