"""``python -m attacks.bench``: the batched attack path against a per-image loop and a bare loop.

    python -m attacks.bench [--dataset demo] [--data-dir DIR] [--split test] [--limit N]
        [--candidates 10|all] [--scorer tagger|random:ARCH] [--attack all] [--presets-file FILE]
        [--steps N] [--batch-size 8] [--max-batch-pixels P] [--device cpu|cuda]
        [--dtype float32|bfloat16|float16] [--space pixels|model-input] [--threads 0] [--seed 0]
        [--min-megapixels M] [--peak-tflops T] [--no-per-image]

Three timings per preset, in one process, on the same decoded images, candidate texts and labels
(the scorer's clean top-1, so every image is attacked by every path), taken batch by batch in
turn so that the changing load of a shared machine weighs on all three alike:

* batched: ``attacks.engine.attack_batch`` on mixed-size batches (``attacks.items.mixed_batches``)
  plus the norms and checks, which is what ``attacks.generate`` runs short of writing files;
* per-image: plain torchattacks on one image at a time (``torchattacks.PGD`` / ``APGD``; for CW
  the engine's ``FixedCW``, because stock CW's batch-level early stop would do other work);
* bare: per image, ``steps`` x (scorer forward + backward to the pixels), nothing else: the
  floor any pixel-space attack of that many steps pays.

``ratio`` is per-image time / batched time (the speed-up of batching) and ``overhead`` batched
time / bare time (what the attack costs beyond its passes). ``tflops`` is the scorer's
forward-backward FLOPs (``torch.utils.flop_counter`` on one model input) x steps x images /
batched time, and ``peak_share`` that over ``--peak-tflops`` (e.g. 989 for an H100/H200's dense
bf16).

``--scorer random:ARCH`` is a randomly initialised open_clip model of the real architecture
(``random:ViT-B-32-quickgelu`` is OpenAI's ViT-B/32): FLOPs and speed do not depend on the
weights, so a GPU can be measured without any weights on it. Each preset runs its Table 1
step count unless ``--steps`` replaces it in every path alike.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchattacks

from attacks.checks import batch_checks, perturbation_norms
from attacks.cw import FixedCW
from attacks.engine import DTYPES, SPACES, attack_batch, attack_dtype, model_calls, to_model_input
from attacks.items import (
    DEFAULT_MAX_BATCH_PIXELS,
    GenerateConfig,
    ImageCache,
    attackable,
    mixed_batches,
    prepare_items,
)
from attacks.presets import Preset, resolve
from attacks.target import CandidateTarget
from kb.cli_args import add_candidate_arguments, add_dataset_arguments, add_presets_file_argument
from kb.dataset import load_dataset
from kb.errors import ImageError

Sample = tuple[str, torch.Tensor, list[str], int]
"""(mention id, image (3, H, W) on the device, candidate texts, label)."""


def load_bench_scorer(name: str, device: str) -> torch.nn.Module:
    """``tools.scorers.load_scorer(name)``, or ``random:ARCH``: an open_clip ARCH with random weights."""
    if name.startswith("random:"):
        import open_clip

        from tools.scorers.clip_family import DualEncoderScorer
        from tools.scorers.text_cache import TextEmbeddingCache

        arch = name.split(":", 1)[1]
        torch.manual_seed(0)
        model = open_clip.create_model(arch, pretrained=None)
        scorer = DualEncoderScorer(
            model, open_clip.get_tokenizer(arch), "openclip", name=name, text_cache=TextEmbeddingCache(None)
        )
    else:
        from tools.scorers import load_scorer

        scorer = load_scorer(name, task="i2t")
    return scorer.to(device).eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[[], None]) -> float:
    synchronize(device)
    started = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - started


def batched_path(
    scorer: torch.nn.Module, preset: Preset, batches: list[list[Sample]], args: argparse.Namespace
) -> None:
    """What ``attacks.generate`` runs per batch, short of writing files."""
    for batch in batches:
        result = attack_batch(
            scorer,
            preset,
            [image for _, image, _, _ in batch],
            torch.tensor([label for *_, label in batch]),
            [texts for _, _, texts, _ in batch],
            None,
            args.seed,
            [key for key, *_ in batch],
            space=args.space,
            dtype=args.dtype,
            **model_calls(args.device, args.batch_size),
        )
        norms = perturbation_norms(result.clean, result.adversarial, result.quantized)
        batch_checks(preset, result.clean, result, norms)


def per_image_path(scorer: torch.nn.Module, preset: Preset, samples: Sequence[Sample], seed: int) -> None:
    """Plain torchattacks, one image at a time."""
    for _, image, texts, label in samples:
        target = CandidateTarget(scorer, None, [texts]).eval()
        if preset.method == "pgd":
            attack = torchattacks.PGD(target, eps=preset.eps, alpha=preset.alpha, steps=preset.steps)
        elif preset.method == "apgd":
            attack = torchattacks.APGD(target, norm="Linf", eps=preset.eps, steps=preset.steps, seed=seed)
        else:
            attack = FixedCW(target, c=preset.c, kappa=preset.kappa, steps=preset.steps, lr=preset.lr)
        torch.manual_seed(seed)
        attack(image[None], torch.tensor([label], device=image.device))


def bare_path(
    scorer: torch.nn.Module, preset: Preset, samples: Sequence[Sample], dtype: str, space: str
) -> None:
    """``steps`` x (forward + backward to the pixels) per image, through the scorer's own forward."""
    cast = DTYPES[attack_dtype(preset, dtype)]
    for _, image, texts, label in samples:
        target = CandidateTarget(scorer, None, [texts], resized=space == "model-input", dtype=cast).eval()
        labels = torch.tensor([label], device=image.device)
        pixels = image[None].clone().requires_grad_(True)  # one leaf: not even a copy per step
        for _ in range(preset.steps):
            loss = F.cross_entropy(target(pixels), labels, reduction="sum")
            torch.autograd.grad(loss, [pixels])


def pass_flops(scorer: torch.nn.Module, sample: Sample) -> float:
    """FLOPs of one forward + backward of the scorer on one model input (the resize excluded)."""
    from torch.utils.flop_counter import FlopCounterMode

    _, image, texts, label = sample
    target = CandidateTarget(scorer, None, [texts], resized=True)
    model_input = to_model_input(scorer, image).requires_grad_(True)
    target([model_input])  # text embeddings first: only the image tower is counted
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(target([model_input]), torch.tensor([label], device=image.device))
        torch.autograd.backward(loss, inputs=[model_input])  # counted hooks refuse autograd.grad
    return float(counter.get_total_flops())


def load_samples(args: argparse.Namespace, scorer: torch.nn.Module, device: torch.device) -> list[Sample]:
    config = GenerateConfig(
        dataset=args.dataset,
        scorer=args.scorer,
        split=args.split,
        limit=args.limit,
        candidates=args.candidates,
        seed=args.seed,
        data_dir=args.data_dir,
        preset_file=args.presets_file,
    )
    dataset = load_dataset(args.dataset, args.data_dir)
    mentions, _ = attackable(dataset, args.split, args.limit)
    cache = ImageCache()
    samples = []
    for item in prepare_items(dataset, mentions, config):
        if item.error is not None:
            continue
        try:
            image = cache.get(item.mention).to(device)
        except ImageError:
            continue
        if image.shape[-2] * image.shape[-1] < args.min_megapixels * 1e6:
            continue
        if args.space == "model-input":
            image = to_model_input(scorer, image)
        with torch.no_grad():  # the clean top-1 as label: every image is attacked by every path
            label = int(scorer(image[None], None, [item.candidate_texts]).argmax())
        samples.append((item.mention.id, image, item.candidate_texts, label))
    return samples


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m attacks.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_arguments(
        parser, dataset_default="demo", with_images=False, limit_help="first N mentions that have an image"
    )
    add_candidate_arguments(parser, seeds=False)
    parser.add_argument("--scorer", default="tagger", help="a scorer name, or random:ARCH (open_clip)")
    parser.add_argument("--attack", default="all", help="pgd-n, ..., cw-s, a comma list, or all")
    add_presets_file_argument(parser)
    parser.add_argument("--steps", type=int, default=None, help="steps for every preset (default: Table 1's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-pixels", type=int, default=DEFAULT_MAX_BATCH_PIXELS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--space", choices=list(SPACES), default="pixels")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default")
    parser.add_argument(
        "--min-megapixels", type=float, default=0.0, help="only photos of at least this many megapixels"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for peak_share")
    parser.add_argument("--no-per-image", action="store_true", help="skip the per-image torchattacks loop")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    scorer = load_bench_scorer(args.scorer, args.device)
    samples = load_samples(args, scorer, device)
    if not samples:
        raise SystemExit("no attackable image")
    budget = args.max_batch_pixels if args.space == "pixels" else None
    batches = list(mixed_batches([(s, s[1]) for s in samples], args.batch_size, budget))
    batches = [[sample for sample, _ in batch] for batch in batches]
    megapixels = sorted(round(s[1].shape[-2] * s[1].shape[-1] / 1e6, 2) for s in samples)
    flops = pass_flops(scorer, samples[0]) if scorer_has_fixed_input(scorer) else None
    print(
        f"# {len(samples)} images of {args.dataset} ({megapixels[0]}-{megapixels[-1]} MP, median "
        f"{megapixels[len(megapixels) // 2]}) in {len(batches)} mixed batches (sizes "
        f"{sorted(len(b) for b in batches)}); {args.scorer} on {args.device}, {args.dtype}, {args.space}; "
        f"{args.steps or 'Table 1'} steps in every path; {torch.get_num_threads()} torch thread(s)",
        flush=True,
    )
    rows = []
    for preset in resolve(args.attack, args.presets_file):
        preset = preset.with_steps(args.steps) if args.steps else preset
        batched_path(scorer, preset, batches[:1], args)  # warm-up: caches, allocator, kernels
        batched, bare, single = 0.0, 0.0, None if args.no_per_image else 0.0
        for batch in batches:  # interleaved batch by batch: a shared machine's load hits all paths alike
            batched += timed(device, lambda p=preset, b=batch: batched_path(scorer, p, [b], args))
            bare += timed(device, lambda p=preset, b=batch: bare_path(scorer, p, b, args.dtype, args.space))
            if single is not None:
                single += timed(device, lambda p=preset, b=batch: per_image_path(scorer, p, b, args.seed))
        row = {
            "preset": preset.name,
            "steps": preset.steps,
            "images": len(samples),
            "batched_img_s": round(len(samples) / batched, 3),
            "per_image_img_s": None if single is None else round(len(samples) / single, 3),
            "bare_img_s": round(len(samples) / bare, 3),
            "ratio": None if single is None else round(single / batched, 2),
            "overhead": round(batched / bare, 3),
        }
        if flops is not None:
            row["tflops"] = round(flops * preset.steps * len(samples) / batched / 1e12, 3)
            if args.peak_tflops:
                row["peak_share"] = round(row["tflops"] / args.peak_tflops, 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    total = {
        k: sum(r["images"] / r[k] for r in rows if r[k])
        for k in ("batched_img_s", "per_image_img_s", "bare_img_s")
    }
    count = sum(r["images"] for r in rows)
    ratio = f"{total['per_image_img_s'] / total['batched_img_s']:.2f}x" if not args.no_per_image else "n/a"
    print(
        f"# overall: batched {count / total['batched_img_s']:.3f} img/s; per-image ratio {ratio} "
        f"(target >= 5x on a GPU); overhead vs bare steps x (forward + backward) "
        f"{total['batched_img_s'] / total['bare_img_s']:.3f}x (target <= 1.15x)"
    )
    return 0


def scorer_has_fixed_input(scorer: torch.nn.Module) -> bool:
    return hasattr(scorer, "pixel_preprocess") and scorer.pixel_preprocess() is not None


if __name__ == "__main__":
    raise SystemExit(main())
