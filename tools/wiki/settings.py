"""How the wiki tools reach Wikipedia and Wikidata: one frozen settings object.

``mode`` is the one switch between the live APIs (``online``) and the local replica built
from the dataset KB and the Vital Articles summaries (``offline``, the default: this
project's machines have no internet). Every other field tunes the online clients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kb.cache import cache_dir

MODES = ("online", "offline")
DEFAULT_USER_AGENT = (
    "melrobust/0.1 (multimodal entity linking research; set MEL_WIKI_USER_AGENT to add your contact)"
)
"""Wikimedia's User-Agent policy asks for a tool name, version and contact; a deployment
names its contact (URL or e-mail) through ``MEL_WIKI_USER_AGENT``."""

_ENV = {
    "mode": "MEL_WIKI_MODE",
    "wikipedia_api": "MEL_WIKIPEDIA_API",
    "wikidata_api": "MEL_WIKIDATA_API",
    "timeout_s": "MEL_WIKI_TIMEOUT_S",
    "retries": "MEL_WIKI_RETRIES",
    "backoff_s": "MEL_WIKI_BACKOFF_S",
    "budget_s": "MEL_WIKI_BUDGET_S",
    "user_agent": "MEL_WIKI_USER_AGENT",
    "cache_dir": "MEL_WIKI_CACHE_DIR",
}


@dataclass(frozen=True)
class WikiSettings:
    """``timeout_s`` bounds one HTTP attempt, ``budget_s`` one call over all its attempts;
    ``retries`` is how many attempts may follow the first, spaced by exponential backoff from
    ``backoff_s`` with jitter, or by the server's ``Retry-After``. ``cache_dir`` holds the
    response cache (default ``$MEL_CACHE_DIR/wiki``)."""

    mode: str = "offline"
    wikipedia_api: str = "https://en.wikipedia.org/w/api.php"
    wikidata_api: str = "https://www.wikidata.org/w/api.php"
    timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 0.5
    budget_s: float = 30.0
    user_agent: str = DEFAULT_USER_AGENT
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"wiki mode must be one of {MODES}, got {self.mode!r}")
        if self.timeout_s <= 0 or self.budget_s <= 0 or self.backoff_s < 0 or self.retries < 0:
            raise ValueError(
                "wiki timeout_s and budget_s must be positive, backoff_s and retries not negative; got "
                f"{self.timeout_s}, {self.budget_s}, {self.backoff_s}, {self.retries}"
            )

    @classmethod
    def from_env(cls, **overrides: Any) -> WikiSettings:
        """Defaults, then ``MEL_WIKI_*`` / ``MEL_WIKIPEDIA_API`` / ``MEL_WIKIDATA_API``, then
        ``overrides`` (an override of ``None`` keeps the environment's value)."""
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, variable in _ENV.items():
            raw = os.environ.get(variable)
            if raw:
                values[name] = _parse(kinds[name], raw, variable)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)

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


def _parse(kind: str, raw: str, variable: str) -> Any:
    try:
        if kind == "float":
            return float(raw)
        if kind == "int":
            return int(raw)
    except ValueError as exc:
        raise ValueError(f"{variable}={raw!r} is not a number") from exc
    return Path(raw) if kind.startswith("Path") else raw
