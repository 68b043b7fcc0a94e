"""``python -m kb.build --dataset NAME [--data-dir DIR]``: build (or reuse) the KB store.

Prints one JSON object: entity count, whether the store was reused, seconds, path. The
default encoder is MiniLM for English datasets and multilingual-e5 for Chinese ones.
The encoder is found by name among the installed ``melrobust.text_encoders`` entry points
(``kb.encoders``), so ``kb`` never imports the models of ``tools``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kb.dataset import Dataset, dataset_names, load_dataset
from kb.encoders import encoder_fingerprint, encoder_names, load_encoder
from kb.errors import DatasetError
from kb.store import KBStore, open_store


def default_encoder_name(dataset: Dataset) -> str:
    return "e5-small" if any(m.language == "zh" for m in dataset.mentions[:100]) else "minilm"


def store_for(dataset: Dataset, encoder_name: str | None = None, progress: bool = True) -> KBStore:
    """Open (building if needed) the store of ``dataset`` with the named text encoder."""
    name = encoder_name or default_encoder_name(dataset)
    encoder = load_encoder(name)
    return open_store(
        dataset.name, dataset.entities, encoder, encoder_fingerprint(encoder), progress=progress
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kb.build", description=__doc__)
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(dataset_names())}")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--encoder",
        default=None,
        help=f"one of {encoder_names()}: minilm (English default) or e5-small (Chinese)",
    )
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
