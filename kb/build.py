"""``python -m kb.build --dataset NAME [--data-dir DIR]``: build (or reuse) the KB store.

Prints one JSON object: entity count, whether the store was reused, seconds, path. The
default encoder is MiniLM for English datasets and multilingual-e5 for Chinese ones.
This command sits at the top of the import order (it picks a model), so it may import
``tools``; the library modules of ``kb`` never do.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kb.dataset import Dataset, dataset_names, load_dataset
from kb.errors import DatasetError
from kb.store import KBStore, open_store


def default_encoder_name(dataset: Dataset) -> str:
    return "e5-small" if any(m.language == "zh" for m in dataset.mentions[:100]) else "minilm"


def store_for(dataset: Dataset, encoder_name: str | None = None, progress: bool = True) -> KBStore:
    """Open (building if needed) the store of ``dataset`` with the named text encoder."""
    from tools.text_encoders import E5Encoder, MiniLMEncoder, encoder_fingerprint

    name = encoder_name or default_encoder_name(dataset)
    encoders = {"minilm": MiniLMEncoder, "e5-small": E5Encoder}
    if name not in encoders:
        raise DatasetError(f"unknown KB encoder {name!r}; choose one of {sorted(encoders)}")
    encoder = encoders[name]()
    return open_store(
        dataset.name, dataset.entities, encoder, encoder_fingerprint(encoder), progress=progress
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kb.build", description=__doc__)
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(dataset_names())}")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--encoder", default=None, help="minilm (English default) or e5-small")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        dataset = load_dataset(args.dataset, args.data_dir)
        store = store_for(dataset, args.encoder)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "dataset": dataset.name,
                "entities": store.count,
                "reused": store.reused,
                "seconds": round(time.perf_counter() - started, 2),
                "build_seconds": store.manifest["seconds"],
                "encoder": store.manifest["encoder"],
                "path": str(store.path),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
