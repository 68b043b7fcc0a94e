"""``python -m tools.models``: the built-in models and whether each is available here.

``--json`` prints the rows as JSON; ``--load [NAME ...]`` also loads each model (built-ins by
default, or any registry name) and reports the seconds it took or why it failed, so "available"
can be checked for real. Exit status 1 when a loaded model failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from tools import registry


def _load_row(name: str) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        model = registry.get(name)
    except Exception as exc:  # reported per model; the run goes on
        return {"name": name, "loaded": False, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "name": name,
        "loaded": True,
        "seconds": round(time.perf_counter() - start, 2),
        "type": type(model).__name__,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.models", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--load", nargs="*", metavar="NAME", help="load these models (default: all built-ins)"
    )
    args = parser.parse_args(argv)
    if args.load is None:
        rows = registry.describe()
    else:
        rows = [_load_row(name) for name in args.load or registry.names()]
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    if args.load is None and not args.json:
        print("\nother models: hf:<id or dir>, openclip:<arch>/<tag or weights file>, or a local path")
    return 0 if all(row.get("loaded", True) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
