"""eval.run --attack: replay of stored adversarial images, drift, generation of missing ones, tables."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import private_cache, score_rows

from attacks import generate
from eval import run as eval_run
from eval.run import RunConfig, run
from eval.tables import CSV, MARKDOWN, PLOT, csv_text, markdown
from tools.scorers import load_scorer

FAST = {  # two PGD steps at 16/255: cheap, and strong enough to break some demo links
    "presets": {
        "pgd-fast": {"method": "pgd", "steps": 2, "eps": 16 / 255, "alpha": 8 / 255, "folder": "PGD-fast"}
    }
}
TABLE2_COLUMNS = ["RAW", "PGD-N", "PGD-S", "APGD-N", "APGD-S", "CW-N", "CW-S"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One thread, one real tagger for scoring and attacking, a private score cache.

    Scores are cached by image bytes: a shared cache would let a warm re-run of these tests
    answer the adversarial images from an earlier run without reading them. KB stores and
    text embeddings (pure functions of their inputs) stay shared.
    """
    import tools.scorers

    root = tmp_path_factory.mktemp("attack-eval")
    private_cache(root / "cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loaded 2-core box: two intra-op threads spin against each other
    tagger = load_scorer("tagger", task="i2t").eval()

    def shared_tagger(name: str, task: str, **kwargs: object) -> torch.nn.Module:
        assert (name, task, kwargs) == ("tagger", "i2t", {})
        return tagger

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEL_CACHE_DIR", str(root / "cache"))
        patch.setattr(tools.scorers, "load_scorer", shared_tagger)  # what eval.run's scorer loads
        patch.setattr(generate, "load_attack_scorer", lambda config: tagger)
        (root / "fast.json").write_text(json.dumps(FAST))
        yield root
    torch.set_num_threads(threads)


def attack_config(env: Path, adv: str = "adv", **changes: object) -> RunConfig:
    base = dict(
        dataset="demo",
        task="i2t",
        attack="pgd-fast",
        presets_file=str(env / "fast.json"),
        adv_dir=str(env / adv),
    )
    return RunConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def replayed(env: Path) -> dict:
    """The demo's 8 mentions, clean and under pgd-fast; the adversarial images do not exist yet."""
    return run(attack_config(env), env / "run", progress=False)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_missing_images_are_generated_and_drift_matches_the_item_lines(env: Path, replayed: dict) -> None:
    attacked = replayed["attacks"]["pgd-fast"]
    manifest = lines(env / "adv" / "PGD-fast" / "demo" / "manifest.jsonl")
    assert attacked["generated"] == 8 and len(manifest) == 8 and replayed["attack"] == ["pgd-fast"]
    assert attacked["made_by"]["scorer"] == "tagger" and attacked["made_by"]["task"] == "i2t"
    assert attacked["transfer"] is False and attacked["image_format"] == "png"
    assert attacked["manifest"]["n_check_failures"] == 0

    records = lines(env / "run" / "items.jsonl")
    assert len(records) == 16 and len({(r["condition"], r["seed"], r["id"]) for r in records}) == 16
    clean = {r["id"]: r for r in records if r["condition"] == "clean"}
    adv = {r["id"]: r for r in records if r["condition"] == "pgd-fast"}
    assert set(clean) == set(adv) and all(r["error"] is None for r in records)
    for mention_id, record in adv.items():  # the same candidate set, another image
        assert record["candidates"] == clean[mention_id]["candidates"]
        assert (env / "adv" / record["adv_file"]).is_file() and record["adv_file"].endswith(".png")
    n = len(adv)
    correct = [i for i in clean if clean[i]["correct"]]
    expected = {
        "n": n,
        "acc_drop": sum(clean[i]["correct"] for i in clean) / n - sum(adv[i]["correct"] for i in adv) / n,
        "flip_rate": sum(clean[i]["prediction"] != adv[i]["prediction"] for i in adv) / n,
        "attack_success": sum(not adv[i]["correct"] for i in correct) / len(correct),
        "gold_rank_shift": sum(adv[i]["rank"] - clean[i]["rank"] for i in adv) / n,
    }
    assert attacked["drift"] == pytest.approx(expected, abs=1e-4)
    assert attacked["metrics"]["acc@1"]["mean"] == pytest.approx(sum(r["correct"] for r in adv.values()) / n)
    assert attacked["n"] == n and replayed["n"] == n  # the clean part keeps its schema
    assert attacked["drift"]["acc_drop"] > 0 and attacked["drift"]["attack_success"] > 0  # it does bite
    # the replayed PNG is what the generator saved: its prediction there is the replayed top-1
    for record in manifest:
        if not record["already_misclassified"]:
            assert adv[record["id"]]["prediction"] == record["png_prediction"]


def test_manifest_norms_are_those_of_the_saved_files(env: Path, replayed: dict) -> None:
    """Each manifest line's Linf and L2, recomputed from its saved ``.pt`` and ``.png`` and the
    clean photo (not read back from the generator's own arithmetic)."""
    from kb.dataset import load_dataset
    from kb.images import load_rgb, to_tensor

    demo = load_dataset("demo")
    folder = env / "adv" / "PGD-fast" / "demo"
    records = lines(folder / "manifest.jsonl")
    for record in records:
        clean = to_tensor(load_rgb(demo.mention(record["id"]).image_path)).double()
        delta = torch.load(folder / record["pt"]).double() - clean
        png = torch.from_numpy(np.array(Image.open(folder / record["png"]))).permute(2, 0, 1)
        delta_png = (png.float() / 255).double() - clean  # float32 pixels, as the generator holds them
        recomputed = {
            "linf": float(delta.abs().max()),
            "l2": float(torch.linalg.vector_norm(delta)),
            "linf_png": float(delta_png.abs().max()),
            "l2_png": float(torch.linalg.vector_norm(delta_png)),
        }
        # Linf: exact but for the manifest's 6 decimals; L2: a float32 sum over up to millions of
        # squares, a float64 reference differs by up to 5.6e-5 relative (measured, rocket-0)
        assert [record["linf"], record["linf_png"]] == pytest.approx(
            [recomputed["linf"], recomputed["linf_png"]], rel=0, abs=1e-6
        ), record["id"]
        assert [record["l2"], record["l2_png"]] == pytest.approx(
            [recomputed["l2"], recomputed["l2_png"]], rel=2e-4, abs=1e-6
        ), record["id"]
        assert recomputed["linf_png"] <= 16 / 255 + 1e-6
        assert (recomputed["linf"] > 0) is not record["already_misclassified"], record
    assert sum(record["linf"] > 0 for record in records) >= 3  # norms of images the attack moved


def test_tables_have_the_table_2_columns(env: Path, replayed: dict) -> None:
    out = env / "run"
    header = next(line for line in (out / MARKDOWN).read_text().splitlines() if line.startswith("| Model"))
    wanted = [f"{task} {c}" for task in ("I2T", "IT2T") for c in [*TABLE2_COLUMNS, "pgd-fast"]]
    assert [c.strip() for c in header.strip("|").split("|")] == ["Model", *wanted]
    csv_lines = (out / CSV).read_text().splitlines()
    assert csv_lines[0].split(",") == ["Dataset", "Model", *wanted]
    row = dict(zip(csv_lines[0].split(","), csv_lines[1].split(","), strict=True))
    assert row["Dataset"] == "demo" and row["Model"] == "tagger"
    assert float(row["I2T RAW"]) == pytest.approx(replayed["metrics"]["acc@1"]["mean"] * 100, abs=0.01)
    pgd = replayed["attacks"]["pgd-fast"]["metrics"]["acc@1"]["mean"] * 100
    assert float(row["I2T pgd-fast"]) == pytest.approx(pgd, abs=0.01) and row["IT2T RAW"] == ""
    assert (out / PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / PLOT).stat().st_size > 5000


def test_cli_prints_the_table(env: Path, replayed: dict, capsys: pytest.CaptureFixture) -> None:
    argv = ["--dataset", "demo", "--task", "i2t", "--attack", "pgd-fast", "--presets-file"]
    argv += [str(env / "fast.json"), "--adv-dir", str(env / "adv"), "--out", str(env / "run"), "--quiet"]
    assert eval_run.main(argv) == 0  # everything is done: the same folder resumes, nothing rescored
    printed = capsys.readouterr().out
    assert "| Model | I2T RAW | I2T PGD-N |" in printed and "pgd-fast: acc@1" in printed
    assert len(lines(env / "run" / "items.jsonl")) == 16


def test_resume_after_a_cut_in_the_attack_lines(
    env: Path, replayed: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resumed run gets an empty score cache of its own: it scores the 5 lost attack lines
    again instead of reading back the logits the full run stored for the same image bytes."""
    items = (env / "run" / "items.jsonl").read_text().splitlines()
    cut = env / "cut"
    cut.mkdir()
    shutil.copy(env / "run" / "config.json", cut / "config.json")
    (cut / "items.jsonl").write_text("\n".join(items[:11]) + "\n" + items[11][:50])  # 3 attack lines kept
    fresh = private_cache(env / "resume-cache")
    monkeypatch.setenv("MEL_CACHE_DIR", str(fresh))
    resumed = run(attack_config(env), cut, progress=False)
    assert score_rows(fresh) == 5, "the 5 attack lines the cut lost were scored again"
    assert resumed["metrics"] == replayed["metrics"]
    for key in ("metrics", "drift", "n", "skipped"):
        assert resumed["attacks"]["pgd-fast"][key] == replayed["attacks"]["pgd-fast"][key]
    assert resumed["attacks"]["pgd-fast"]["generated"] == 0  # the images were already there
    records = lines(cut / "items.jsonl")
    assert len(records) == 16 and len({(r["condition"], r["id"]) for r in records}) == 16


def test_partial_set_is_completed_and_a_lost_file_is_a_recorded_skip(env: Path) -> None:
    first = run(attack_config(env, "adv-part", limit=2), env / "part2", progress=False)
    manifest = env / "adv-part" / "PGD-fast" / "demo" / "manifest.jsonl"
    before = lines(manifest)
    assert first["attacks"]["pgd-fast"]["generated"] == 2 and len(before) == 2
    second = run(attack_config(env, "adv-part", limit=4), env / "part4", progress=False)
    after = lines(manifest)
    assert second["attacks"]["pgd-fast"]["generated"] == 2 and len(after) == 4 and after[:2] == before
    assert second["attacks"]["pgd-fast"]["n"] == 4
    (manifest.parent / f"{after[3]['id']}.png").unlink()
    third = run(attack_config(env, "adv-part", limit=4), env / "part4-lost", progress=False)
    attacked = third["attacks"]["pgd-fast"]
    assert attacked["skipped"] == {"adv_file_missing": 1} and attacked["n"] == 3
    assert attacked["generated"] == 0 and attacked["drift"]["n"] == 3 and len(lines(manifest)) == 4


def test_a_transfer_set_is_replayed_as_it_is(env: Path, replayed: dict) -> None:
    folder = env / "adv-transfer" / "PGD-fast" / "demo"
    shutil.copytree(env / "adv" / "PGD-fast" / "demo", folder)
    identity = json.loads((folder / "attack.json").read_text())
    (folder / "attack.json").write_text(json.dumps({**identity, "scorer": "clip:elsewhere"}))
    kept = lines(folder / "manifest.jsonl")[:6]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    for gone in {p.stem for p in folder.glob("*.png")} - {r["id"] for r in kept}:
        (folder / f"{gone}.png").unlink()
    result = run(attack_config(env, "adv-transfer"), env / "transfer", progress=False)
    attacked = result["attacks"]["pgd-fast"]
    assert attacked["transfer"] is True and attacked["made_by"]["scorer"] == "clip:elsewhere"
    assert attacked["generated"] == 0 and len(lines(folder / "manifest.jsonl")) == 6  # never written to
    assert attacked["skipped"] == {"adv_missing": 2} and attacked["n"] == 6


def test_pt_format_replays_the_float_tensors(env: Path, replayed: dict) -> None:
    result = run(attack_config(env, adv_format="pt"), env / "pt", progress=False)
    attacked = result["attacks"]["pgd-fast"]
    assert attacked["image_format"] == "pt" and attacked["n"] == 8 and attacked["generated"] == 0
    records = [r for r in lines(env / "pt" / "items.jsonl") if r["condition"] == "pgd-fast"]
    assert all(r["adv_file"].endswith(".pt") for r in records)
    manifest = {r["id"]: r for r in lines(env / "adv" / "PGD-fast" / "demo" / "manifest.jsonl")}
    for record in records:  # the float adversarial scores as the generator saw it
        assert record["prediction"] == manifest[record["id"]]["adv_prediction"]


def test_attack_needs_an_image_task_and_a_known_preset(env: Path) -> None:
    with pytest.raises(ValueError, match="image task"):
        run(attack_config(env, task="t2t"), env / "t2t", progress=False)
    with pytest.raises(ValueError, match="unknown attack preset"):
        run(attack_config(env, attack="fgsm"), env / "fgsm", progress=False)
    assert not (env / "t2t").exists() and not (env / "fgsm").exists()


def _results(task: str, scorer: str, raw: float, attacks: dict[str, float]) -> dict:
    metric = {"acc@1": {"mean": raw, "std": 0.0}}
    return {
        "dataset": "wikimel",
        "task": task,
        "scorer": scorer,
        "split": "all",
        "candidates": 10,
        "n": 26,
        "metrics": metric,
        "attacks": {p: {"n": 26, "metrics": {"acc@1": {"mean": v, "std": 0.0}}} for p, v in attacks.items()},
    }


def test_table_layout_merges_tasks_and_scorers() -> None:
    runs = [
        _results("i2t", "tagger", 0.5, {"cw-s": 0.1, "pgd-n": 0.3}),
        _results("it2t", "tagger", 0.6, {"pgd-s": 0.2}),
        _results("i2t", "mcr", 0.4, {}),
        {**_results("t2t", "tagger", 0.9, {}), "attacks": None},  # not a Table 2 task
    ]
    text = markdown(runs)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header == ["Model", *(f"{t} {c}" for t in ("I2T", "IT2T") for c in TABLE2_COLUMNS)]
    tagger = [c.strip() for c in rows[1].strip("|").split("|")]
    assert tagger == ["tagger", "50.0", "30.0", "–", "–", "–", "–", "10.0", "60.0", "–", "20.0"] + ["–"] * 4
    assert rows[2].startswith("| mcr | 40.0 | –") and text.startswith("### wikimel")
    table = csv_text(runs).splitlines()
    assert table[1].startswith("wikimel,tagger,50.0,30.0,,,,,10.0,60.0,,20.0,")
