"""The LLM-RetLink graph end to end on the built-in demo dataset with real models.

Fast tests point the LLM at a closed port on 127.0.0.1, so every LLM call fails the real way
(connection refused) and the graph's fallbacks are exercised; the slow test runs the
embedded Qwen2.5-Coder GGUF for real. Scorer, describer, wiki replica, Chroma and SQLite are
always the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support import closed_port

from agent.link import Linker, build_candidates, initial_state, link_mentions
from agent.resources import Resources, load_pixels
from agent.settings import AgentSettings
from agent.state import PLAIN_ROUTE
from agent.traces import TraceStore, first_divergence, node_outputs
from kb.dataset import load_dataset
from tools.llm import LLMSettings
from tools.wiki import WikiSettings


@pytest.fixture(scope="module")
def demo():
    return load_dataset("demo")


def offline_settings(tmp_path: Path, **overrides) -> AgentSettings:
    """Real scorer/describer/replica; the LLM on a port nobody listens on (fails at once)."""
    llm = LLMSettings(
        base_url=f"http://127.0.0.1:{closed_port()}/v1", model="none", retries=0, budget_s=2, timeout_s=1
    )
    return AgentSettings(
        task="i2t",
        llm=llm,
        wiki=WikiSettings(mode="offline", cache_dir=tmp_path / "wiki"),
        checkpoint_db=tmp_path / "checkpoints.sqlite",
        **overrides,
    )


def linker_for(settings: AgentSettings, demo, tmp_path: Path) -> Linker:
    resources = Resources(settings, demo.entities)
    from agent.candidate_store import CandidateStore
    from tools import registry

    resources.store = CandidateStore(registry.get("minilm"), tmp_path / "chroma")
    return Linker(resources, settings.checkpoint_db)


def pictured(demo, n: int):
    return [m for m in demo.mentions if m.image_path is not None][:n]


def test_graph_runs_every_node_and_falls_back_when_the_llm_is_down(tmp_path: Path, demo) -> None:
    settings = offline_settings(tmp_path)
    linker = linker_for(settings, demo, tmp_path)
    mentions = pictured(demo, 2)
    sets = build_candidates(demo, mentions, 10, seed=0)
    records = list(link_mentions(linker, demo, mentions, sets, run_id="t1"))
    assert [r["error"] for r in records] == [None, None]
    for record, candidates in zip(records, sets, strict=True):
        final = linker.graph.get_state({"configurable": {"thread_id": record["thread"]}}).values
        assert [s["node"] for s in final["steps"]] == list(PLAIN_ROUTE)
        assert final["descriptors"]["words"], "the real describer names something in a real photo"
        assert set(final["evidence"]) == set(candidates.qids)
        assert all(origin.startswith("fallback") for origin in final["description_origin"].values())
        assert final["judge"]["fallback"] and "LLMError" in final["judge"]["fallback"]
        assert final["decided_by"] == "prerank"
        assert final["decision"] == final["prerank"]["order"][0] == record["prediction"]
        assert sorted(final["ranking"]) == sorted(candidates.qids)
        assert any(f.startswith("judge:") for f in record["fallbacks"])
        # Model*'s full ranking stays in the state for eval's stages, aligned with the candidates
        assert final["prerank"]["qids"] == list(candidates.qids)
        assert sorted(final["prerank"]["order"]) == sorted(candidates.qids)
        shortlist = final["judge"]["shortlist"]
        pre = final["judge"]["distributions"]["prerank"]
        assert list(pre) == shortlist and sum(pre.values()) == pytest.approx(1.0, abs=1e-4)
        assert final["judge"]["distributions"]["judge"] is None, "a failed judge has no distribution"
    # A finished thread is read back, not recomputed.
    state = initial_state("t1", mentions[0], sets[0], demo.entities, None)
    _, thread, computed = linker.link(state, "clean")
    assert thread == records[0]["thread"] and computed is False
    # Evidence was written once: a second run looks nothing up again.
    again = list(link_mentions(linker, demo, mentions[:1], sets[:1], run_id="t2"))
    final = linker.graph.get_state({"configurable": {"thread_id": again[0]["thread"]}}).values
    assert final["looked_up"] == [] and final["retrieval"]
    linker.close()


def test_decisive_prerank_skips_the_judge(tmp_path: Path, demo) -> None:
    settings = offline_settings(tmp_path, skip_judge_margin=0.0)
    linker = linker_for(settings, demo, tmp_path)
    mentions = pictured(demo, 1)
    sets = build_candidates(demo, mentions, 10, seed=0)
    record = next(link_mentions(linker, demo, mentions, sets, run_id="skip"))
    final = linker.graph.get_state({"configurable": {"thread_id": record["thread"]}}).values
    assert "judge" not in [s["node"] for s in final["steps"]]
    assert final["decided_by"] == "prerank" and final["prerank"]["decisive"] is True
    linker.close()


def test_a_decision_cut_off_mid_graph_resumes_from_its_checkpoint(tmp_path: Path, demo) -> None:
    settings = offline_settings(tmp_path)
    linker = linker_for(settings, demo, tmp_path)
    mention = pictured(demo, 1)[0]
    candidates = build_candidates(demo, [mention], 10, seed=0)[0]
    state = initial_state(
        "cut",
        mention,
        candidates,
        demo.entities,
        {"path": str(mention.image_path), "bbox": None, "condition": "clean"},
    )
    from agent.graph import build_graph, thread_id
    from agent.nodes import AgentContext

    graph = build_graph().compile(checkpointer=linker.checkpointer, interrupt_before=["prerank"])
    config = {"configurable": {"thread_id": thread_id("cut", mention.id, "clean")}}
    graph.invoke(state, config, context=AgentContext(linker.resources))
    assert graph.get_state(config).next == ("prerank",)
    final, _, computed = linker.link(state, "clean")
    assert computed and [s["node"] for s in final["steps"]] == list(PLAIN_ROUTE)
    linker.close()


def test_trace_diff_names_where_an_attacked_decision_diverged(tmp_path: Path, demo) -> None:
    settings = offline_settings(tmp_path)
    linker = linker_for(settings, demo, tmp_path)
    mention = pictured(demo, 1)[0]
    candidates = build_candidates(demo, [mention], 10, seed=0)
    pixels = load_pixels({"path": str(mention.image_path), "bbox": None, "condition": "clean"})
    noisy = (pixels + 0.3 * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    torch.save(noisy, tmp_path / "noisy.pt")
    clean = next(link_mentions(linker, demo, [mention], candidates, run_id="d"))
    attacked_image = {mention.id: {"path": str(tmp_path / "noisy.pt"), "bbox": None, "condition": "noise"}}
    attacked = next(
        link_mentions(
            linker, demo, [mention], candidates, run_id="d", images=attacked_image, condition="noise"
        )
    )
    linker.close()
    store = TraceStore(settings.checkpoint_db)
    a, b = store.get(clean["thread"]), store.get(attacked["thread"])
    node = first_divergence(a.values, b.values)
    assert node == "describe", "heavy noise changes what EfficientNet sees first"
    assert list(node_outputs(a.values)) == list(PLAIN_ROUTE)
    assert {t.thread for t in store.threads("d")} == {clean["thread"], attacked["thread"]}
    store.close()

    from agent import trace

    out = tmp_path / "t.html"
    assert (
        trace.main(
            [
                "--checkpoint-db",
                str(settings.checkpoint_db),
                "export",
                a.thread,
                "--format",
                "html",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "Decision trace" in out.read_text()
    assert (
        trace.main(["--checkpoint-db", str(settings.checkpoint_db), "diff", a.thread, b.thread, "--json"])
        == 0
    )
    # the global option goes after the subcommand as well
    assert trace.main(["diff", a.thread, b.thread, "--checkpoint-db", str(settings.checkpoint_db)]) == 0


@pytest.mark.slow
def test_real_llm_over_a_local_openai_server_writes_once_and_judges(tmp_path: Path, demo) -> None:
    """The backend swap for real: the embedded Qwen2.5-Coder-1.5B served over the OpenAI API on
    127.0.0.1 writes the descriptions and judges; a second decision reuses the stored ones."""
    from tools.llm.server import serve_embedded

    mentions = pictured(demo, 1)
    sets = build_candidates(demo, mentions, 3, seed=0)
    with serve_embedded() as base_url:
        llm = LLMSettings(base_url=base_url, timeout_s=300, budget_s=600)
        settings = offline_settings(tmp_path).replace(llm=llm)
        linker = linker_for(settings, demo, tmp_path)
        record = next(link_mentions(linker, demo, mentions, sets, run_id="llm"))
        assert record["error"] is None, record
        final = linker.graph.get_state({"configurable": {"thread_id": record["thread"]}}).values
        assert final["judge"]["model"].startswith("openai:") and final["judge"]["raw"]
        assert record["judge"] in ("used", "fallback")
        assert set(final["description_origin"].values()) == {"llm"}
        assert all(len(text.split()) >= 3 for text in final["descriptions"].values())
        again = next(link_mentions(linker, demo, mentions, sets, run_id="llm-again"))
        final = linker.graph.get_state({"configurable": {"thread_id": again["thread"]}}).values
        assert set(final["description_origin"].values()) == {"store"}, "descriptions are written once"
        linker.close()
    print(json.dumps({k: record[k] for k in ("id", "prediction", "gold", "judge", "node_seconds")}))
