"""The on-disk response cache: one JSON file per (endpoint, parameters), written atomically.

A cached answer is used before the network, so a re-run of the agent asks the live APIs
nothing it has asked before. Only answers that parsed and had the expected shape are stored;
a file that cannot be read back (a half-copied cache, a hand edit) counts as a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ResponseCache:
    """``root/<2 hex>/<sha256>.json`` holding ``{"endpoint", "params", "response"}``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(endpoint: str, params: Mapping[str, str]) -> str:
        canonical = json.dumps([endpoint, sorted(params.items())], ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def path(self, endpoint: str, params: Mapping[str, str]) -> Path:
        key = self.key(endpoint, params)
        return self.root / key[:2] / f"{key}.json"

    def get(self, endpoint: str, params: Mapping[str, str]) -> dict[str, Any] | None:
        path = self.path(endpoint, params)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if (
            not isinstance(record, dict)
            or record.get("endpoint") != endpoint
            or record.get("params") != dict(sorted(params.items()))
            or not isinstance(record.get("response"), dict)
        ):
            return None
        return record["response"]

    def put(self, endpoint: str, params: Mapping[str, str], response: dict[str, Any]) -> None:
        """Write to a temp file in the same folder, then rename: readers never see half a file."""
        path = self.path(endpoint, params)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"endpoint": endpoint, "params": dict(sorted(params.items())), "response": response}
        handle = tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=".tmp-", suffix=".json", delete=False
        )
        try:
            with handle:
                json.dump(record, handle, ensure_ascii=False)
            os.replace(handle.name, path)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
