"""The consult step (issue 18): the look-up tools as LangChain tools in a LangGraph ``ToolNode``,
the bounded tool-calling loop, and its record in the thread, the trace, the chat and ``results.json``.

Fast tests use the real demo KB, offline wiki replica, Chroma store and describer; the LLM is a
closed port (so a model that cannot call tools is the real failure). The slow test drives the
step through llama.cpp's own OpenAI-compatible server with a tool-calling chat format, which
returns real OpenAI ``tool_calls``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from test_agent import linker_for, offline_settings, pictured

from agent.consult import TOOL_NAMES, TOOL_SCHEMAS, entropy, found_texts
from agent.intents import parse
from agent.link import build_candidates, link_mentions
from agent.lookups import LOOKUP_TOOLS, crop
from agent.nodes import AgentContext
from agent.spotlight import FENCE_OPEN, MARK
from agent.traces import TraceStore
from kb.dataset import load_dataset
from tools.llm.tool_calls import calls_in_text, openai_tool_calls


@pytest.fixture(scope="module")
def demo():
    return load_dataset("demo")


def test_calls_are_read_from_text_as_the_small_model_writes_them() -> None:
    # what the embedded Qwen2.5-1.5B wrote for a consult prompt: doubled braces, no tags, one cut off
    text = (
        '{{"name": "wikipedia_search", "arguments": {"query": "astronaut", "limit": 3}}}\n'
        '<tool_call>\n{"name": "wikidata_entity", "arguments": {"qid": "Q42"}}\n</tool_call>\n'
        '{{"name": "read_image_text", "a'
    )
    calls = calls_in_text(text)
    assert [(c.name, c.arguments, c.error) for c in calls[:2]] == [
        ("wikipedia_search", {"query": "astronaut", "limit": 3}, None),
        ("wikidata_entity", {"qid": "Q42"}, None),
    ]
    assert calls[2].name == "read_image_text" and calls[2].error.startswith("unreadable JSON")
    assert calls_in_text("The candidate is Katsu Kaishū.") == []
    structured = openai_tool_calls(
        {
            "tool_calls": [
                {"id": "c1", "function": {"name": "wikidata_entity", "arguments": '{"qid": "Q1"}'}},
                {"id": "c2", "function": {"name": "wikidata_entity", "arguments": "{not json"}},
            ]
        }
    )
    assert structured[0].arguments == {"qid": "Q1"} and structured[1].error.startswith("unreadable arguments")


def test_tool_schemas_are_typed_and_hide_the_injected_runtime() -> None:
    by_name = {s["function"]["name"]: s["function"] for s in TOOL_SCHEMAS}
    assert set(by_name) == TOOL_NAMES == {t.name for t in LOOKUP_TOOLS} and len(TOOL_SCHEMAS) == 6
    for schema in by_name.values():
        assert "runtime" not in schema["parameters"]["properties"] and schema["description"]
    assert by_name["wikidata_entity"]["parameters"]["required"] == ["qid"]
    assert by_name["read_image_text"]["parameters"]["properties"]["region"]["enum"] == [
        "whole",
        "top",
        "bottom",
        "left",
        "right",
        "center",
    ]
    assert "Q42" in by_name["wikidata_entity"]["parameters"]["properties"]["qid"]["description"]


def tool_graph():
    """Another agent's graph: LangGraph's ``MessagesState`` and ``ToolNode`` over the look-ups."""
    builder = StateGraph(MessagesState, context_schema=AgentContext)
    builder.add_node("tools", ToolNode(LOOKUP_TOOLS, handle_tool_errors=True))
    builder.add_edge(START, "tools")
    return builder.compile()


def ask_tool(resources, name: str, **arguments) -> ToolMessage:
    call = {"name": name, "args": arguments, "id": "x"}
    out = tool_graph().invoke(
        {"messages": [AIMessage(content="", tool_calls=[call])]}, context=AgentContext(resources)
    )
    return out["messages"][-1]


def test_wiki_tools_answer_online_and_fall_back_to_the_replica(tmp_path: Path, demo) -> None:
    from mediawiki_server import MediaWikiServer
    from support import closed_port
    from test_wiki import CORPUS, settings_for

    from agent.resources import Resources

    with MediaWikiServer(CORPUS) as server:
        settings = offline_settings(tmp_path).replace(wiki=settings_for(server, tmp_path / "cache"))
        live = ask_tool(Resources(settings, demo.entities), "wikipedia_search", query="theoretical physicist")
    assert live.content.startswith("- Albert Einstein (Q937):")
    assert [r["origin"] for r in live.artifact["records"]][:1] == ["live"] and not live.artifact["fallbacks"]
    dead = f"http://127.0.0.1:{closed_port()}/w/api.php"
    down = settings.wiki.replace(wikipedia_api=dead, wikidata_api=dead, retries=0, budget_s=1.0)
    resources = Resources(settings.replace(wiki=down), demo.entities)
    fallback = ask_tool(resources, "wikidata_entity", qid="Q11641")
    assert fallback.artifact["records"][0]["origin"] == "offline" and "Grace Hopper" in fallback.content
    assert "answered from the offline replica" in fallback.artifact["fallbacks"][0]


def test_another_langgraph_agent_binds_the_tools_in_its_own_tool_node(tmp_path: Path, demo) -> None:
    """A plain ``MessagesState`` graph with LangGraph's ``ToolNode``: the tools answer from the
    offline replica and the store, and a bad call becomes an error message, not a crash."""
    settings = offline_settings(tmp_path)
    linker = linker_for(settings, demo, tmp_path)
    mention = pictured(demo, 1)[0]
    sets = build_candidates(demo, [mention], 10, seed=0)
    next(link_mentions(linker, demo, [mention], sets, run_id="fill"))  # stores the candidates' evidence
    graph = tool_graph()
    label = demo.entities[mention.gold].label
    calls = [
        {"name": "wikipedia_search", "args": {"query": label}, "id": "a"},
        {"name": "wikidata_entity", "args": {"qid": mention.gold}, "id": "b"},
        {"name": "wikipedia_extract", "args": {"title": "No Such Page Anywhere"}, "id": "c"},
        {"name": "nearest_evidence", "args": {"query": label}, "id": "d"},
        {"name": "wikidata_entity", "args": {}, "id": "e"},  # qid missing
    ]
    out = graph.invoke(
        {"messages": [AIMessage(content="", tool_calls=calls)]}, context=AgentContext(linker.resources)
    )
    results = {m.tool_call_id: m for m in out["messages"] if isinstance(m, ToolMessage)}
    assert label in results["a"].content and results["a"].artifact["records"]
    assert results["b"].artifact["records"][0]["qid"] == mention.gold
    assert results["c"].content == "no page titled 'No Such Page Anywhere'"
    assert label in results["d"].content and "similarity" in results["d"].content  # the whole store
    assert results["e"].status == "error" and "qid" in results["e"].content
    assert all(m.artifact["seconds"] >= 0 for k, m in results.items() if k != "e")
    # read_image_text needs a decision's image: without one it says so
    no_image = graph.invoke(
        {
            "messages": [
                AIMessage(content="", tool_calls=[{"name": "read_image_text", "args": {}, "id": "f"}])
            ]
        },
        context=AgentContext(linker.resources),
    )
    assert no_image["messages"][-1].content == "this decision has no image"
    assert tools_condition({"messages": [AIMessage(content="", tool_calls=calls[:1])]}) == "tools"
    linker.close()


def test_crop_regions_are_the_halves_and_the_middle() -> None:
    import torch

    pixels = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)[:1].expand(3, 4, 6)
    assert crop(pixels, "whole").shape == (3, 4, 6)
    assert crop(pixels, "top").shape == (3, 2, 6) and crop(pixels, "left").shape == (3, 4, 3)
    assert torch.equal(crop(pixels, "center"), pixels[:, 1:3, 1:4])
    assert torch.equal(crop(pixels, "bottom"), pixels[:, 2:, :])


def test_a_model_that_cannot_call_tools_skips_the_step_and_it_is_recorded(tmp_path: Path, demo) -> None:
    settings = offline_settings(tmp_path, consult_margin=1.01)  # every decision is uncertain
    linker = linker_for(settings, demo, tmp_path)
    mention = pictured(demo, 1)[0]
    sets = build_candidates(demo, [mention], 10, seed=0)
    record = next(link_mentions(linker, demo, [mention], sets, run_id="skip"))
    final = linker.graph.get_state({"configurable": {"thread_id": record["thread"]}}).values
    nodes = [s["node"] for s in final["steps"]]
    assert nodes.index("prerank") < nodes.index("consult") < nodes.index("judge")
    consult = final["consult"]
    assert consult["calls"] == [] and consult["stopped"].startswith("model cannot call tools: LLMError")
    assert any(f.startswith("consult: model cannot call tools") for f in final["fallbacks"])
    assert record["consult"]["calls"] == 0 and record["consult"]["decision_without"] == record["prediction"]
    assert "without_consult" not in final["judge"] and "Looked up" not in final["judge"]["prompt"]
    # below the threshold only: a decision whose margin passes it goes straight to the judge
    settings = offline_settings(tmp_path / "b", consult_margin=0.0)
    linker_b = linker_for(settings, demo, tmp_path / "b")
    again = next(link_mentions(linker_b, demo, [mention], sets, run_id="none"))
    assert again["consult"] is None and "consult" not in again["node_seconds"]
    linker.close()
    linker_b.close()


def test_eval_run_reports_the_consult_step(tmp_path: Path) -> None:
    from support import closed_port

    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "eval.run",
        "--dataset",
        "demo",
        "--pipeline",
        "agent",
        "--task",
        "i2t",
        "--limit",
        "2",
        "--consult",
        "--consult-margin",
        "1.01",
        "--wiki",
        "offline",
        "--quiet",
        "--out",
        str(out),
        "--llm-base-url",
        f"http://127.0.0.1:{closed_port()}/v1",
        "--llm-model",
        "none",
    ]
    env = {
        **__import__("os").environ,
        "MEL_LLM_RETRIES": "0",
        "MEL_LLM_BUDGET_S": "2",
        "MEL_LLM_TIMEOUT_S": "1",
    }
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    results = json.loads((out / "results.json").read_text())
    consult = results["consult"]
    assert consult["decisions"] == 2 and consult["stopped"] == {
        "model cannot call tools": consult["consulted"]
    }
    assert set(results["stages"]) == {"model", "model*", "agent", "no-consult"}
    assert "agent-no-consult" in results["stage_differences"]
    config = json.loads((out / "config.json").read_text())
    assert config["agent"]["consult_margin"] == 1.01 and config["agent"]["consult_max_calls"] == 3


def test_chat_understands_what_did_you_look_up() -> None:
    assert parse("what did you look up and why?", {}).kind == "lookups"
    assert parse("which tool calls did it make", {}).kind == "lookups"
    assert parse("node consult", {}).kind == "node"


def test_entropy_is_zero_when_certain_and_log_n_when_uniform() -> None:
    assert entropy([1.0, 0.0]) == 0.0 and str(entropy([1.0])) == "0.0"
    assert entropy([0.25] * 4) == pytest.approx(1.38629, abs=1e-5)


@pytest.mark.slow
def test_the_consult_step_through_a_real_tool_calling_server(tmp_path: Path, demo) -> None:
    """llama.cpp's server (``--chat-format chatml-function-calling``) returns OpenAI tool calls;
    the graph runs them in its ToolNode, within K and the time budget, and the thread, the judge's
    prompt, the trace and the chat show them."""
    from agent.trace import diff_report, show_text
    from tools.llm import LLMSettings
    from tools.llm.server import serve_embedded

    mention = pictured(demo, 1)[0]
    sets = build_candidates(demo, [mention], 10, seed=0)
    with serve_embedded(chat_format="chatml-function-calling") as url:
        llm = LLMSettings(base_url=url, timeout_s=300, budget_s=600, retries=0)
        settings = offline_settings(tmp_path, consult_margin=1.01, consult_max_calls=1).replace(llm=llm)
        linker = linker_for(settings, demo, tmp_path)
        record = next(link_mentions(linker, demo, [mention], sets, run_id="k1"))
        final = linker.graph.get_state({"configurable": {"thread_id": record["thread"]}}).values
        timed = offline_settings(tmp_path / "t", consult_margin=1.01, consult_seconds=0.001).replace(llm=llm)
        linker_t = linker_for(timed, demo, tmp_path / "t")
        linker_t.resources.store = linker.resources.store  # the descriptions written above are reused
        timed_record = next(link_mentions(linker_t, demo, [mention], sets, run_id="t"))
        timed_final = linker_t.graph.get_state({"configurable": {"thread_id": timed_record["thread"]}}).values
    consult = final["consult"]
    assert len(consult["calls"]) == 1 and consult["stopped"] == "call budget spent"  # K = 1
    call = consult["calls"][0]
    assert call["name"] in TOOL_NAMES and call["status"] == "success" and call["result"]
    asked = [m for m in final["messages"] if isinstance(m, AIMessage) and m.tool_calls]
    answered = [m for m in final["messages"] if isinstance(m, ToolMessage)]
    assert asked[0].response_metadata["source"] == "structured"  # the server's own tool_calls
    assert [c["id"] for c in asked[0].tool_calls] == [m.tool_call_id for m in answered] == [call["id"]]
    assert answered[0].content == call["result"]
    prompt = final["judge"]["prompt"]
    assert "Looked up:" in prompt and f"{FENCE_OPEN}{call['name']}" in prompt and MARK in prompt
    assert found_texts(consult)[0].startswith(call["name"])
    assert final["judge"]["without_consult"]["decision"] in final["judge"]["shortlist"]
    assert record["consult"]["calls"] == 1 and record["node_seconds"]["consult"] >= consult["seconds"] - 0.01
    # a budget of 1 ms: one round's calls run, then the step stops for time
    assert timed_final["consult"]["stopped"] == "time budget spent"
    assert 1 <= len(timed_final["consult"]["calls"]) <= 3
    store = TraceStore(settings.checkpoint_db)
    thread = store.get(record["thread"])
    shown = show_text(thread)
    assert f"1. {call['name']}(" in shown and "stopped: call budget spent" in shown
    report = diff_report(thread, TraceStore(timed.checkpoint_db).get(timed_record["thread"]))
    assert report["nodes"]["consult"]["calls_a"][0].startswith(call["name"])
    from agent.chat import ChatSession

    session = ChatSession(store, record["thread"], None, lambda: linker.resources)
    answer = session.handle("what did you look up and why?")
    assert f"call 1: {call['name']}(" in answer and "below the consult threshold 1.01" in answer
    linker.close()
    linker_t.close()


def test_the_consult_margin_is_chosen_on_one_split_and_reported_on_another() -> None:
    """Look-ups help the uncertain decisions (margin < 0.3) and hurt the confident ones: the chosen
    margin must fall between, and the report must score the other split at that margin."""
    from eval.consult_margin import choose_and_report

    def row(i: str, margin: float, consulted: int, alone: int) -> dict:
        p_with, p_without = (0.9 if consulted == 1 else 0.1), (0.9 if alone == 1 else 0.1)
        return {
            "id": i,
            "margin": margin,
            "with": consulted,
            "without": alone,
            "model": 2,
            "model*": alone,
            "p_with": p_with,
            "p_without": p_without,
        }

    rows = [row("a", 0.1, 1, 2), row("b", 0.2, 1, 3), row("c", 0.8, 2, 1), row("d", 0.95, 3, 1)]
    rows += [row("e", 0.15, 1, 2), row("f", 0.9, 2, 1), row("g", 0.6, 1, 1)]
    split = {"a": "train", "b": "train", "c": "train", "d": "train", "e": "dev", "f": "dev", "g": "dev"}
    result = choose_and_report(rows, split, "train", "dev")
    assert result["choose"]["margin"] == 0.3 and result["choose"]["n"] == 4
    report = result["report"]
    assert report["n"] == 3 and report["consulted"] == 1
    assert report["chosen"]["acc@1"] == 1.0 and report["never"]["acc@1"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["always"]["acc@1"] == pytest.approx(2 / 3, abs=1e-4) and report["model"]["acc@1"] == 0.0
    assert report["chosen-never"]["acc@1"] == pytest.approx(1 / 3, abs=1e-4)
    # a tie in acc@1 goes to the better-calibrated margin: here consulting "g" raises its gold's probability
    rows[-1]["p_with"] = 0.99
    assert choose_and_report(rows, {**split, "g": "train"}, "train", "dev")["choose"]["margin"] == 0.7
    with pytest.raises(ValueError, match="need both"):
        choose_and_report(rows, split, "train", "test")


def test_consult_flags_set_the_margin_and_the_call_budget() -> None:
    from agent.settings import CONSULT_MARGIN, AgentSettings

    assert AgentSettings.from_flags({}).consult_margin is None
    assert AgentSettings.from_flags({"consult": True}).consult_margin == CONSULT_MARGIN
    chosen = AgentSettings.from_flags({"consult_margin": 0.4, "consult_calls": 2})
    assert (chosen.consult_margin, chosen.consult_max_calls) == (0.4, 2)
    assert "consult_margin" not in AgentSettings.from_flags({}).identity()  # old folders still resume
    assert chosen.identity()["consult_margin"] == 0.4
