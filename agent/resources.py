"""What the nodes use, loaded lazily and once per process: scorer, LLM, VLM, describer,
wiki client, candidate store. Kept out of the graph state (which must be plain JSON).

One ``Resources`` serves one knowledge base (its entities feed the offline wiki replica);
``resources_for`` hands back the same object for the same settings and KB, so a run over
many mentions loads every model once. Decisions run concurrently (``agent.link --concurrency``)
share one ``Resources``: each holder is loaded once under the instance's lock, even when several
threads ask for it at the same moment, and what is loaded is safe to share (torch modules in
inference, onnxruntime sessions, the embedded LLM behind its own lock, an HTTP client, Chroma).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import torch

from agent.candidate_store import CandidateStore
from agent.settings import AgentSettings
from agent.state import ImageRef
from kb.images import load_pixels as read_pixels
from kb.records import Entity


class loaded_once:
    """``functools.cached_property`` whose first computation holds the instance's ``_lock``, so
    concurrent first uses load a model once (Python 3.12 dropped cached_property's own lock).
    Assigning the attribute (a test's private store) replaces the value, as with cached_property."""

    def __init__(self, load: Any) -> None:
        self.load = load
        self.name = load.__name__
        self.__doc__ = load.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        with instance._lock:
            if self.name not in instance.__dict__:
                instance.__dict__[self.name] = self.load(instance)
        return instance.__dict__[self.name]


class Resources:
    """Lazy holders; a property is loaded the first time a node needs it."""

    def __init__(self, settings: AgentSettings, entities: Mapping[str, Entity]) -> None:
        self.settings = settings
        self.entities = entities
        self._lock = threading.RLock()  # re-entrant: ``wiki`` loads ``replica``

    @loaded_once
    def scorer(self) -> torch.nn.Module:
        from tools.scorers import load_scorer

        return load_scorer(self.settings.scorer, task=self.settings.task).eval()

    @loaded_once
    def llm(self) -> Any:
        from tools.llm import chat_model

        return chat_model(self.settings.llm)

    @loaded_once
    def vlm(self) -> Any | None:
        from tools.llm import chat_model

        return chat_model(self.settings.vlm) if self.settings.vlm else None

    @loaded_once
    def describer(self) -> Any:
        from tools.describer import make_describer

        return make_describer(self.settings.vlm, top_k=self.settings.descriptors, ocr=self.settings.ocr)

    @loaded_once
    def wiki(self) -> Any:
        from tools.wiki import make_wiki_client

        # Online: no replica here, so a failure reaches the node, which records the fallback.
        online = self.settings.wiki.mode == "online"
        return make_wiki_client(self.settings.wiki, replica=None if online else self.replica)

    @loaded_once
    def replica(self) -> Any:
        """The offline replica: the online client also falls back to it when the network fails."""
        from tools.wiki import OfflineReplica

        return OfflineReplica.build(self.entities)

    @loaded_once
    def offline_wiki(self) -> Any:
        from tools.wiki import make_wiki_client

        return make_wiki_client(self.settings.wiki.replace(mode="offline"), replica=self.replica)

    @loaded_once
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


_DATASETS: dict[str, Any] = {}


def default_resources(dataset: str | None = None) -> Resources:
    """Resources from the environment alone, for a graph run whose context carries none (``langgraph
    dev``): ``AgentSettings.from_env()`` (``MEL_LLM_*``, ``MEL_AGENT_*``, ...) on the KB of
    ``dataset``, else ``$MEL_AGENT_DATASET``, else the built-in ``demo``. The dataset is loaded once
    per process and the resources are ``resources_for``'s shared ones."""
    import os

    from kb.dataset import load_dataset

    name = dataset or os.environ.get("MEL_AGENT_DATASET") or "demo"
    with _SHARED_LOCK:
        if name not in _DATASETS:
            _DATASETS[name] = load_dataset(name)
        loaded = _DATASETS[name]
    return resources_for(AgentSettings.from_env(), loaded.entities, loaded.name)
