"""``python -m eval.bench prerank``: pre-ranker throughput on WikiMEL, cold and warm.

Cold = empty text-embedding and score caches (the KB store, built once by ``kb.build``, is
shared); warm = the same command again, reusing those caches. Each run is a real
``python -m eval.run`` subprocess, so imports and model loading are counted. WikiMEL's test
split has no images in ../shared, so its mentions run ``t2t``; mentions with an image on
disk would run ``it2t`` (the command reports how many there were).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kb.cache import cache_dir
from kb.dataset import load_dataset

TARGET_SECONDS = 300.0


def timed_run(arguments: list[str], env: dict[str, str], out: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "eval.run", *arguments, "--out", str(out), "--quiet"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started, json.loads((out / "results.json").read_text())


def prerank(args: argparse.Namespace) -> None:
    dataset = load_dataset("wikimel", args.data_dir)
    mentions = dataset.split("test")[: args.limit] if args.limit else dataset.split("test")
    pictured = sum(1 for m in mentions if m.image_path is not None and m.image_path.is_file())
    print(
        f"WikiMEL test: {len(mentions)} mentions ({pictured} with an image on disk -> it2t, rest t2t), λ=10"
    )
    scorers = [("tagger", None)]
    if args.mcr_checkpoint and Path(args.mcr_checkpoint).is_file():
        scorers.append(("mcr", args.mcr_checkpoint))
    else:
        print(
            f"mcr: no checkpoint at {args.mcr_checkpoint} (train one with python -m tools.train_mcr); skipped"
        )
    print(
        f"{'scorer':<8} {'cold s':>8} {'cold m/s':>9} {'warm s':>8} {'warm m/s':>9} {'speed-up':>9} {'acc@1':>6}  projected full split (cold)"
    )
    for scorer, checkpoint in scorers:
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            (root / "kb").symlink_to(cache_dir("kb"), target_is_directory=True)
            env = {**os.environ, "MEL_CACHE_DIR": str(root), "HF_HUB_OFFLINE": "1"}
            common = ["--dataset", "wikimel", "--task", "t2t", "--scorer", scorer]
            common += ["--limit", str(len(mentions))] + (["--checkpoint", checkpoint] if checkpoint else [])
            common += ["--data-dir", str(dataset.root)]
            cold, results = timed_run(common, env, root / "cold")
            warm, _ = timed_run(common, env, root / "warm")
        n = results["n"] + results["n_skipped"]
        projected = cold * len(dataset.split("test")) / n
        verdict = "meets" if projected <= TARGET_SECONDS else "misses"
        print(
            f"{scorer:<8} {cold:8.1f} {n / cold:9.1f} {warm:8.1f} {n / warm:9.1f} {cold / warm:8.1f}x "
            f"{results['metrics']['acc@1']['mean'] * 100:5.1f}%  {projected:.0f} s ({verdict} the {TARGET_SECONDS:.0f} s target)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("prerank", help="tagger and mcr mentions/s on WikiMEL, cold and warm")
    pre.add_argument("--data-dir", default=None)
    pre.add_argument("--limit", type=int, default=None, help="first N test mentions (default: all)")
    pre.add_argument("--mcr-checkpoint", default="checkpoints/mcr-wikimel.pt")
    args = parser.parse_args(argv)
    if args.command == "prerank":
        prerank(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
