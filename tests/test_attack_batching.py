"""Mixed-size batches, per-image seeds, precision and model-input space, on the real tagger and the
demo photos (8 real photographs, 6 sizes from 300x451 to 600x512), float32 on CPU, one thread.

Tolerance (float32, CPU): an image's logits and gradient in a mixed batch equal the plain
scorer's on it alone within atol 5e-5 on the logits (cosine x 100: 5e-7 in cosine, a few ulp of
logits near 64) and atol 1e-5 on the gradient (max |grad| 0.1 to 8); measured gaps 1.1e-5 and
3.4e-6, from MKL's single-row gemv against its gemm. Through the attack target they are the same
bits, and so is the adversarial's ``.pt``: row by row (the engine's CPU setting), or stacked with
every call padded to the batch's 8 rows (its CUDA setting, ``attacks.engine.model_calls``). A
call padded to only 2 rows is not enough on every CPU: on an AMD EPYC (AVX-512) it moved logits
by up to 1.9e-5 against a call of >= 4 rows, so the stacked checks use the engine's own padding.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from attacks import bench, generate  # noqa: E402
from attacks.engine import attack_batch, model_calls  # noqa: E402
from attacks.presets import Preset  # noqa: E402
from attacks.target import CandidateTarget  # noqa: E402
from attacks.window import support, view  # noqa: E402
from kb.dataset import load_dataset  # noqa: E402
from kb.images import load_rgb, to_tensor  # noqa: E402
from tools.scorers import load_scorer  # noqa: E402
from tools.scorers.base import PixelPreprocess  # noqa: E402

PGD = Preset("pgd-1", "pgd", 1, "Linf", eps=8 / 255, alpha=2 / 255)
APGD = Preset("apgd-2", "apgd", 2, "Linf", eps=8 / 255)
STACKED = model_calls("cuda", 8)  # the engine's CUDA setting: one call per pass, padded to the batch of 8
FAST = {
    "presets": {
        "pgd-fast": {"method": "pgd", "steps": 1, "eps": 8 / 255, "alpha": 2 / 255},
        "cw-fast": {"method": "cw", "steps": 1, "c": 20.0, "lr": 0.01, "kappa": 0.0},
    }
}


@pytest.fixture(scope="module")
def tagger():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: what the batch-invariance claims are measured at
    yield load_scorer("tagger", task="i2t").eval()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photos(tagger):
    """(ids, images, candidate texts, clean top-1) of the 8 demo mentions, as the generator sees them."""
    demo = load_dataset("demo")
    mentions, _ = generate.attackable(demo, "test", None)
    items = generate.prepare_items(demo, mentions, generate.GenerateConfig(dataset="demo"))
    cache = generate.ImageCache()
    images = [cache.get(item.mention) for item in items]
    texts = [item.candidate_texts for item in items]
    with torch.no_grad():
        top = CandidateTarget(tagger, None, texts, min_rows=2)(images).argmax(dim=1)
    assert len({tuple(x.shape) for x in images}) >= 5  # the batch really mixes sizes
    return [item.mention.id for item in items], images, texts, top


def logits_and_grads(target: CandidateTarget, images: list[torch.Tensor], labels: torch.Tensor):
    leaves = [x.clone().requires_grad_(True) for x in images]
    logits = target(leaves)
    grads = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), leaves)
    return logits.detach(), grads


def test_mixed_batch_logits_and_gradients_equal_alone(tagger, photos) -> None:
    _, images, texts, top = photos
    with torch.no_grad():  # the runner-up as label: a cross-entropy far from saturated, O(1) gradients
        labels = CandidateTarget(tagger, None, texts, min_rows=2)(images).topk(2, dim=1).indices[:, 1]
    logits, grads = logits_and_grads(CandidateTarget(tagger, None, texts, **STACKED), images, labels)
    for b, image in enumerate(images):
        pixels = image[None].clone().requires_grad_(True)  # the plain scorer, its own preprocessing
        alone = tagger(pixels, None, [texts[b]])
        (grad,) = torch.autograd.grad(F.cross_entropy(alone, labels[b : b + 1], reduction="sum"), [pixels])
        assert torch.allclose(logits[b], alone[0].detach(), rtol=0, atol=5e-5), b
        assert torch.allclose(grads[b], grad[0], rtol=0, atol=1e-5), b
        assert float(grad.abs().max()) > 1e-2  # a gradient worth comparing
    for b in (0, 3):  # through the target alone, padded as the engine pads: the same bits as in the batch
        one, (grad,) = logits_and_grads(
            CandidateTarget(tagger, None, [texts[b]], **STACKED), [images[b]], labels[b : b + 1]
        )
        assert torch.equal(one[0], logits[b]) and torch.equal(grad, grads[b]), b


def pt_bytes(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(image.detach().cpu().contiguous(), buffer)  # what attacks.output.write_tensor stores
    return buffer.getvalue()


CALLS = {
    "row-calls": {"rows_per_call": 1, "min_rows": 1},  # the engine's CPU setting
    "stacked": STACKED,  # its CUDA setting, on CPU
}


@pytest.mark.parametrize("calls", list(CALLS))
@pytest.mark.parametrize("preset", [PGD, APGD], ids=lambda p: p.name)
def test_pt_is_the_same_bytes_alone_and_in_a_batch_of_8(tagger, photos, preset, calls) -> None:
    ids, images, texts, top = photos
    labels = top.clone()
    labels[[2, 6]] = (labels[[2, 6]] + 1) % len(texts[0])  # two rows already wrong: 6 attacked, not 2^k
    batch = attack_batch(tagger, preset, images, labels, texts, None, 0, ids, **CALLS[calls])
    assert batch.already_misclassified.tolist() == [False, False, True, False, False, False, True, False]
    for b in (0, 3):  # 600x512 and 427x640, attacked alone
        alone = attack_batch(
            tagger, preset, [images[b]], labels[b : b + 1], [texts[b]], None, 0, [ids[b]], **CALLS[calls]
        )
        assert float((alone.adversarial[0] - images[b]).abs().max()) > 0
        assert pt_bytes(alone.adversarial[0]) == pt_bytes(batch.adversarial[b]), (preset.name, ids[b])
    other_seed = attack_batch(tagger, preset, [images[0]], labels[:1], [texts[0]], None, 1, [ids[0]])
    assert pt_bytes(other_seed.adversarial[0]) != pt_bytes(batch.adversarial[0])  # the seed matters


@pytest.mark.parametrize("calls", list(CALLS))
def test_a_batch_costs_steps_backward_passes_and_three_more_forwards(tagger, photos, calls) -> None:
    """The engine's docstring: one clean forward, ``steps`` forward-backward passes and two
    re-scoring forwards, counted on the real tagger's own calls (a hook, the real forward runs).
    Row calls make each pass one call per image; stacked calls one per pass."""
    ids, images, texts, top = photos
    steps, rows = 3, [0, 1, 3]
    preset = Preset("pgd-3", "pgd", steps, "Linf", eps=8 / 255, alpha=2 / 255)
    counts = {"forward": 0, "with_grad": 0, "backward": 0}

    def count(module, inputs, output) -> None:
        counts["forward"] += 1
        if output.requires_grad:
            counts["with_grad"] += 1
            output.register_hook(lambda grad: counts.__setitem__("backward", counts["backward"] + 1))

    handle = tagger.register_forward_hook(count)
    try:
        attack_batch(
            tagger,
            preset,
            [images[i] for i in rows],
            top[rows],
            [texts[i] for i in rows],
            None,
            0,
            [ids[i] for i in rows],
            **CALLS[calls],
        )
    finally:
        handle.remove()
    per_pass = len(rows) if calls == "row-calls" else 1
    assert counts == {
        "forward": (steps + 3) * per_pass,
        "with_grad": steps * per_pass,
        "backward": steps * per_pass,
    }


PREPROCESSING = {
    "tagger": lambda tagger: tagger.preprocess,  # short side 256, centre crop 224
    "clip": lambda _: PixelPreprocess(224, resize_mode="shortest", crop_size=224),
    "open_clip": lambda _: PixelPreprocess(224, resize_mode="longest"),  # resize + zero pad
    "upscale": lambda _: PixelPreprocess(1024, resize_mode="shortest", crop_size=1000),
}


@pytest.mark.parametrize("kind", list(PREPROCESSING))
def test_gradient_is_zero_outside_the_support_window(tagger, shared_mel: Path, kind: str) -> None:
    """Real photos (a portrait and two landscapes, 0.1 to 8 megapixels): every pixel with a
    gradient lies in the window the Linf attacks update, and crops do leave pixels out."""
    preprocess = PREPROCESSING[kind](tagger)
    cut = 0
    for name in ("13295.jpg", "3199.jpg", "1342.jpg"):
        image = to_tensor(load_rgb(shared_mel / "wikimel" / "images" / name))[None].requires_grad_(True)
        out = preprocess.resize_crop(image)
        weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(0)) + 0.5
        (grad,) = torch.autograd.grad((out * weights).sum(), [image])
        window = support(preprocess, *image.shape[-2:])
        outside = grad.clone()
        view(outside, window).zero_()
        assert float(outside.abs().max()) == 0.0, (kind, name, window)
        rows = grad[0].abs().amax(dim=(0, 2)).nonzero().flatten()  # the pixels that do matter
        cols = grad[0].abs().amax(dim=(0, 1)).nonzero().flatten()
        slack = 2 * (2 * max(image.shape[-1] / out.shape[-1], image.shape[-2] / out.shape[-2], 1) + 6)
        assert window[1] - window[0] - (int(rows[-1]) + 1 - int(rows[0])) <= slack  # and it is tight
        assert window[3] - window[2] - (int(cols[-1]) + 1 - int(cols[0])) <= slack
        cut += image[0, 0].numel() - view(image[0, 0], window).numel()
    assert (cut > 0) == (kind != "open_clip")  # a centre crop hides part of every photo; a pad none


def test_windowed_updates_are_the_same_bits_as_whole_image_updates(tagger, photos, monkeypatch) -> None:
    ids, images, texts, top = photos
    picked = [0, 3]  # 600x512 (portrait: rows cut) and 427x640 (landscape: columns cut)
    args = (
        [images[b] for b in picked],
        top[picked],
        [texts[b] for b in picked],
        None,
        0,
        [ids[b] for b in picked],
    )
    windowed = {p.name: attack_batch(tagger, p, *args) for p in (PGD, APGD)}
    monkeypatch.setattr(
        CandidateTarget, "windows", lambda self, xs: [(0, x.shape[-2], 0, x.shape[-1]) for x in xs]
    )
    for preset in (PGD, APGD):
        whole = attack_batch(tagger, preset, *args)
        for a, b in zip(windowed[preset.name].adversarial, whole.adversarial, strict=True):
            assert pt_bytes(a) == pt_bytes(b), preset.name


def _run(tmp_path: Path, name: str, **settings) -> Path:
    presets = tmp_path / "fast.json"
    presets.write_text(json.dumps(FAST))
    config = generate.GenerateConfig(dataset="demo", preset_file=str(presets), **settings)
    generate.run(config, tmp_path / name, progress=False)
    return tmp_path / name


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_precision_is_recorded_and_cw_stays_float32(tagger, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(generate, "load_attack_scorer", lambda config: tagger)
    out = _run(tmp_path, "adv", attack="pgd-fast,cw-fast", limit=2, dtype="bfloat16")
    pgd = _lines(out / "PGD-pgd-fast" / "demo" / "manifest.jsonl")
    cw = _lines(out / "CW-cw-fast" / "demo" / "manifest.jsonl")
    assert {r["dtype"] for r in pgd} == {"bfloat16"} and {r["dtype"] for r in cw} == {"float32"}
    assert [r["batch_size"] for r in pgd] == [2, 2] and all(r["space"] == "pixels" for r in pgd)
    assert all(r["checks_failed"] == [] for r in pgd + cw)  # eps, range, rounding checked in float32
    assert json.loads((out / "PGD-pgd-fast" / "demo" / "attack.json").read_text())["dtype"] == "bfloat16"
    presets = str(tmp_path / "fast.json")
    refused = generate.main(
        ["--dataset", "demo", "--attack", "pgd-fast", "--presets-file", presets, "--out", str(out), "--quiet"]
    )
    assert refused == 2  # a float32 run does not resume a bfloat16 folder
    again = [
        "--dataset",
        "demo",
        "--attack",
        "cw-fast",
        "--presets-file",
        presets,
        "--out",
        str(out),
        "--quiet",
    ]
    assert generate.main([*again, "--limit", "2"]) == 0  # CW is float32 whatever --dtype: the same folder


def test_model_input_space_attacks_the_scorers_input(tagger, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(generate, "load_attack_scorer", lambda config: tagger)
    out = _run(tmp_path, "adv", attack="pgd-fast", limit=2, space="model-input")
    folder = out / "PGD-pgd-fast" / "demo"
    records = _lines(folder / "manifest.jsonl")
    assert json.loads((folder / "attack.json").read_text())["space"] == "model-input"
    for record in records:
        assert record["space"] == "model-input" and record["shape"] == [224, 224]
        assert record["source_shape"] != [224, 224] and record["checks_failed"] == []
        assert tuple(torch.load(folder / record["pt"]).shape) == (3, 224, 224)
        assert record["linf_png"] <= 8 / 255 + 1e-6  # the clean input is on the 8-bit grid
    presets = str(tmp_path / "fast.json")
    args = [
        "--dataset",
        "demo",
        "--attack",
        "pgd-fast",
        "--presets-file",
        presets,
        "--out",
        str(out),
        "--quiet",
    ]
    assert generate.main(args) == 2  # a pixel-space run does not resume a model-input folder


def test_eval_run_replays_a_model_input_set_through_full_preprocessing(
    tagger, photos, tmp_path: Path, monkeypatch
) -> None:
    """A model-input set (3 × 224 × 224 tensors) replayed by ``eval.run --attack --adv-format pt``
    is scored as any image: the scorer's whole preprocessing (short side 256, centre crop 224)
    runs on it, so the item line's scores are the tagger's on the file, not the attack's own
    scores with the resize skipped."""
    from support import private_cache

    from eval.run import RunConfig, run

    monkeypatch.setattr(generate, "load_attack_scorer", lambda config: tagger)
    monkeypatch.setenv("MEL_CACHE_DIR", str(private_cache(tmp_path / "cache", ("kb",))))
    out = _run(tmp_path, "adv", attack="pgd-fast", limit=2, space="model-input")
    config = RunConfig(
        dataset="demo",
        task="i2t",
        limit=2,
        attack="pgd-fast",
        presets_file=str(tmp_path / "fast.json"),
        adv_dir=str(out),
        adv_format="pt",
    )
    run(config, tmp_path / "replay", progress=False)
    ids, _, texts, _ = photos
    folder = out / "PGD-pgd-fast" / "demo"
    files = {r["id"]: folder / r["pt"] for r in _lines(folder / "manifest.jsonl")}
    lines = [r for r in _lines(tmp_path / "replay" / "items.jsonl") if r["condition"] == "pgd-fast"]
    assert len(lines) == 2
    for line in lines:
        pixels = torch.load(files[line["id"]])[None]
        assert tuple(pixels.shape) == (1, 3, 224, 224)
        candidates = [texts[ids.index(line["id"])]]
        with torch.no_grad():
            full = tagger(pixels, None, candidates)[0]
            with tagger.preprocess.inputs_resized():
                skipped = tagger(pixels, None, candidates)[0]
        assert line["scores"] == pytest.approx(full.tolist(), abs=1e-4)
        assert float((full - skipped).abs().max()) > 1e-3, "the 256-then-224 resize changes the input"


def test_bench_prints_the_overhead_beside_the_per_image_ratio(capsys) -> None:
    argv = ["--limit", "2", "--steps", "1", "--attack", "pgd-n", "--threads", "1", "--peak-tflops", "0.5"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    row = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert row["overhead"] > 0 and row["ratio"] > 0 and row["bare_img_s"] > 0 and row["tflops"] > 0
    assert row["peak_share"] == round(row["tflops"] / 0.5, 4), "--peak-tflops gives the share of the peak"
    assert "overhead vs bare steps x (forward + backward)" in out and "per-image ratio" in out


def test_bench_random_scorer_is_the_real_open_clip_architecture_untrained() -> None:
    """``--scorer random:ViT-B-32-quickgelu``: open_clip's ViT-B/32 class with OpenAI's shapes
    (patch 32, width 768, 12 layers, a 512-d embedding), seeded random weights, scoring pixels."""
    import open_clip

    scorer = bench.load_bench_scorer("random:ViT-B-32-quickgelu", "cpu")
    model = next(m for m in scorer.modules() if isinstance(m, open_clip.CLIP))
    visual = model.visual
    assert visual.conv1.kernel_size == (32, 32) and visual.conv1.out_channels == 768
    assert len(visual.transformer.resblocks) == 12 and model.text_projection.shape == (512, 512)
    again = bench.load_bench_scorer("random:ViT-B-32-quickgelu", "cpu")
    first = next(m for m in again.modules() if isinstance(m, open_clip.CLIP)).visual.conv1.weight
    assert torch.equal(first, visual.conv1.weight), "seeded: the same random weights every run"
    assert float(visual.conv1.weight.std()) < 0.1, "random initialisation, not loaded weights"
    with torch.no_grad():
        logits = scorer(torch.rand(1, 3, 300, 400), None, [["a photo of a cat", "a photo of a dog"]])
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_generate_writes_the_same_files_in_batches_of_8_and_of_1(tagger, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(generate, "load_attack_scorer", lambda config: tagger)
    presets = {"presets": {**FAST["presets"], "apgd-fast": {"method": "apgd", "steps": 2, "eps": 8 / 255}}}
    (tmp_path / "p.json").write_text(json.dumps(presets))
    runs = {}
    for size in (8, 1):
        config = generate.GenerateConfig(
            dataset="demo",
            attack="pgd-fast,apgd-fast,cw-fast",
            preset_file=str(tmp_path / "p.json"),
            batch_size=size,
        )
        generate.run(config, tmp_path / f"b{size}", progress=False)
        runs[size] = tmp_path / f"b{size}"
    files = sorted(runs[8].glob("*/demo/*.p*"))
    assert len(files) == 3 * 8 * 2
    for path in files:
        assert path.read_bytes() == (runs[1] / path.relative_to(runs[8])).read_bytes(), path
    for manifest in runs[8].glob("*/demo/manifest.jsonl"):
        eight, one = _lines(manifest), _lines(runs[1] / manifest.relative_to(runs[8]))
        assert {r["batch_size"] for r in eight} == {8} and {r["batch_size"] for r in one} == {1}
        volatile = {"batch_size": 0, "seconds": 0}
        assert [{**r, **volatile} for r in eight] == [{**r, **volatile} for r in one]
