"""One typed settings object for the agent: defaults < environment (``MEL_*``) < arguments.

Built on the project's one settings layer (``tools.llm.base.MelSettings``, pydantic-settings;
the README's Settings table lists every variable). The graph gets it through ``Resources``
(the run context), so every node of a run sees the same settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from kb.cache import cache_dir
from tools.llm import LLMSettings
from tools.llm.base import MelSettings, env
from tools.wiki import WikiSettings

JUDGE_TEMPERATURE_SEED = 0.75
"""The temperature of paper 000's MLLMs ("Implementation Details"); evaluation defaults to 0."""


CONSULT_MARGIN = 0.0
"""``--consult``'s margin: consult when the pre-ranker's top-1 probability beats the runner-up's by
less than this. Chosen by ``eval.consult_margin`` with the embedded 1.5B judge on 40 WikiMEL train
photos (it2t, λ = 10; WikiMEL's test split has no photo, so dev is the report split): acc@1 was
65.0% at every margin and the gold's log-loss grew with every look-up, so the cheapest margin, 0
(consult nothing), won. Pass ``--consult-margin`` to consult anyway, or re-choose it for
another judge."""


class AgentSettings(MelSettings):
    """What the agent uses and how it routes.

    ``skip_judge_margin``: when set, the judge is skipped if the pre-ranker's top-1 softmax
    probability exceeds the runner-up's by at least this much (off by default in evaluation,
    so every decision is the LLM's). ``judge_top_k``: how many pre-ranked candidates the judge
    sees, each description cut to ``judge_description_words`` words (the prompt is what the
    embedded judge spends its time reading; paper 000 gives no length). ``task``: ``i2t`` (image only) or ``it2t`` (image + caption), paper 000's two tasks.
    ``judge_weight``: w of the log-linear fusion p ∝ p_pre^(1 − w) · p_judge^w (``agent.judge``;
    0: the pre-ranker alone, 1: the judge alone); ``agent.calibrate`` chooses it and
    ``skip_judge_margin`` on a dev split. ``judge_structured_choice``: also send vLLM's
    structured-output ``choice`` to an OpenAI-compatible judge (vLLM only; others may refuse it).
    ``spotlight``: fence and datamark retrieved text in the writer's and judge's prompts and
    screen written descriptions for instructions (``agent.spotlight``; off only to measure
    what the defence does). ``consult_margin``: when set, a decision whose pre-ranker margin is
    below it may call the look-up tools before the judge (``agent.consult``), at most
    ``consult_max_calls`` calls within ``consult_seconds``; off (None) by default.
    Read from ``MEL_AGENT_SCORER``, ``MEL_AGENT_TASK``, ``MEL_AGENT_SKIP_JUDGE_MARGIN``,
    ``MEL_AGENT_JUDGE_WEIGHT``, ``MEL_AGENT_JUDGE_STRUCTURED_CHOICE``, ``MEL_AGENT_SPOTLIGHT``, ``MEL_AGENT_CONSULT_MARGIN``,
    ``MEL_AGENT_CONSULT_MAX_CALLS``, ``MEL_AGENT_CONSULT_SECONDS`` and
    ``MEL_AGENT_DB`` (the checkpoint file); ``llm``, ``vlm`` and ``wiki`` from their own variables.
    """

    model_config = SettingsConfigDict(env_prefix="MEL_AGENT_")

    scorer: str = "tagger"
    task: Literal["i2t", "it2t"] = "it2t"
    judge_top_k: int = Field(default=5, ge=1, json_schema_extra=env(None))
    judge_description_words: int = Field(default=12, json_schema_extra=env(None))
    skip_judge_margin: float | None = None
    judge_weight: float = Field(default=0.5, ge=0.0, le=1.0)
    judge_structured_choice: bool = False
    spotlight: bool = True
    consult_margin: float | None = None
    consult_max_calls: int = Field(default=3, ge=1)
    consult_seconds: float = Field(default=60.0, gt=0)
    descriptors: int = Field(default=5, json_schema_extra=env(None))
    ocr: bool = Field(default=True, json_schema_extra=env(None))
    evidence_chars: int = Field(default=600, json_schema_extra=env(None))
    llm: LLMSettings = Field(default_factory=LLMSettings, json_schema_extra=env(None))
    vlm: LLMSettings | None = Field(default=None, json_schema_extra=env(None))
    wiki: WikiSettings = Field(default_factory=WikiSettings, json_schema_extra=env(None))
    checkpoint_db: Path = Field(
        default_factory=lambda: cache_dir("agent") / "checkpoints.sqlite",
        json_schema_extra=env("MEL_AGENT_DB"),
    )

    @classmethod
    def from_env(cls, **overrides: Any) -> AgentSettings:
        """Defaults, then ``MEL_AGENT_*``/``MEL_LLM_*``/``MEL_VLM_*``/``MEL_WIKI_*``, then ``overrides``
        (applied as given: ``skip_judge_margin=None`` or ``vlm=None`` turn those off)."""
        nested: dict[str, Any] = {}
        if "llm" not in overrides:
            nested["llm"] = LLMSettings.from_env()
        if "vlm" not in overrides:
            vlm = LLMSettings.from_env(prefix="MEL_VLM")
            nested["vlm"] = vlm if vlm.base_url else None
        if "wiki" not in overrides:
            nested["wiki"] = WikiSettings.from_env()
        return cls._from_environment({**nested, **overrides})

    @classmethod
    def from_flags(cls, flags: dict[str, Any], **overrides: Any) -> AgentSettings:
        """``from_env(**overrides)``, then the command-line flags of ``kb.cli_args.add_llm_arguments``
        (``llm_base_url``, ``llm_model``, ``llm_api_key``, ``temperature``, ``skip_judge_margin``,
        ``wiki``, ``consult``, ``consult_margin``, ``consult_calls``): an unset (None) flag keeps the
        environment's value or the default; ``consult`` alone turns the step on at ``CONSULT_MARGIN``."""
        if flags.get("skip_judge_margin") is not None:
            overrides["skip_judge_margin"] = flags["skip_judge_margin"]
        if flags.get("consult") or flags.get("consult_margin") is not None:
            margin = flags.get("consult_margin")
            overrides["consult_margin"] = CONSULT_MARGIN if margin is None else margin
        if flags.get("consult_calls") is not None:
            overrides["consult_max_calls"] = flags["consult_calls"]
        settings = cls.from_env(**overrides)
        llm = {
            field: flags.get(flag)
            for field, flag in (
                ("base_url", "llm_base_url"),
                ("model", "llm_model"),
                ("api_key", "llm_api_key"),
                ("temperature", "temperature"),
            )
            if flags.get(flag) is not None
        }
        if llm:
            settings = settings.replace(llm=settings.llm.replace(**llm))
        if flags.get("wiki"):
            settings = settings.replace(wiki=settings.wiki.replace(mode=flags["wiki"]))
        return settings

    def identity(self) -> dict[str, Any]:
        """What of these settings changes a decision, for a run's ``config.json`` to pin: the
        routing and describer fields (the judge's weight and margin, structured choice and
        spotlighting among them; the consult step's when it is on), the LLM's and VLM's ``identity()``
        and the wiki's; not
        timeouts, retries, API keys or where files are kept."""
        record = self.model_dump(exclude={"llm", "vlm", "wiki", "checkpoint_db"})
        if self.consult_margin is None:  # off: folders written before the consult step still resume
            for key in ("consult_margin", "consult_max_calls", "consult_seconds"):
                record.pop(key)
        record["llm"] = self.llm.identity()
        record["vlm"] = self.vlm.identity() if self.vlm else None
        record["wiki"] = self.wiki.identity()
        return record

    def to_json(self) -> dict[str, Any]:
        """What a trace records of the settings (no API keys)."""
        record = super().to_json()
        record["llm"] = self.llm.to_json()
        record["vlm"] = self.vlm.to_json() if self.vlm else None
        return record
