"""Adversarial generation: Table 1 presets, the CW fix, PGD on a real photo, PNG rounding, resume."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchattacks  # noqa: E402
from PIL import Image  # noqa: E402

from attacks import generate  # noqa: E402
from attacks.checks import batch_checks, failed, perturbation_norms, png_bound  # noqa: E402
from attacks.engine import FixedCW, attack_batch, cw_margin  # noqa: E402
from attacks.output import write_png  # noqa: E402
from attacks.presets import PRESETS, load_presets, resolve  # noqa: E402
from kb.dataset import load_dataset  # noqa: E402
from kb.images import load_rgb, to_tensor  # noqa: E402
from tools.scorers import load_scorer  # noqa: E402
from tools.scorers.base import candidate_prompt  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a loaded 2-core box two threads spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tagger(one_thread):
    return load_scorer("tagger", task="i2t").eval()


@pytest.fixture(scope="module")
def demo():
    return load_dataset("demo")


def test_presets_are_table_1() -> None:
    p = PRESETS
    assert list(p) == ["pgd-n", "apgd-n", "cw-n", "pgd-s", "apgd-s", "cw-s"]
    assert (p["pgd-n"].steps, p["pgd-n"].alpha, p["pgd-n"].eps, p["pgd-n"].norm) == (
        20,
        2 / 255,
        8 / 255,
        "Linf",
    )
    assert (p["apgd-n"].steps, p["apgd-n"].eps, p["apgd-n"].norm) == (20, 8 / 255, "Linf")
    assert (p["cw-n"].steps, p["cw-n"].lr, p["cw-n"].c, p["cw-n"].kappa, p["cw-n"].norm) == (
        50,
        0.01,
        20,
        0,
        "L2",
    )
    # Table 1 prints 2/225 for PGD-S: treated as a typo for 2/255.
    assert (p["pgd-s"].steps, p["pgd-s"].alpha, p["pgd-s"].eps, p["pgd-s"].norm) == (40, 2 / 255, 0.2, "Linf")
    assert (p["apgd-s"].steps, p["apgd-s"].eps) == (40, 0.2)
    assert (p["cw-s"].steps, p["cw-s"].lr, p["cw-s"].c, p["cw-s"].kappa) == (75, 0.05, 100, 0)
    folders = {name: preset.folder for name, preset in p.items()}
    assert folders == {
        "pgd-n": "PGD-normal",
        "apgd-n": "APGD-normal",
        "cw-n": "CW-normal",
        "pgd-s": "PGD-strong",
        "apgd-s": "APGD-strong",
        "cw-s": "CW-strong",
    }
    assert [x.name for x in resolve("all")] == list(p)
    assert [x.name for x in resolve("cw-s,pgd-n")] == ["cw-s", "pgd-n"]
    with pytest.raises(ValueError):
        resolve("fgsm")


def test_custom_presets_from_toml_and_json(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(
        '[presets.pgd-tiny]\nmethod = "pgd"\nsteps = 2\neps = 0.01\nalpha = 0.005\n'
    )
    (tmp_path / "p.json").write_text(
        json.dumps({"presets": {"cw-x": {"method": "cw", "steps": 3, "lr": 0.1, "c": 1, "kappa": 0}}})
    )
    tiny = load_presets(tmp_path / "p.toml")["pgd-tiny"]
    assert (tiny.steps, tiny.eps, tiny.alpha, tiny.folder) == (2, 0.01, 0.005, "PGD-pgd-tiny")
    assert load_presets(tmp_path / "p.json")["cw-x"].norm == "L2"
    with pytest.raises(ValueError, match="alpha"):  # PGD without a step size
        load_presets(
            _write(tmp_path / "bad.json", {"presets": {"x": {"method": "pgd", "steps": 1, "eps": 0.1}}})
        )


def _write(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def test_cw_f_is_correct_on_negative_logits() -> None:
    """Gold is the top logit and every logit is negative: stock f gives 0, eq. 4 gives the margin."""
    outputs = torch.tensor([[-1.0, -3.0, -2.0], [-5.0, -0.5, -4.0]])
    labels = torch.tensor([0, 0])
    model = torch.nn.Linear(1, 3)
    stock = torchattacks.CW(model, c=1, kappa=0).f(outputs, labels)
    fixed = FixedCW(model, c=1, kappa=0).f(outputs, labels)
    assert stock[0].item() == 0.0  # torchattacks #184: max over (1 - onehot) * Z picks the zeros
    assert fixed.tolist() == [1.0, 0.0]  # Z_y - max_{i != y} Z_i = -1 - (-2); row 2 clamped at -kappa
    assert cw_margin(outputs, labels, kappa=10.0).tolist() == [1.0, -4.5]


def test_pgd_on_real_photo_respects_eps_and_raises_loss(tagger, demo) -> None:
    mention = demo.mention("astronaut-0")
    image = to_tensor(load_rgb(mention.image_path))[None]
    labels = [candidate_prompt(demo.entities[q].label) for q in ("Q11631", "Q11641", "Q7251", "Q1615")]
    preset = PRESETS["pgd-n"].with_steps(3)
    clean_logits = tagger(image, None, [labels])
    gold = torch.tensor([int(clean_logits.argmax())])  # attack the scorer's own top-1
    # row 2 is the same photo with a wrong label: already misclassified, left out of the attack
    wrong = torch.tensor([(int(gold) + 1) % len(labels)])
    both = attack_batch(tagger, preset, image.repeat(2, 1, 1, 1), torch.cat([gold, wrong]), [labels] * 2)
    assert both.already_misclassified.tolist() == [False, True] and both.eval_mode
    assert torch.equal(both.adversarial[1], image[0]) and not tagger.training
    result = attack_batch(tagger, preset, image, gold, [labels], None, seed=0)
    delta = result.adversarial[0] - image[0]
    assert float(delta.abs().max()) <= preset.eps + 1e-6
    assert float(result.adversarial[0].min()) >= 0 and float(result.adversarial[0].max()) <= 1
    assert float(delta.abs().max()) > 0
    assert float(result.adv_loss[0]) > float(result.clean_loss[0]) + 1e-3
    flags = batch_checks(preset, image, result)
    assert failed(flags[0]) == [] and flags[0]["grad_nonzero"] and flags[0]["eval_mode"]
    norms = perturbation_norms(image, result.adversarial)
    assert float(norms["linf_png"][0]) <= png_bound(preset.eps) + 1e-6


def test_png_rounds_not_truncates(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    base = torch.randint(0, 255, (3, 7, 5), generator=generator).float()
    image = (base + torch.rand(3, 7, 5, generator=generator) * 0.98 + 0.01) / 255  # never on the grid
    write_png(image, tmp_path / "x.png")
    back = np.asarray(Image.open(tmp_path / "x.png"))
    expected = torch.round(image * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert back.dtype == np.uint8 and back.shape == (7, 5, 3)
    assert np.array_equal(back, expected)
    truncated = (image * 255).to(torch.uint8).permute(1, 2, 0).numpy()  # what torchattacks' save does
    assert not np.array_equal(back, truncated)
    assert png_bound(8 / 255) == 8 / 255 and png_bound(0.2) == 0.2 and png_bound(0.01) > 0.01


FAST = {
    "presets": {
        "pgd-fast": {"method": "pgd", "steps": 1, "eps": 8 / 255, "alpha": 2 / 255, "folder": "PGD-fast"}
    }
}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture()
def shared_scorer(tagger, monkeypatch):
    monkeypatch.setattr(generate, "load_attack_scorer", lambda config: tagger)


def test_manifest_resume_and_refusal(tmp_path: Path, shared_scorer, capsys) -> None:
    def args(config: Path, scorer: str = "tagger", limit: int = 2) -> list[str]:
        return [
            *("--dataset", "demo", "--scorer", scorer, "--attack", "pgd-fast", "--presets-file", str(config)),
            *("--out", str(tmp_path / "adv"), "--quiet", "--threads", "0", "--limit", str(limit)),
        ]

    config = _write(tmp_path / "fast.json", FAST)
    assert generate.main(args(config, limit=2)) == 0
    manifest = tmp_path / "adv" / "PGD-fast" / "demo" / "manifest.jsonl"
    first = _lines(manifest)
    assert len(first) == 2
    assert generate.main(args(config, limit=3)) == 0
    second = _lines(manifest)
    assert len(second) == 3 and second[:2] == first
    record = second[2]
    for key in ("linf", "l2", "linf_png", "l2_png", "clean_prediction", "adv_prediction", "success"):
        assert key in record
    assert record["params"]["eps"] == 8 / 255 and record["seed"] == 0 and record["checks_failed"] == []
    assert (manifest.parent / record["png"]).is_file() and (manifest.parent / record["pt"]).is_file()
    saved = torch.load(manifest.parent / record["pt"])
    assert saved.dtype == torch.float32 and saved.ndim == 3
    png = torch.from_numpy(np.array(Image.open(manifest.parent / record["png"]))).permute(2, 0, 1)
    assert torch.equal(png, torch.round(saved * 255).to(torch.uint8))
    # the same folder with other preset parameters, or another scorer, is refused
    other = _write(
        tmp_path / "other.json", {"presets": {"pgd-fast": {**FAST["presets"]["pgd-fast"], "eps": 0.2}}}
    )
    assert generate.main(args(other, limit=3)) == 2
    assert "another attack configuration" in capsys.readouterr().err
    assert generate.main(args(config, scorer="tagger:e5", limit=3)) == 2
    assert len(_lines(manifest)) == 3


def test_corrupt_image_becomes_a_manifest_error(tmp_path: Path, shared_scorer, demo, monkeypatch) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    mentions = list(demo.mentions[:2])
    mentions[0] = dataclasses.replace(mentions[0], image_path=broken)
    patched = dataclasses.replace(demo, mentions=mentions)
    monkeypatch.setattr(generate, "load_dataset", lambda name, data_dir=None: patched)
    config = generate.GenerateConfig(
        dataset="demo", attack="pgd-fast", preset_file=str(_write(tmp_path / "f.json", FAST))
    )
    summaries = generate.run(config, tmp_path / "adv", progress=False)
    lines = _lines(tmp_path / "adv" / "PGD-fast" / "demo" / "manifest.jsonl")
    assert [r["id"] for r in lines] == [m.id for m in mentions]
    assert lines[0]["error"].startswith("image_") and lines[1]["error"] is None
    assert summaries["pgd-fast"]["n_errors"] == 1


def test_batches_mix_sizes_within_the_pixel_budget() -> None:
    """Any sizes share a batch, in input order; sum H*W stays within the budget; an oversize image goes alone."""
    sizes = [(100, 200)] * 3 + [(50, 50)] * 3 + [(1000, 1000)] + [(100, 200)] * 2
    items = [(f"item{i}", torch.zeros(3, h, w)) for i, (h, w) in enumerate(sizes)]
    batches = list(generate.mixed_batches(items, batch_size=4, max_pixels=45_000))
    assert [name for batch in batches for name, _ in batch] == [name for name, _ in items]  # order kept
    for batch in batches:
        pixels = sum(image.shape[-2] * image.shape[-1] for _, image in batch)
        assert len(batch) <= 4 and (len(batch) == 1 or pixels <= 45_000)
    assert [len(b) for b in batches] == [2, 4, 1, 2]  # 2x100x200 | 100x200 + 3x50x50 | 1000^2 | 2x100x200
    assert len({tuple(image.shape) for _, image in batches[1]}) == 2  # two sizes in one batch
    assert [len(b) for b in generate.mixed_batches(items, batch_size=8, max_pixels=None)] == [8, 1]
