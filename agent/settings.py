"""One typed settings object for the agent: defaults < environment (``MEL_*``) < arguments.

The graph reads it from LangGraph's ``RunnableConfig`` (``configurable["settings"]``), so a
thread replayed later runs with the settings it was started with unless told otherwise.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kb.cache import cache_dir
from tools.llm import LLMSettings
from tools.wiki import WikiSettings

JUDGE_TEMPERATURE_SEED = 0.75
"""The temperature of paper 000's MLLMs ("Implementation Details"); evaluation defaults to 0."""


@dataclass(frozen=True)
class AgentSettings:
    """What the agent uses and how it routes.

    ``skip_judge_margin``: when set, the judge is skipped if the pre-ranker's top-1 softmax
    probability exceeds the runner-up's by at least this much (off by default in evaluation,
    so every decision is the LLM's). ``judge_top_k``: how many pre-ranked candidates the judge
    sees, each description cut to ``judge_description_words`` words (the prompt is what the
    embedded judge spends its time reading; paper 000 gives no length). ``task``: ``i2t`` (image only) or ``it2t`` (image + caption), paper 000's two tasks.
    """

    scorer: str = "tagger"
    task: str = "it2t"
    judge_top_k: int = 5
    judge_description_words: int = 12
    skip_judge_margin: float | None = None
    descriptors: int = 5
    ocr: bool = True
    evidence_chars: int = 600
    llm: LLMSettings = field(default_factory=LLMSettings)
    vlm: LLMSettings | None = None
    wiki: WikiSettings = field(default_factory=WikiSettings)
    checkpoint_db: Path = field(default_factory=lambda: cache_dir("agent") / "checkpoints.sqlite")

    @classmethod
    def from_env(cls, **overrides: Any) -> AgentSettings:
        """Defaults, then ``MEL_AGENT_*``/``MEL_LLM_*``/``MEL_VLM_*``/``MEL_WIKI_*``, then ``overrides``."""
        env: dict[str, Any] = {}
        if value := os.environ.get("MEL_AGENT_SCORER"):
            env["scorer"] = value
        if value := os.environ.get("MEL_AGENT_TASK"):
            env["task"] = value
        if value := os.environ.get("MEL_AGENT_SKIP_JUDGE_MARGIN"):
            env["skip_judge_margin"] = float(value)
        if value := os.environ.get("MEL_AGENT_DB"):
            env["checkpoint_db"] = Path(value)
        vlm = LLMSettings.from_env(prefix="MEL_VLM")
        settings = cls(
            llm=LLMSettings.from_env(),
            vlm=vlm if vlm.base_url else None,
            wiki=WikiSettings.from_env(),
            **env,
        )
        return replace(settings, **overrides)

    def __post_init__(self) -> None:
        if self.task not in ("i2t", "it2t"):
            raise ValueError(f"agent task must be i2t or it2t (the paper's image tasks), got {self.task!r}")
        if self.judge_top_k < 1:
            raise ValueError(f"judge_top_k must be at least 1, got {self.judge_top_k}")

    def to_json(self) -> dict[str, Any]:
        """What a trace records of the settings (no API keys)."""
        record = asdict(self)
        for key in ("llm", "vlm"):
            if record.get(key):
                record[key]["api_key"] = "***" if record[key].get("api_key") else None
        record["wiki"]["cache_dir"] = str(record["wiki"].get("cache_dir"))
        record["checkpoint_db"] = str(self.checkpoint_db)
        return record
