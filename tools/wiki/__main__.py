"""``python -m tools.wiki search QUERY | get QID-or-TITLE ...``: wiki evidence as JSON.

``--mode`` overrides ``MEL_WIKI_MODE``; ``--dataset`` adds a dataset's KB entities to the
offline replica (and to the online mode's fallback).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kb.dataset import load_dataset
from kb.errors import DatasetError
from kb.loaders.common import QID_PATTERN
from tools.wiki.client import WikiClient, make_wiki_client
from tools.wiki.evidence import Evidence, WikiError
from tools.wiki.replica import OfflineReplica
from tools.wiki.settings import MODES, WikiSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.wiki", description=__doc__)
    parser.add_argument("command", choices=("search", "get"))
    parser.add_argument("terms", nargs="+", help="search: the query; get: QIDs and/or page titles")
    parser.add_argument("--mode", choices=MODES, default=None)
    parser.add_argument("--source", choices=("wikipedia", "wikidata", "both"), default="both")
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--dataset", default=None, help="a dataset whose KB feeds the offline replica")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    settings = WikiSettings.from_env(mode=args.mode)
    try:
        entities = load_dataset(args.dataset, args.data_dir).entities if args.dataset else {}
        replica = OfflineReplica.build(entities) if settings.mode == "offline" or args.dataset else None
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    client = make_wiki_client(settings, replica)
    try:
        results = _run(client, args)
    except WikiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    report = {"mode": client.mode, "results": results, "stats": client.stats.to_json()}
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def _run(client: WikiClient, args: argparse.Namespace) -> list[dict[str, Any]]:
    wikipedia = args.source in ("wikipedia", "both")
    wikidata = args.source in ("wikidata", "both")
    found: list[Evidence] = []
    if args.command == "search":
        query = " ".join(args.terms)
        if wikipedia:
            found += client.wikipedia_search(query, args.limit)
        if wikidata:
            found += client.wikidata_search(query, args.limit)
    else:
        qids = [t for t in args.terms if QID_PATTERN.match(t)]
        titles = [t for t in args.terms if not QID_PATTERN.match(t)]
        if wikidata and qids:
            found += client.wikidata_entities(qids).values()
        if wikipedia and titles:
            found += client.wikipedia_pages(titles).values()
    return [e.to_json() for e in found]


if __name__ == "__main__":
    raise SystemExit(main())
