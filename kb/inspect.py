"""``python -m kb.inspect --dataset NAME [--data-dir DIR]``: one JSON object of dataset statistics."""

from __future__ import annotations

import argparse
import json
import sys

from kb.dataset import dataset_names, load_dataset
from kb.errors import DatasetError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kb.inspect", description=__doc__)
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(dataset_names())}")
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset's files")
    parser.add_argument("--errors", type=int, default=5, help="how many load errors to list")
    args = parser.parse_args(argv)
    try:
        dataset = load_dataset(args.dataset, args.data_dir)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    statistics = dataset.statistics()
    statistics["first_load_errors"] = [e.to_json() for e in dataset.errors[: args.errors]]
    print(json.dumps(statistics, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
