"""How the wiki tools reach Wikipedia and Wikidata: one frozen settings object (pydantic-settings).

``mode`` is the one switch between the live APIs (``online``) and the local replica built
from the dataset KB and the Vital Articles summaries (``offline``, the default: this
project's machines have no internet). Every other field tunes the online clients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from kb.cache import cache_dir
from tools.llm.base import MelSettings, env

MODES = ("online", "offline")
DEFAULT_USER_AGENT = (
    "melrobust/0.1 (multimodal entity linking research; set MEL_WIKI_USER_AGENT to add your contact)"
)
"""Wikimedia's User-Agent policy asks for a tool name, version and contact; a deployment
names its contact (URL or e-mail) through ``MEL_WIKI_USER_AGENT``."""


class WikiSettings(MelSettings):
    """``timeout_s`` bounds one HTTP attempt, ``budget_s`` one call over all its attempts;
    ``retries`` is how many attempts may follow the first, spaced by exponential backoff from
    ``backoff_s`` with jitter, or by the server's ``Retry-After``. ``cache_dir`` holds the
    response cache (default ``$MEL_CACHE_DIR/wiki``). Read from ``MEL_WIKI_<FIELD>``, except the
    two endpoints: ``MEL_WIKIPEDIA_API`` and ``MEL_WIKIDATA_API``."""

    model_config = SettingsConfigDict(env_prefix="MEL_WIKI_")

    mode: Literal["online", "offline"] = "offline"
    wikipedia_api: str = Field(
        default="https://en.wikipedia.org/w/api.php", json_schema_extra=env("MEL_WIKIPEDIA_API")
    )
    wikidata_api: str = Field(
        default="https://www.wikidata.org/w/api.php", json_schema_extra=env("MEL_WIKIDATA_API")
    )
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=3, ge=0)
    backoff_s: float = Field(default=0.5, ge=0)
    budget_s: float = Field(default=30.0, gt=0)
    user_agent: str = DEFAULT_USER_AGENT
    cache_dir: Path | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> WikiSettings:
        """Defaults, then ``MEL_WIKI_*`` / ``MEL_WIKIPEDIA_API`` / ``MEL_WIKIDATA_API``, then
        ``overrides`` (an override of ``None`` keeps the environment's value)."""
        unknown = set(overrides) - set(cls.model_fields)
        if unknown:
            raise TypeError(f"unknown wiki settings: {sorted(unknown)}")
        return cls._from_environment({k: v for k, v in overrides.items() if v is not None})

    def identity(self) -> dict[str, Any]:
        """What of these settings changes the evidence (for a run's ``config.json``): the mode, and
        online the two endpoints; not timeouts, retries, the User-Agent or the cache."""
        if self.mode == "offline":
            return {"mode": self.mode}
        return {"mode": self.mode, "wikipedia_api": self.wikipedia_api, "wikidata_api": self.wikidata_api}

    def response_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else cache_dir("wiki")

    def wikipedia_url(self, title: str) -> str:
        """The article's page URL on the wiki that serves ``wikipedia_api``."""
        return _site(self.wikipedia_api) + quote(title.replace(" ", "_"), safe="/:(),'!")

    def wikidata_url(self, qid: str) -> str:
        return _site(self.wikidata_api) + qid


def _site(api: str) -> str:
    """``https://en.wikipedia.org/w/api.php`` -> ``https://en.wikipedia.org/wiki/``."""
    base = api.rsplit("/w/api.php", 1)[0] if api.endswith("/w/api.php") else api.rsplit("/", 1)[0]
    return base + "/wiki/"
