"""What an ``eval.run`` is: one frozen config, and what of it pins an output folder.

``identity()`` is written to ``<out>/config.json`` and must match for a folder to be resumed,
so everything that changes a result is in it, the agent's LLM and judge settings included:
resuming an agent run after changing ``MEL_LLM_MODEL`` is refused rather than mixing two
models' decisions in one ``items.jsonl``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kb.runcore.items import file_digest
from kb.runcore.selection import DEFAULT_SPLIT

PIPELINES = ("prerank", "agent", "mllm")
LLM_PIPELINES = ("agent", "mllm")
"""Pipelines whose results depend on an LLM, which ``config.json`` therefore pins."""
ATTACK_FIELDS = ("attack", "adv_dir", "adv_format", "presets_file")
NOT_IDENTITY = ("batch_size", "agent_flags", "concurrency")
"""Fields that change how a run is computed, not what it computes (the agent's flags change
its results, but they are pinned through the settings they make: ``agent``)."""
FULL_KB_ABOVE = 100
"""λ above this (or ``all``) ranks against the KB matrix and stores the top k (``eval.full_kb``)."""
FULL_KB_FIELDS = ("keep_top", "kb_index")


@dataclass(frozen=True)
class RunConfig:
    dataset: str
    split: str = DEFAULT_SPLIT
    task: str = "it2t"
    scorer: str = "tagger"
    candidates: int | None = 10
    seeds: tuple[int, ...] = (0,)
    limit: int | None = None
    checkpoint: str | None = None
    data_dir: str | None = None
    pipeline: str = "prerank"
    with_images: bool = False
    batch_size: int = 64
    attack: str | None = None  # preset name, comma list or "all": replay after the clean run
    adv_dir: str = "ADV-MEL"
    adv_format: str = "png"
    presets_file: str | None = None  # custom presets file (attacks.presets.load_presets)
    agent: dict[str, Any] | None = None  # the agent's pinned LLM/VLM/judge settings (AgentPipeline)
    keep_top: int = 100  # full-KB item lines keep the top k (0: all) plus the gold (eval.full_kb)
    kb_index: str = "auto"  # full-KB ranking: exact matrix, approximate HNSW, or auto by KB size
    agent_flags: dict[str, Any] | None = None  # --llm-* etc. (kb.cli_args.LLM_FLAGS); pinned via ``agent``
    concurrency: int | None = None  # agent decisions at once (None: by backend); never changes results

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ValueError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed, e.g. --seeds 0 or --seeds 0,1,2")

    def identity(self) -> dict[str, Any]:
        """What must match for an existing output folder to be resumed.

        A clean run leaves the attack fields out, and a prerank run the agent's, so folders
        written before those fields existed still resume.
        """
        identity = {k: v for k, v in asdict(self).items() if k not in NOT_IDENTITY}
        if self.attack is None:
            for key in ATTACK_FIELDS:
                identity.pop(key)
        if self.agent is None:
            identity.pop("agent")
        if self.candidates is not None and self.candidates <= FULL_KB_ABOVE:
            for key in FULL_KB_FIELDS:  # λ-candidate runs store everything: these change nothing
                identity.pop(key)
        return identity


def scorer_identity(name: str, checkpoint: str | None) -> str:
    """The scorer as the score cache keys it: a checkpoint is named by its content."""
    return f"{name}@{file_digest(Path(checkpoint))[:16]}" if checkpoint else name


def default_out(config: RunConfig) -> Path:
    safe_scorer = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in config.scorer)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{config.dataset}-{config.task}-{safe_scorer}-{os.getpid()}"
