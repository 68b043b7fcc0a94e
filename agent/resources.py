"""What the nodes use, loaded lazily and once per process: scorer, LLM, VLM, describer,
wiki client, candidate store. Kept out of the graph state (which must be plain JSON).

One ``Resources`` serves one knowledge base (its entities feed the offline wiki replica);
``resources_for`` hands back the same object for the same settings and KB, so a run over
many mentions loads every model once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import torch

from agent.candidate_store import CandidateStore
from agent.settings import AgentSettings
from agent.state import ImageRef
from kb.images import load_pixels as read_pixels
from kb.records import Entity


class Resources:
    """Lazy holders; a property is loaded the first time a node needs it."""

    def __init__(self, settings: AgentSettings, entities: Mapping[str, Entity]) -> None:
        self.settings = settings
        self.entities = entities
        self._lock = threading.Lock()

    @cached_property
    def scorer(self) -> torch.nn.Module:
        from tools.scorers import load_scorer

        return load_scorer(self.settings.scorer, task=self.settings.task).eval()

    @cached_property
    def llm(self) -> Any:
        from tools.llm import chat_model

        return chat_model(self.settings.llm)

    @cached_property
    def vlm(self) -> Any | None:
        from tools.llm import chat_model

        return chat_model(self.settings.vlm) if self.settings.vlm else None

    @cached_property
    def describer(self) -> Any:
        from tools.describer import make_describer

        return make_describer(self.settings.vlm, top_k=self.settings.descriptors, ocr=self.settings.ocr)

    @cached_property
    def wiki(self) -> Any:
        from tools.wiki import make_wiki_client

        # Online: no replica here, so a failure reaches the node, which records the fallback.
        online = self.settings.wiki.mode == "online"
        return make_wiki_client(self.settings.wiki, replica=None if online else self.replica)

    @cached_property
    def replica(self) -> Any:
        """The offline replica: the online client also falls back to it when the network fails."""
        from tools.wiki import OfflineReplica

        return OfflineReplica.build(self.entities)

    @cached_property
    def offline_wiki(self) -> Any:
        from tools.wiki import make_wiki_client

        return make_wiki_client(self.settings.wiki.replace(mode="offline"), replica=self.replica)

    @cached_property
    def store(self) -> CandidateStore:
        from tools import registry

        return CandidateStore(registry.get("minilm"))


def load_pixels(image: ImageRef) -> torch.Tensor:
    """(3, H, W) float in [0, 1] of a thread's image reference, through ``kb.images.load_pixels``
    (a ``.pt`` is an exact adversarial tensor, a picture file is cropped to the mention's box)."""
    bbox = tuple(image["bbox"]) if image.get("bbox") else None
    return read_pixels(image["path"], bbox)


_SHARED: dict[tuple[int, str], Resources] = {}
_SHARED_LOCK = threading.Lock()


def resources_for(settings: AgentSettings, entities: Mapping[str, Entity], kb_name: str) -> Resources:
    """The process-wide ``Resources`` for these settings and this KB."""
    key = (hash(repr(settings)), kb_name)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Resources(settings, entities)
        return _SHARED[key]


def default_resources() -> Resources:
    """Resources from the environment alone, for a graph run without a context (``langgraph
    dev``): the KB of ``MEL_AGENT_DATASET`` (default the built-in ``demo``)."""
    import os

    from kb.dataset import load_dataset

    name = os.environ.get("MEL_AGENT_DATASET", "demo")
    dataset = load_dataset(name)
    return resources_for(AgentSettings.from_env(), dataset.entities, dataset.name)
