"""Files a run writes and reads back: strict atomic JSON, torn-line-tolerant JSONL, folder identity.

Every JSON file the project writes is strict JSON (RFC 8259): a NaN or an infinity becomes
``null``, never the ``NaN`` token that Python's ``json`` emits by default and that browsers,
jq and Node's ``JSON.parse`` reject.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kb.errors import DatasetError


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (recursively)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict(item) for item in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``value`` (non-finite floats as null; ``allow_nan=False`` proves it)."""
    return json.dumps(strict(value), allow_nan=False, ensure_ascii=False, **kwargs)


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from strict JSON (tuples as lists, paths refused)."""
    return json.loads(dumps(value))


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented strict JSON, atomically (a reader never sees half a file)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The complete records of a JSONL file that a kill may have cut mid-line.

    Reading stops at the first line that is not a whole JSON object (cut mid-character
    included): that line and any after it are what the writer will redo. Blank lines are skipped.
    """
    if not path.is_file():
        return
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                return
            if not isinstance(record, dict):
                return
            yield record


def claim_folder(
    folder: Path,
    identity: dict[str, Any],
    file_name: str,
    *,
    holds: str = "a run with a different configuration",
    flag_hint: str = "--out",
) -> None:
    """Create ``folder`` holding ``file_name`` = ``identity``, or refuse one made differently.

    One guard for every resumable output folder (an eval run's ``config.json``, an attack
    folder's ``attack.json``): resuming into a folder written with other settings would mix two
    runs' results, so the error says what the folder ``holds``, names the differing keys and the
    file, and says to choose another folder (``flag_hint``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    wanted = jsonable(identity)
    if not path.is_file():
        write_json(path, wanted)
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(
            f"{path} is not valid JSON ({exc}); choose another {flag_hint} or delete it"
        ) from exc
    if previous != wanted:
        keys = set(previous) | set(wanted) if isinstance(previous, dict) else set(wanted)
        differ = sorted(k for k in keys if not isinstance(previous, dict) or previous.get(k) != wanted.get(k))
        raise DatasetError(
            f"{folder} holds {holds} (differs in {', '.join(differ)}; "
            f"see {path}); choose another {flag_hint} or delete that folder"
        )
