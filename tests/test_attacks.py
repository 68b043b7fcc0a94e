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
from attacks.apgd import RowAPGD  # noqa: E402
from attacks.checks import batch_checks, failed, perturbation_norms, png_bound  # noqa: E402
from attacks.engine import BatchResult, FixedCW, attack_batch, build_attack, cw_margin, quantize  # noqa: E402
from attacks.output import write_png  # noqa: E402
from attacks.pgd import RowPGD  # noqa: E402
from attacks.presets import PRESETS, Preset, load_presets, resolve  # noqa: E402
from attacks.target import CandidateTarget  # noqa: E402
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


def _result(clean: list[torch.Tensor], adversarial: list[torch.Tensor], **changes: object) -> BatchResult:
    """A ``BatchResult`` built by hand (predictions and losses do not enter the checks)."""
    n = len(clean)
    fields = dict(
        clean=clean,
        adversarial=adversarial,
        quantized=[quantize(x.clone()) for x in adversarial],
        clean_pred=torch.zeros(n, dtype=torch.long),
        adv_pred=torch.zeros(n, dtype=torch.long),
        png_pred=torch.zeros(n, dtype=torch.long),
        already_misclassified=torch.zeros(n, dtype=torch.bool),
        grad_norm=torch.ones(n),
        clean_loss=torch.zeros(n),
        adv_loss=torch.zeros(n),
        eval_mode=True,
        seconds=0.0,
    )
    return BatchResult(**{**fields, **changes})


def test_each_check_turns_false_on_the_case_it_exists_to_catch() -> None:
    """One broken adversarial per flag, on clean pixels of the 8-bit grid: a ``batch_checks`` that
    always said yes fails here (the real attacks only ever make passing images)."""
    preset = PRESETS["pgd-n"]  # Linf, eps 8/255
    clean = torch.full((3, 4, 5), 128 / 255)
    clean[:, 0, 0] = 250 / 255  # near white: +8/255 would leave [0, 1]

    def moved(row: int, col: int, by: float) -> torch.Tensor:
        x = clean.clone()
        x[1, row, col] += by
        return x

    nan, inf = clean.clone(), clean.clone()
    nan[2, 3, 4], inf[0, 2, 2] = float("nan"), float("inf")
    cases = {
        "on the ball's edge": (moved(1, 1, 8 / 255), []),
        "a pixel 9/255 away": (moved(1, 1, 9 / 255), ["eps_float", "eps_png"]),
        "8.4/255: outside in float, rounded back in": (moved(1, 1, 8.4 / 255), ["eps_float"]),
        "past white": (moved(0, 0, 7 / 255), ["range"]),
        "NaN": (nan, ["eps_float", "eps_png", "range", "finite"]),
        "inf": (inf, ["eps_float", "eps_png", "range", "finite"]),
    }
    names = list(cases)
    adversarial = [cases[name][0] for name in names]
    flags = batch_checks(preset, [clean] * len(names), _result([clean] * len(names), adversarial))
    assert {name: failed(f) for name, f in zip(names, flags, strict=True)} == {
        name: wanted for name, (_, wanted) in cases.items()
    }
    assert all(f["grad_nonzero"] is True and f["eval_mode"] is True for f in flags)

    fine = moved(1, 1, 2 / 255)
    blind = _result([clean] * 3, [fine] * 3, grad_norm=torch.tensor([0.0, float("nan"), 1e-9]))
    assert [f["grad_nonzero"] for f in batch_checks(preset, [clean] * 3, blind)] == [False, None, True]
    training = batch_checks(preset, [clean], _result([clean], [fine], eval_mode=False))
    assert failed(training[0]) == ["eval_mode"]
    cw = batch_checks(PRESETS["cw-n"], [clean], _result([clean], [moved(1, 1, 0.3)]))
    assert cw[0]["eps_float"] is None and cw[0]["eps_png"] is None and failed(cw[0]) == []  # L2: no ball


def test_a_blind_attack_and_a_scorer_left_training_are_caught_on_the_real_tagger(
    tagger, demo, monkeypatch
) -> None:
    """The same flags through ``attack_batch`` on a real photo: logits that do not depend on the
    pixels (a detached preprocessing) give a zero first gradient; an attack that leaves the
    scorer in training mode is recorded, and the scorer is put back in eval mode."""
    mention = demo.mention("astronaut-0")
    image = to_tensor(load_rgb(mention.image_path))[None]
    labels = [candidate_prompt(demo.entities[q].label) for q in ("Q11631", "Q11641", "Q7251")]
    preset = PRESETS["pgd-n"].with_steps(1)
    gold = torch.tensor([int(tagger(image, None, [labels]).argmax())])
    real_forward = CandidateTarget.forward
    with monkeypatch.context() as patch:  # the real logits, detached: d loss / d pixels == 0
        patch.setattr(
            CandidateTarget, "forward", lambda self, xs: real_forward(self, xs).detach() + (xs[0] * 0).sum()
        )
        blind = attack_batch(tagger, preset, image, gold, [labels])
    assert float(blind.grad_norm[0]) == 0.0
    assert failed(batch_checks(preset, image, blind)[0]) == ["grad_nonzero"]

    import attacks.engine

    real_build = attacks.engine.build_attack

    def leaves_training(preset: Preset, target: CandidateTarget, *args: object, **kwargs: object):
        attack = real_build(preset, target, *args, **kwargs)

        def run(*call_args: object, **call_kwargs: object):
            found = attack(*call_args, **call_kwargs)
            target.scorer.train()
            return found

        return run

    monkeypatch.setattr(attacks.engine, "build_attack", leaves_training)
    trained = attack_batch(tagger, preset, image, gold, [labels])
    assert trained.eval_mode is False and not tagger.training  # recorded, then put back
    assert failed(batch_checks(preset, image, trained)[0]) == ["eval_mode"]


def test_presets_reach_the_attack_objects_and_dlr_needs_three_candidates(tagger) -> None:
    """Each Table 1 preset builds the attack it names with its own values; CW is ``FixedCW``
    (eq. 4), never stock ``torchattacks.CW``; APGD's DLR loss is refused under 3 candidates."""
    three = CandidateTarget(tagger, None, [["a photo of a cat", "a photo of a dog", "a photo of a car"]])
    built = {name: build_attack(preset, three) for name, preset in PRESETS.items()}
    for name in ("pgd-n", "pgd-s"):
        attack, preset = built[name], PRESETS[name]
        assert type(attack) is RowPGD and attack.random_start is True, name
        assert (attack.eps, attack.alpha, attack.steps) == (preset.eps, preset.alpha, preset.steps), name
    for name in ("apgd-n", "apgd-s"):
        attack, preset = built[name], PRESETS[name]
        assert type(attack) is RowAPGD and (attack.norm, attack.loss, attack.n_classes) == ("Linf", "ce", 3)
        assert (attack.eps, attack.steps) == (preset.eps, preset.steps), name
    for name in ("cw-n", "cw-s"):
        attack, preset = built[name], PRESETS[name]
        assert type(attack) is FixedCW and attack.f.__func__ is not torchattacks.CW.f, name
        assert (attack.c, attack.kappa, attack.steps, attack.lr) == (
            preset.c,
            preset.kappa,
            preset.steps,
            preset.lr,
        )
    assert build_attack(PRESETS["apgd-n"], three, loss="dlr").loss == "dlr"
    two = CandidateTarget(tagger, None, [["a photo of a cat", "a photo of a dog"]])
    with pytest.raises(ValueError, match="DLR loss needs >= 3 candidates, got 2"):
        build_attack(PRESETS["apgd-n"], two, loss="dlr")
    assert build_attack(PRESETS["apgd-n"], two).loss == "ce"  # cross-entropy runs on any count


@pytest.mark.parametrize("name", ["apgd-n", "apgd-s"])
def test_apgd_on_a_real_photo_stays_in_its_ball_and_fools_or_returns_the_clean_image(
    tagger, demo, name
) -> None:
    """APGD really runs (2 steps of each Table 1 preset): in the ε ball and [0, 1], every check
    passed, a non-zero first gradient; per AutoAttack, a photo it does not fool comes back clean."""
    images, labels, golds = [], [], []
    for mention_id, qids in (
        ("astronaut-0", ("Q11631", "Q11641", "Q7251")),
        ("chelsea-0", ("Q146", "Q144", "Q8486")),
    ):
        mention = demo.mention(mention_id)
        images.append(to_tensor(load_rgb(mention.image_path)))
        labels.append([candidate_prompt(demo.entities[q].label) for q in qids])
        golds.append(int(tagger(images[-1][None], None, [labels[-1]]).argmax()))
    preset = PRESETS[name].with_steps(2)
    result = attack_batch(tagger, preset, images, torch.tensor(golds), labels, None, seed=0, ids=["a", "b"])
    assert result.already_misclassified.tolist() == [False, False]
    flags = batch_checks(preset, images, result)
    for b, image in enumerate(images):
        delta = (result.adversarial[b] - image).abs().max()
        assert failed(flags[b]) == [] and flags[b]["grad_nonzero"] is True, (name, b, flags[b])
        assert float(delta) <= preset.eps + 1e-6 and 0 <= float(result.adversarial[b].min())
        fooled = int(result.adv_pred[b]) != golds[b]
        assert fooled == (float(delta) > 0), (name, b, fooled, float(delta))
    assert int((result.adv_pred != torch.tensor(golds)).sum()) >= 1, "the strong ball fools at least one"


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
    # a folder written before per-image seeding (its attack.json has no space and dtype) is refused
    identity_file = manifest.parent / "attack.json"
    old = {k: v for k, v in json.loads(identity_file.read_text()).items() if k not in ("space", "dtype")}
    identity_file.write_text(json.dumps(old))
    before = manifest.read_bytes()
    capsys.readouterr()
    assert generate.main(args(config, limit=4)) == 2
    assert "another attack configuration" in capsys.readouterr().err
    assert manifest.read_bytes() == before and json.loads(identity_file.read_text()) == old


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
