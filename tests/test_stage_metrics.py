"""An agent run's stages and intervals recomputed from its own item lines, seed paper Tables 3 and
4 rendered from them, and ``agent.trace show`` printing the judge's three distributions.

The runs are real ``eval.run`` calls on the demo dataset (describer, wiki replica, Chroma, SQLite,
a 2-step PGD, the tagger). The LLM is a real HTTP server on 127.0.0.1
(``openai_faults_server``) that answers "2" with fixed ``top_logprobs``, so the judge gives a
known distribution and every decision goes through the fusion.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from openai_faults_server import MODEL, fault_server
from support import private_cache

from eval.run import RunConfig, run
from eval.tables import collect, markdown
from kb.dataset import load_dataset

JUDGE = {"2": 0.7, "1": 0.2, "3": 0.1}
PRESET = {
    "presets": {
        "pgd-two": {"method": "pgd", "steps": 2, "eps": 16 / 255, "alpha": 8 / 255, "folder": "PGD-two"}
    }
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("stages")
    private_cache(root / "cache")
    (root / "preset.json").write_text(json.dumps(PRESET))
    common = dict(
        dataset="demo", task="i2t", candidates=3, attack="pgd-two", presets_file=str(root / "preset.json")
    )
    common["adv_dir"] = str(root / "adv")
    with pytest.MonkeyPatch.context() as patch, fault_server(answer="2", top_logprobs=JUDGE) as server:
        patch.setenv("MEL_CACHE_DIR", str(root / "cache"))
        flags = {"llm_base_url": server.url, "llm_model": MODEL}
        results = {
            "prerank": run(RunConfig(**common), root / "prerank", progress=False),
            "agent": run(
                RunConfig(**common, pipeline="agent", agent_flags=flags), root / "agent", progress=False
            ),
            "mllm": run(
                RunConfig(**common, pipeline="mllm", agent_flags=flags), root / "mllm", progress=False
            ),
        }
    return {"root": root, **results}


def lines(run_results: dict, condition: str = "clean") -> list[dict]:
    records = [json.loads(line) for line in Path(run_results["items"]).read_text().splitlines()]
    order = {m.id: i for i, m in enumerate(load_dataset("demo").mentions)}
    return sorted((r for r in records if r["condition"] == condition), key=lambda r: order[r["id"]])


def gold_rank(scores: list[float], gold: int) -> int:
    """1 + the candidates scoring at least the gold's, itself excluded (ties count against it)."""
    return 1 + sum(1 for i, s in enumerate(scores) if i != gold and s >= scores[gold])


def percentile_interval(statistic: np.ndarray) -> list[float]:
    low, high = np.percentile(statistic, [2.5, 97.5])
    return [round(float(low), 6), round(float(high), 6)]


def test_every_stage_is_recomputed_from_the_item_lines(runs: dict) -> None:
    """``model`` is the prerank run's rank of the same item (static prompts), ``model*`` the gold's
    rank in the agent's pre-ranker scores on enriched descriptions, ``agent`` the final decision;
    each stage's acc@1 and the three paired differences follow from those ranks."""
    agent = runs["agent"]
    assert set(agent["stages"]) == {"model", "model*", "agent"}
    assert set(agent["stage_differences"]) == {"model*-model", "agent-model*", "agent-model"}
    bare = {r["id"]: r for r in lines(runs["prerank"])}
    ranks: dict[str, list[int]] = {"model": [], "model*": [], "agent": []}
    for record in lines(agent):
        stages = record["stages"]
        gold = record["candidates"].index(record["gold"])
        assert stages["model"]["rank"] == bare[record["id"]]["rank"]
        assert stages["model*"]["rank"] == gold_rank(record["prerank_scores"], gold)
        assert stages["agent"]["rank"] == record["rank"]
        for stage in ranks:
            ranks[stage].append(stages[stage]["rank"])
    accuracy = {stage: sum(r == 1 for r in values) / len(values) for stage, values in ranks.items()}
    for stage, value in accuracy.items():
        assert agent["stages"][stage]["n"] == 8
        assert agent["stages"][stage]["metrics"]["acc@1"]["mean"] == pytest.approx(value)
        mrr = sum(1 / r for r in ranks[stage]) / 8
        assert agent["stages"][stage]["metrics"]["mrr"]["mean"] == pytest.approx(mrr, abs=1e-6)
    for pair, difference in agent["stage_differences"].items():
        after, before = pair.split("-", 1)
        assert difference["acc@1"] == pytest.approx(accuracy[after] - accuracy[before]), pair
    assert set(agent["attacks"]["pgd-two"]["drift_ci95"]["stages"]) == {"model", "model*", "agent"}
    decided = [r["judge"] for r in lines(agent)]
    assert decided and all(d != "fallback" for d in decided), "every decision was the fused judge's"


def test_ci95_and_drift_ci95_are_the_seeded_percentile_bootstrap(runs: dict) -> None:
    """1,000 resamples of the mentions from ``numpy.random.default_rng(0)``, percentile 2.5/97.5;
    the accuracy drop resamples the same mentions clean and attacked (paired)."""
    from eval.metrics import bootstrap_ci

    results = runs["prerank"]
    clean = np.array([r["rank"] for r in lines(results)], dtype=float)
    attacked_by_id = {r["id"]: r["rank"] for r in lines(results, "pgd-two")}
    attacked = np.array([attacked_by_id[r["id"]] for r in lines(results)], dtype=float)
    rows = np.random.default_rng(0).integers(0, len(clean), size=(1000, len(clean)))
    assert results["ci95"]["acc@1"] == percentile_interval((clean[rows] == 1).mean(axis=1))
    assert results["ci95"]["mrr"] == percentile_interval((1 / clean[rows]).mean(axis=1))
    drop = (clean[rows] == 1).mean(axis=1) - (attacked[rows] == 1).mean(axis=1)
    assert results["attacks"]["pgd-two"]["drift_ci95"]["acc_drop"] == percentile_interval(drop)
    assert results["ci95"]["acc@1"][0] < results["ci95"]["acc@1"][1], "7 of 8 right: a real interval"
    wide = np.array([1, 2, 1, 3, 1, 1, 2, 1, 1, 4], dtype=float)
    assert bootstrap_ci(wide, seed=0) == bootstrap_ci(wide, seed=0)
    assert bootstrap_ci(wide, seed=0) != bootstrap_ci(wide, seed=1), "the seed is used"


def test_tables_3_and_4_come_from_the_stages_and_the_mllm_run(runs: dict) -> None:
    """Table 3's Model and Model* cells are the agent run's ``model`` and ``model*`` acc@1 (clean
    and attacked); Table 4 holds the MLLM row (the LLM's name) and the MLLM* row (its name with
    ``*``: the agent with that LLM as judge)."""
    agent, mllm = runs["agent"], runs["mllm"]
    cells, _ = collect([agent], "table3")
    rows = cells["demo"]
    assert set(rows) == {"tagger", "tagger*"}
    for row, stage in (("tagger", "model"), ("tagger*", "model*")):
        values = {column: value for (task, column), value in rows[row].items() if task == "i2t"}
        assert values["RAW"] == pytest.approx(agent["stages"][stage]["metrics"]["acc@1"]["mean"] * 100)
        attacked = agent["attacks"]["pgd-two"]["stages"][stage]["metrics"]["acc@1"]["mean"] * 100
        assert attacked in [pytest.approx(v) for c, v in values.items() if c != "RAW"]
    assert agent["llm"] == mllm["llm"] == MODEL
    table4, _ = collect([mllm, agent], "table4")
    assert set(table4["demo"]) == {MODEL, f"{MODEL}*"}
    clean_cell = table4["demo"][MODEL][("i2t", "RAW")]
    assert clean_cell == pytest.approx(mllm["metrics"]["acc@1"]["mean"] * 100)
    assert table4["demo"][f"{MODEL}*"][("i2t", "RAW")] == pytest.approx(
        agent["metrics"]["acc@1"]["mean"] * 100
    )
    rendered = markdown([runs["prerank"], agent, mllm])
    assert "Table 3" in rendered and "Table 4" in rendered and f"| {MODEL}* |" in rendered


def test_trace_show_prints_the_three_distributions_side_by_side(runs: dict, capsys) -> None:
    """Per shortlist row: the pre-ranker's probability, the judge's (the server's top_logprobs)
    and the fused one, p ∝ p_pre^0.5 · p_judge^0.5 at the default weight."""
    from agent import trace

    record = lines(runs["agent"])[0]
    db = str(Path(runs["root"]) / "agent" / "checkpoints.sqlite")
    capsys.readouterr()
    assert trace.main(["--checkpoint-db", db, "show", record["thread"]]) == 0
    shown = capsys.readouterr().out
    assert re.search(r"candidate +pre-ranker +judge +fused", shown), shown
    table = re.findall(r"^ *(\d)\. .*\((Q\d+)\) +([\d.]+) +([\d.]+) +([\d.]+)", shown, flags=re.M)
    assert [int(row[0]) for row in table] == [1, 2, 3], shown
    pre = [float(row[2]) for row in table]
    judged = [float(row[3]) for row in table]
    fused = [float(row[4]) for row in table]
    assert judged == pytest.approx([JUDGE["1"], JUDGE["2"], JUDGE["3"]], abs=1e-4)
    assert sum(pre) == pytest.approx(1.0, abs=1e-3)
    mixed = [math.sqrt(a * b) for a, b in zip(pre, judged, strict=True)]
    assert fused == pytest.approx([m / sum(mixed) for m in mixed], abs=1e-3)
    decided = table[max(range(3), key=fused.__getitem__)][1]
    assert decided == record["prediction"] and "<- decision" in shown
