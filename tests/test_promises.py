"""README promises no other test checked, each fed the case that would break it.

* Decoding is greedy (temperature 0) by default, and ``--temperature 0.75`` is the paper's:
  the requests an agent decision sends carry the configured temperature (an OpenAI-compatible
  server that records them), and the embedded model gets it too (a spy on llama.cpp's call, the
  real model answering: the same answer whatever the seed).
* ``python -m agent.link --id`` and ``--image ... --qids`` run end to end with the embedded model.
* ``langgraph.json`` names a graph that imports by its path and compiles to the README's graph.
* ``python -m eval.tables`` puts an I2T and an IT2T run in one Table 2.
* A run completes only its own adversarial folder (same scorer, task, λ and seed); a folder of
  another task is replayed as a transfer set, one of another λ or seed is replayed and never
  written to.
* ``tools.train_mcr``'s defaults are paper 003's: lr 1e-5, weight decay 0.001, batches of 64
  (label, description) pairs, α 0.5; they reach the optimizer, the batches and the checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from openai_faults_server import fault_server
from support import private_cache

ROOT = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "user", "content": "What colour is a clear daytime sky? One word."}]


@pytest.fixture
def no_llm_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``MEL_LLM_*`` / ``MEL_VLM_*`` from the caller's shell: the defaults decide."""
    for key in list(os.environ):
        if key.startswith(("MEL_LLM_", "MEL_VLM_")):
            monkeypatch.delenv(key)
    return monkeypatch


# ------------------------------------------------------------------ greedy decoding by default


def test_agent_requests_are_greedy_unless_a_temperature_is_given(
    no_llm_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every request of a decision says temperature 0 by default; with ``--temperature 0.75``
    the free-text requests (the writer's) say 0.75, so the default is what made them 0. The
    judge's distribution is read from logprobs at temperature 0 either way (``agent.judge``)."""
    from agent.link import main as link_main

    sent: dict[str, list[dict[str, Any]]] = {}
    with fault_server(answer="1") as server:
        for name, flags in (("default", []), ("paper", ["--temperature", "0.75"])):
            # a cache of its own each: written descriptions are stored, and would not be asked again
            no_llm_environment.setenv("MEL_CACHE_DIR", str(private_cache(tmp_path / name)))
            argv = ["--dataset", "demo", "--id", "chelsea-0", "--candidates", "3", "--task", "i2t"]
            argv += ["--llm-base-url", server.url, "--llm-model", "fault-model", "--wiki", "offline"]
            assert link_main([*argv, "--checkpoint-db", str(tmp_path / f"{name}.sqlite"), *flags]) == 0
            sent[name], server.bodies[:] = list(server.bodies), []
    assert sent["default"] and {b["temperature"] for b in sent["default"]} == {0}
    free_text = [b for b in sent["paper"] if not b.get("logprobs")]
    assert len(free_text) >= 3, sent["paper"]  # one written description per candidate
    assert {b["temperature"] for b in free_text} == {0.75}
    assert {b["temperature"] for b in sent["paper"] if b.get("logprobs")} <= {0}


@pytest.mark.slow
def test_the_embedded_model_decodes_greedily_by_default(
    no_llm_environment: pytest.MonkeyPatch,
) -> None:
    import llama_cpp

    from tools.llm import LLMSettings
    from tools.llm.embedded import EmbeddedChat

    temperatures: list[float | None] = []
    real = llama_cpp.Llama.create_chat_completion

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:  # records, then runs the real call
        temperatures.append(kwargs.get("temperature"))
        return real(self, *args, **kwargs)

    no_llm_environment.setattr(llama_cpp.Llama, "create_chat_completion", spy)
    chat = EmbeddedChat(LLMSettings.from_env())
    first = chat.chat(QUESTION, max_tokens=6, seed=1)
    second = chat.chat(QUESTION, max_tokens=6, seed=2)
    assert temperatures == [0.0, 0.0]
    assert first.text == second.text and first.text.strip(), "greedy: the seed cannot change the answer"
    EmbeddedChat(LLMSettings.from_env(temperature=0.75)).chat(QUESTION, max_tokens=2, seed=1)
    assert temperatures[-1] == 0.75


# ---------------------------------------------------------------------- agent.link, the CLI


def _link(args: list[str], env: dict[str, str]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "agent.link", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_agent_link_on_an_id_and_on_an_image_with_the_embedded_model(tmp_path: Path) -> None:
    """The README's two one-decision commands, run as a user runs them, on the embedded
    Qwen2.5-Coder GGUF (no server): a decision among the given candidates, the judge answered
    by the model (no fallback), and a checkpointed thread per decision."""
    from kb.dataset import load_dataset

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEL_LLM_", "MEL_VLM_"))}
    env["MEL_CACHE_DIR"] = str(private_cache(tmp_path / "cache", ("kb", "text_embeddings", "models")))
    db = tmp_path / "link.sqlite"
    common = ["--checkpoint-db", str(db), "--task", "i2t", "--wiki", "offline"]
    (by_id,) = _link(["--dataset", "demo", "--id", "chelsea-0", "--candidates", "3", *common], env)
    photo = load_dataset("demo").mention("chelsea-0").image_path
    ad_hoc_args = ["--image", str(photo), "--text", "Our cat on the sofa", "--mention", "cat"]
    (ad_hoc,) = _link([*ad_hoc_args, "--qids", "Q146,Q144,Q8486", "--kb", "demo", *common], env)
    for record in (by_id, ad_hoc):
        assert "error" not in record and record["decision"] in record["ranking"], record
        assert record["judge"] == "used", (record["judge"], record["fallbacks"])  # the model answered
        assert record["thread_id"].split("|")[1] == record["id"]
    assert by_id["id"] == "chelsea-0" and by_id["gold"] == "Q146" and len(by_id["ranking"]) == 3
    assert set(ad_hoc["ranking"]) == {"Q146", "Q144", "Q8486"}
    listed = subprocess.run(
        [sys.executable, "-m", "agent.trace", "list", "--checkpoint-db", str(db)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert listed.returncode == 0 and "chelsea-0" in listed.stdout, listed.stdout + listed.stderr
    assert len([line for line in listed.stdout.splitlines() if "|" in line]) >= 2


# ---------------------------------------------------------------------------- langgraph.json


def test_langgraph_json_names_a_graph_that_imports_by_path_and_compiles() -> None:
    """What ``langgraph dev`` does with the file: import each graph's file by its path and take
    the named attribute (the server itself runs in ``test_langgraph_dev.py``)."""
    from langgraph.graph.state import CompiledStateGraph

    from agent.state import NODES

    config = json.loads((ROOT / "langgraph.json").read_text())
    assert [(ROOT / d).resolve() for d in config["dependencies"]] == [ROOT]  # this package
    assert list(config["graphs"]) == ["llm-retlink"]
    path, _, attribute = config["graphs"]["llm-retlink"].partition(":")
    spec = importlib.util.spec_from_file_location("langgraph_json_graph", ROOT / path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    graph = getattr(module, attribute)
    assert isinstance(graph, CompiledStateGraph) and graph.checkpointer is None  # the server brings one
    drawn = graph.get_graph()
    assert set(drawn.nodes) == {"__start__", "__end__", "tools", *NODES}
    edges = {(e.source, e.target) for e in drawn.edges}
    chain = ["__start__", "describe", "retrieve", "store", "enrich", "prerank"]
    assert set(zip(chain, chain[1:], strict=False)) <= edges
    assert {("prerank", "judge"), ("prerank", "answer"), ("judge", "answer"), ("answer", "__end__")} <= edges


# ------------------------------------------- adversarial folders: own, transfer, foreign; tables

PRESETS = {"presets": {"pgd-one": {"method": "pgd", "steps": 1, "eps": 8 / 255, "alpha": 8 / 255}}}


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real ``eval.run --attack`` runs on the demo sharing one adversarial folder: the run that
    made it (I2T, λ 10, seed 0, 2 mentions), then runs of 3 mentions that differ in task, λ or
    seed, then one like the first that asks for a third mention."""
    from eval.run import main

    root = tmp_path_factory.mktemp("attacked")
    (root / "presets.json").write_text(json.dumps(PRESETS))
    runs: dict[str, Any] = {"root": root}
    plan = {
        "own": ["--task", "i2t", "--limit", "2"],
        "task": ["--task", "it2t", "--limit", "3"],
        "λ": ["--task", "i2t", "--limit", "3", "--candidates", "5"],
        "seed": ["--task", "i2t", "--limit", "3", "--seed", "1"],
        "own-more": ["--task", "i2t", "--limit", "3"],
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEL_CACHE_DIR", str(private_cache(root / "cache")))
        for name, flags in plan.items():
            argv = ["--dataset", "demo", "--attack", "pgd-one", "--presets-file", str(root / "presets.json")]
            argv += ["--adv-dir", str(root / "adv"), "--out", str(root / name), "--quiet", *flags]
            assert main(argv) == 0, name
            results = json.loads((root / name / "results.json").read_text())
            folder = Path(results["attacks"]["pgd-one"]["folder"])
            assert folder.is_relative_to(root / "adv"), folder
            runs[name] = {
                "results": results,
                "manifest": (folder / "manifest.jsonl").read_text(),
                "identity": (folder / "attack.json").read_text(),
            }
    return runs


def test_only_the_runs_own_adversarial_folder_is_completed(attacked: dict[str, Any]) -> None:
    own = attacked["own"]["results"]["attacks"]["pgd-one"]
    assert own["generated"] == 2 and own["transfer"] is False and own["n"] + own["n_skipped"] == 2
    for other in ("task", "λ", "seed"):
        block = attacked[other]["results"]["attacks"]["pgd-one"]
        assert block["generated"] == 0, other  # another task's, λ's or seed's folder is not written to
        assert attacked[other]["manifest"] == attacked["own"]["manifest"], other
        assert attacked[other]["identity"] == attacked["own"]["identity"], other
        assert block["skipped"].get("adv_missing") == 1, (other, block["skipped"])  # the third mention
        assert block["transfer"] is (other == "task"), other  # another task: a transfer set
        assert block["made_by"]["task"] == "i2t" and block["made_by"]["candidates"] == 10
    grown = attacked["own-more"]["results"]["attacks"]["pgd-one"]
    assert grown["generated"] == 1 and grown["transfer"] is False and "adv_missing" not in grown["skipped"]
    assert len(attacked["own-more"]["manifest"].splitlines()) == 3


def test_eval_tables_cli_puts_i2t_and_it2t_runs_in_one_table(attacked: dict[str, Any]) -> None:
    root = attacked["root"]
    out = root / "table2"
    command = [sys.executable, "-m", "eval.tables", str(root / "own"), str(root / "task"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (out / "table.md").read_text(encoding="utf-8").splitlines()
    header = next(line for line in lines if line.startswith("| Model"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert {"I2T RAW", "IT2T RAW", "I2T pgd-one", "IT2T pgd-one"} <= set(columns), columns
    rows = [line for line in lines if line.startswith("| tagger |")]
    assert len(rows) == 1, lines  # one scorer, both tasks on one row
    cells = dict(zip(columns, (c.strip() for c in rows[0].strip("|").split("|")), strict=True))
    for task, run in (("I2T", "own"), ("IT2T", "task")):
        results = attacked[run]["results"]
        clean = results["metrics"]["acc@1"]["mean"] * 100
        attacked_acc = results["attacks"]["pgd-one"]["metrics"]["acc@1"]["mean"] * 100
        assert cells[f"{task} RAW"].startswith(f"{clean:.1f}"), (task, cells)
        assert cells[f"{task} pgd-one"].startswith(f"{attacked_acc:.1f}"), (task, cells)
    assert (
        "tagger" in (out / "table.csv").read_text()
        and (out / "accuracy_per_attack.png").stat().st_size > 1000
    )
    missing = subprocess.run(
        [sys.executable, "-m", "eval.tables", str(root / "nowhere"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert missing.returncode == 2 and "nowhere" in missing.stderr


# ---------------------------------------------------------------------- MCR training defaults


@pytest.mark.slow
def test_mcr_training_defaults_are_paper_003s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tools.train_mcr`` with no settings given: AdamW gets lr 1e-5 and weight decay 0.001, a
    text step scores 64 // λ whole candidate sets (64 label-description pairs at most), and the
    checkpoint's fusion is α = 0.5. The optimizer and the model are the real ones, only watched."""
    import torch

    from tools import train_mcr
    from tools.scorers.mcr import MCRScorer, load_mcr

    optimizers: list[torch.optim.Optimizer] = []

    class WatchedAdamW(torch.optim.AdamW):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    steps: list[tuple[int, int]] = []
    similarity = MCRScorer.text_similarity

    def watched(self: MCRScorer, texts: Any, labels: Any) -> Any:
        if self.text_text.training:
            steps.append((len(texts), len(labels[0])))
        return similarity(self, texts, labels)

    monkeypatch.setattr(torch.optim, "AdamW", WatchedAdamW)
    monkeypatch.setattr(MCRScorer, "text_similarity", watched)
    out = tmp_path / "mcr.pt"
    assert train_mcr.main(["--dataset", "demo", "--split", "all", "--out", str(out)]) == 0
    (optimizer,) = optimizers
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(1e-5, 0.001)]
    assert steps and all(width == 10 for _, width in steps)  # λ = 10
    assert steps[0][0] == 64 // 10 and max(n * width for n, width in steps) <= 64
    assert sum(n for n, _ in steps) == 8  # the demo's 8 mentions, one epoch
    assert load_mcr("mcr", checkpoint=str(out)).config.alpha == 0.5


# ------------------------------------------------------------------------- the suite's caches


def test_every_cache_is_the_sessions_own(session_cache: Path) -> None:
    """conftest.py points ``MEL_CACHE_DIR`` at a folder of this session: no cache a test reaches
    through the defaults (KB stores, text embeddings, scores, checkpoints, wiki responses) is the
    developer's real one."""
    from agent.settings import AgentSettings
    from kb.cache import cache_dir
    from tools.scorers.text_cache import default_cache_dir
    from tools.wiki import WikiSettings

    real = (Path.home() / ".cache" / "melrobust").resolve()
    found = {
        "root": cache_dir(),
        "kb": cache_dir("kb"),
        "text embeddings": default_cache_dir(),
        "checkpoints": AgentSettings.from_env().checkpoint_db,
        "wiki": WikiSettings.from_env().response_cache_dir(),
    }
    for what, path in found.items():
        assert path.resolve().is_relative_to(session_cache.resolve()), (what, path)
        assert not path.resolve().is_relative_to(real), (what, path)
