"""Replay stored adversarial images through ``eval.run`` and measure how far they move it.

    python -m eval.run --dataset NAME --task i2t|it2t ... --attack PRESET|LIST|all
        [--adv-dir ADV-MEL] [--adv-format png|pt] [--presets-file FILE]

Each preset (``attacks.presets.resolve``: Table 1 names, a comma list, ``all``, or names from
``--presets-file``) is one more *condition* of the run: the same mentions, the same candidate
sets (same builder, same seeds) and the same scorer as the clean condition, with each mention's
image replaced by ``<adv-dir>/<preset folder>/<dataset>/<stem>.<png|pt>`` (``attacks.output``
layout, ``stem = attacks.output.file_stem(mention id)``).

Format: PNG by default. The public ADV-MEL release is PNG, so a PNG is what a user has and
replays, and it measures the attack as it is saved and shared (8-bit rounded). ``--adv-format
pt`` replays the exact float tensors instead (the attack's strength before rounding). Results
record ``image_format``; each item line names the file it scored (``adv_file``).

Whose images: the folder's ``attack.json`` (written by ``attacks.generate``) says who made them;
results copy it as ``made_by``. A folder that is this run's own (no such folder yet, or an
``attack.json`` of this preset, scorer, task, candidate count and the run's first seed) is
completed first: mentions missing from its manifest are attacked with ``attacks.generate.run``
(exactly this run's pictured mentions). Any other folder (another scorer or task: a transfer
set; or images without an ``attack.json``, such as the public release) is replayed as it is
and never written to; ``transfer`` is true when its scorer or task differs from the run's.
Images are made against the first seed's candidates; with several seeds every seed replays
the same images (``candidates_differ`` counts items whose manifest candidates are not the
replayed ones).

Skip reasons of an attack condition, besides the clean ones (``no_image``, ...):
``adv_missing`` (no image for the mention), ``adv_<manifest error>`` (e.g.
``adv_no_gold_in_candidates`` for NIL mentions, which have no label to attack),
``adv_file_missing`` (in the manifest but the file is gone), ``image_<reason>`` (unreadable).

``results.json["attacks"][preset]``, beside the clean run's fields (which keep their schema):

    n, n_skipped, skipped, metrics, metrics_per_seed   as the clean run's, on the adversarial images
    drift             eval.metrics.drift, clean vs attacked, pooled over the (seed, mention) pairs
                      scored in both: n, acc_drop, flip_rate, attack_success, gold_rank_shift
    preset            the preset's parameters          adv_dir, folder, image_format
    made_by           the folder's attack.json (null without one)      transfer (bool or null)
    generated         images this invocation generated                  candidates_differ
    manifest          the generator's own white-box numbers on this run's mentions
                      (attacks.checks.success_summary): n_clean_correct, success_rate,
                      success_rate_png, n_check_failures
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attacks.output import IDENTITY_FILE, file_stem
from attacks.presets import Preset, resolve
from eval.results import percent as pct
from kb.runcore.files import jsonable, read_jsonl
from kb.runcore.items import PreparedItem, file_digest

if TYPE_CHECKING:
    from attacks.generate import GenerateConfig
    from eval.config import RunConfig
    from eval.evaluator import Evaluator
    from kb.records import Mention

ADV_FORMATS = ("png", "pt")


def presets_for(config: RunConfig) -> list[Preset]:
    """The run's presets; a bad name or format fails here, before any scoring."""
    if config.adv_format not in ADV_FORMATS:
        raise ValueError(f"--adv-format must be one of {', '.join(ADV_FORMATS)}, got {config.adv_format!r}")
    return resolve(config.attack or "", config.presets_file)


@dataclass
class AdversarialSet:
    """One preset's folder of adversarial images of one dataset: who made it, its manifest."""

    preset: Preset
    adv_dir: Path
    dataset: str
    task: str
    image_format: str
    made_by: dict[str, Any] | None = None
    manifest: dict[str, dict[str, Any]] = field(default_factory=dict)
    generated: int = 0

    @property
    def folder(self) -> Path:
        return self.adv_dir / self.preset.folder / self.dataset

    def load(self) -> None:
        identity = self.folder / IDENTITY_FILE
        self.made_by = json.loads(identity.read_text(encoding="utf-8")) if identity.is_file() else None
        # a line cut by a kill ends the reading: the generator redoes it
        self.manifest = {record["id"]: record for record in read_jsonl(self.folder / "manifest.jsonl")}

    def lacks(self, mentions: list[Mention]) -> bool:
        """True when some pictured mention has no line in the manifest."""
        return any(m.has_image and m.id not in self.manifest for m in mentions)

    def is_own(self, wanted: GenerateConfig) -> bool:
        """True when this run may add images: the folder is new, or was made exactly as the run wants."""
        from attacks.generate import folder_identity

        if self.made_by is None:  # images without an attack.json (e.g. the public release) are not ours
            return not (self.folder.is_dir() and any(self.folder.iterdir()))
        return self.made_by == jsonable(folder_identity(self.preset, wanted, self.dataset))

    def attach(self, item: PreparedItem) -> None:
        """Point a prepared item at its adversarial image, or record why it has none."""
        if item.skip is not None:
            return
        mention_id = item.mention.id
        record = self.manifest.get(mention_id)
        if record is not None and record.get("error"):
            item.skip = f"adv_{record['error']}"
            return
        name = f"{file_stem(mention_id)}.{self.image_format}"
        path = self.folder / name
        if not path.is_file():
            item.skip = "adv_missing" if record is None else "adv_file_missing"
            return
        item.source = path
        item.image_digest = file_digest(path)
        item.refresh_key(self.task)
        item.notes = {
            "adv_file": f"{self.preset.folder}/{self.dataset}/{name}",
            "adv_same_candidates": None
            if record is None
            else record["candidates"] == list(item.candidates.qids),
        }

    def summary(self, evaluator: Evaluator) -> dict[str, Any]:
        """The preset's block of ``results.json`` (see the module docstring)."""
        from attacks.checks import success_summary

        name = self.preset.name
        records = [r for seed in evaluator.config.seeds for r in evaluator.records(name, seed)]
        ids = {m.id for m in evaluator.mentions}
        made = success_summary([r for i, r in self.manifest.items() if i in ids])
        scorer, task = evaluator.config.scorer, evaluator.config.task
        return {
            **evaluator.summary(name),
            "drift": evaluator.drift_from_clean(name),
            "drift_ci95": evaluator.drift_intervals(name),
            "preset": self.preset.params(),
            "adv_dir": str(self.adv_dir),
            "folder": str(self.folder),
            "image_format": self.image_format,
            "made_by": self.made_by,
            "transfer": (
                None
                if self.made_by is None
                else (self.made_by.get("scorer"), self.made_by.get("task")) != (scorer, task)
            ),
            "generated": self.generated,
            "candidates_differ": sum(1 for r in records if r.get("adv_same_candidates") is False),
            "manifest": {
                key: made[key]
                for key in ("n_clean_correct", "success_rate", "success_rate_png", "n_check_failures")
            },
        }


def generation_config(config: RunConfig, presets: list[Preset], limit: int) -> GenerateConfig:
    """``attacks.generate`` settings that attack exactly what the run replays.

    The run's pictured mentions are the first ``limit`` pictured mentions of its split, which
    is what the generator attacks with that limit.
    """
    from attacks.generate import GenerateConfig

    return GenerateConfig(
        dataset=config.dataset,
        scorer=config.scorer,
        attack=",".join(p.name for p in presets),
        task=config.task,
        split=config.split,
        limit=limit,
        candidates=config.candidates,
        seed=config.seeds[0],
        data_dir=config.data_dir,
        preset_file=config.presets_file,
    )


def complete(sets: list[AdversarialSet], evaluator: Evaluator, progress: bool) -> None:
    """Generate what the run's own folders lack, in one generator run (one scorer load).

    Someone else's folder (a transfer set, the public release) is never written to: what it
    lacks stays missing and is recorded per item.
    """
    mentions = evaluator.mentions
    pictured = sum(1 for m in mentions if m.has_image)
    wanted = generation_config(evaluator.config, [s.preset for s in sets], pictured)
    lacking = [s for s in sets if s.lacks(mentions) and s.is_own(wanted)]
    if not lacking:
        return
    from attacks import generate

    before = {s.preset.name: len(s.manifest) for s in lacking}
    generate.run(
        generation_config(evaluator.config, [s.preset for s in lacking], pictured),
        lacking[0].adv_dir,
        progress,
        executor=evaluator.executor,
    )
    for adversarial in lacking:
        adversarial.load()
        adversarial.generated = len(adversarial.manifest) - before[adversarial.preset.name]


def replay_attacks(evaluator: Evaluator, presets: list[Preset], progress: bool) -> dict[str, dict[str, Any]]:
    """Replay every preset after the clean condition; returns ``{preset name: summary}``."""
    config = evaluator.config
    sets = [
        AdversarialSet(preset, Path(config.adv_dir), evaluator.dataset.name, config.task, config.adv_format)
        for preset in presets
    ]
    for adversarial in sets:
        adversarial.load()
    complete(sets, evaluator, progress)
    summaries = {}
    for adversarial in sets:
        evaluator.evaluate(adversarial.preset.name, adversarial.attach)
        summaries[adversarial.preset.name] = adversarial.summary(evaluator)
    return summaries


def summary_line(name: str, attacked: dict[str, Any]) -> str:

    drift, made = attacked["drift"], attacked["manifest"]
    by = attacked["made_by"] or {}
    return (
        f"{name:>7}: acc@1 {pct(attacked['metrics']['acc@1']['mean'])} (n={attacked['n']}, "
        f"skipped={attacked['n_skipped']}) drop {pct(drift['acc_drop'])} flips {pct(drift['flip_rate'])} "
        f"attack success {pct(drift['attack_success'])} rank shift {drift['gold_rank_shift']} "
        f"[{attacked['image_format']}, made by {by.get('scorer', '?')}/{by.get('task', '?')}"
        f"{', transfer' if attacked['transfer'] else ''}; generator success {pct(made['success_rate'])}, "
        f"check failures {made['n_check_failures']}]"
    )
