"""One attacked batch to files and manifest lines (``attacks.output`` layout).

Manifest ``success``: the scorer ranked the gold first on the clean image and not on the
adversarial one (``success_png``: on the saved PNG). Images it already got wrong are not
attacked, come back unchanged and have ``already_misclassified: true, success: false``.
Each line also says how it was made: ``batch_size`` (images in its batch), ``dtype`` (the
precision the attack's scorer passes ran in), ``space`` and ``shape`` (the attacked image's;
``source_shape`` the photo's when they differ).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from attacks.checks import batch_checks, failed, perturbation_norms
from attacks.engine import attack_batch, model_calls
from attacks.items import AttackItem, GenerateConfig
from attacks.output import file_stem, write_png, write_tensor
from attacks.presets import Preset
from kb.runcore.item_log import ItemLog


def base_record(item: AttackItem, preset: Preset, config: GenerateConfig) -> dict[str, Any]:
    mention, candidates = item.mention, item.candidates
    return {
        "id": mention.id,
        "seed": config.seed,
        "preset": preset.name,
        "params": preset.params(),
        "scorer": config.scorer,
        "task": config.task,
        "image": str(mention.image_path) if mention.image_path else None,
        "gold": mention.gold,
        "candidates": list(candidates.qids),
        "gold_index": candidates.gold_index,
    }


def error_record(item: AttackItem, preset: Preset, config: GenerateConfig) -> dict[str, Any]:
    return {**base_record(item, preset, config), "error": item.error, "detail": item.detail}


def attack_or_record(
    scorer: torch.nn.Module,
    preset: Preset,
    batch: list[tuple[AttackItem, torch.Tensor]],
    config: GenerateConfig,
    folder: Path,
) -> list[dict[str, Any]]:
    """``attack_and_save``, but one item the attack cannot handle never ends the run: a failing
    batch is retried item by item and an item that still fails becomes a manifest error line."""
    try:
        return attack_and_save(scorer, preset, batch, config, folder)
    except Exception as exc:  # noqa: BLE001 - recorded per item, the run goes on
        if len(batch) > 1:
            return [r for one in batch for r in attack_or_record(scorer, preset, [one], config, folder)]
        item = batch[0][0]
        item.error, item.detail = "attack_error", f"{type(exc).__name__}: {str(exc)[:300]}"
        return [{**error_record(item, preset, config), "checks_failed": []}]


def attack_and_save(
    scorer: torch.nn.Module,
    preset: Preset,
    batch: list[tuple[AttackItem, torch.Tensor]],
    config: GenerateConfig,
    folder: Path,
) -> list[dict[str, Any]]:
    """Attack one batch (any sizes), write its files, return its manifest lines."""
    labels = torch.tensor([item.candidates.gold_index for item, _ in batch])
    texts = [item.context or "" for item, _ in batch] if config.task == "it2t" else None
    result = attack_batch(
        scorer,
        preset,
        [image for _, image in batch],
        labels,
        [item.candidate_texts for item, _ in batch],
        texts,
        config.seed,
        [item.mention.id for item, _ in batch],
        space=config.space,
        dtype=config.dtype,
        **model_calls(config.device, config.batch_size),
    )
    norms = perturbation_norms(result.clean, result.adversarial, result.quantized)
    flags = batch_checks(preset, result.clean, result, norms)
    records = []
    for b, (item, image) in enumerate(batch):
        stem = file_stem(item.mention.id)
        write_png(result.quantized[b], folder / f"{stem}.png")
        write_tensor(result.adversarial[b], folder / f"{stem}.pt")
        qids = item.candidates.qids
        attacked = not bool(result.already_misclassified[b])
        shape = list(result.adversarial[b].shape[-2:])
        records.append(
            {
                **base_record(item, preset, config),
                "shape": shape,
                **({"source_shape": list(image.shape[-2:])} if shape != list(image.shape[-2:]) else {}),
                "space": result.space,
                "dtype": result.dtype,
                "batch_size": len(batch),
                "png": f"{stem}.png",
                "pt": f"{stem}.pt",
                "linf": round(float(norms["linf"][b]), 6),
                "l2": round(float(norms["l2"][b]), 6),
                "linf_png": round(float(norms["linf_png"][b]), 6),
                "l2_png": round(float(norms["l2_png"][b]), 6),
                "clean_prediction": qids[int(result.clean_pred[b])],
                "adv_prediction": qids[int(result.adv_pred[b])],
                "png_prediction": qids[int(result.png_pred[b])],
                "clean_loss": round(float(result.clean_loss[b]), 5),
                "adv_loss": round(float(result.adv_loss[b]), 5),
                "already_misclassified": bool(result.already_misclassified[b]),
                "success": attacked and int(result.adv_pred[b]) != item.candidates.gold_index,
                "success_png": attacked and int(result.png_pred[b]) != item.candidates.gold_index,
                "seconds": round(result.seconds / len(batch), 4),
                "checks": flags[b],
                "checks_failed": failed(flags[b]),
                "error": None,
            }
        )
    return records


def append_record(log: ItemLog, preset: Preset, record: dict[str, Any]) -> None:
    """Write one manifest line; a failed check is also shouted on stderr."""
    log.append(record)
    if record["checks_failed"]:
        print(
            f"CHECK FAILED [{preset.name}] {record['id']}: {', '.join(record['checks_failed'])}",
            file=sys.stderr,
            flush=True,
        )


def images_per_second(records: list[dict[str, Any]]) -> float | None:
    seconds = sum(r.get("seconds", 0.0) for r in records if not r.get("error"))
    count = sum(1 for r in records if not r.get("error"))
    return round(count / seconds, 4) if seconds > 0 else None


def summary_line(summary: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value * 100:.1f}%"

    return (
        f"{summary['preset']:>7} {summary['dataset']} {summary['task']} {summary['scorer']}: "
        f"success {pct(summary['success_rate'])} (png {pct(summary['success_rate_png'])}) "
        f"on {summary['n_clean_correct']} clean-correct; already wrong {summary['n_already_misclassified']}, "
        f"errors {summary['n_errors']}; mean linf {summary['mean_linf']} l2 {summary['mean_l2']}; "
        f"{summary['images_per_second']} img/s; check failures {summary['n_check_failures']}"
    )
