"""``langgraph dev`` runs the graph: the real LangGraph server (langgraph-cli[inmem]) on 127.0.0.1,
driven by the real ``langgraph-sdk`` client.

The server builds ``AgentContext`` itself from a run's JSON, so the resources must come from the
environment (``MEL_AGENT_DATASET``, ``MEL_LLM_*``). The LLM points at a closed port on 127.0.0.1
(every call fails for real and the graph falls back to the pre-ranker), so a decision takes
seconds; scorer, describer, wiki replica and Chroma are the real ones. The server runs on the
project's own ``langgraph.json`` (its paths made absolute) from a scratch folder, so its
``.langgraph_api/`` files land there, not in the checkout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support import closed_port, private_cache

from agent.link import build_candidates, clean_image, initial_state
from agent.state import PLAIN_ROUTE
from kb.dataset import load_dataset

ROOT = Path(__file__).resolve().parents[1]
GRAPH = "llm-retlink"
START_TIMEOUT_S = 240
NEW_WORDS = ["rocket", "launch pad", "space shuttle"]


def _config_in(folder: Path) -> Path:
    """The repository's ``langgraph.json`` with its relative paths resolved against the checkout."""
    config = json.loads((ROOT / "langgraph.json").read_text())
    config["dependencies"] = [str((ROOT / d).resolve()) for d in config["dependencies"]]
    config["graphs"] = {
        name: str((ROOT / spec.split(":")[0]).resolve()) + ":" + spec.split(":")[1]
        for name, spec in config["graphs"].items()
    }
    path = folder / "langgraph.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("langgraph-dev")
    port = closed_port()
    env = {
        **os.environ,
        "MEL_CACHE_DIR": str(private_cache(folder / "cache")),
        "MEL_AGENT_DATASET": "demo",
        "MEL_LLM_BASE_URL": f"http://127.0.0.1:{closed_port()}/v1",
        "MEL_LLM_MODEL": "none",
        "MEL_LLM_RETRIES": "0",
        "MEL_AGENT_TASK": "i2t",
        "HF_HUB_OFFLINE": "1",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGSMITH_TRACING": "false",
    }
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "langgraph_cli",
            "dev",
            "--no-browser",
            "--no-reload",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        + ["--config", str(_config_in(folder))],
        cwd=folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as a whole below
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"langgraph dev exited: {(folder / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/ok", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"langgraph dev not up in {START_TIMEOUT_S} s")
            time.sleep(1)
        yield url, folder
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.mark.slow
def test_langgraph_dev_runs_a_decision_and_a_fork_of_it(server) -> None:
    from langgraph_sdk import get_sync_client

    url, _ = server
    client = get_sync_client(url=url)
    assistants = client.assistants.search()
    assert [a["graph_id"] for a in assistants] == [GRAPH]
    schemas = client.assistants.get_schemas(assistants[0]["assistant_id"])
    assert set(schemas["context_schema"]["properties"]) == {"dataset"}, "Studio offers the KB, not resources"

    demo = load_dataset("demo")
    mention = next(m for m in demo.mentions if m.image_path is not None)
    candidates = build_candidates(demo, [mention], 10, seed=0)[0]
    state = initial_state("dev", mention, candidates, demo.entities, clean_image(mention))
    thread = client.threads.create()["thread_id"]
    final = client.runs.wait(thread, GRAPH, input=state, raise_error=False)
    assert "__error__" not in final, final
    assert [s["node"] for s in final["steps"]] == list(PLAIN_ROUTE)
    assert final["decision"] in candidates.qids and final["decided_by"] == "prerank"
    assert any(f.startswith("judge:") for f in final["fallbacks"]), "the LLM's closed port is a fallback"
    original_words = final["descriptors"]["words"]
    assert original_words, "the real describer names something in a real photo"

    history = client.threads.get_history(thread, limit=50)
    assert [h["next"] for h in history][:2] == [[], ["answer"]]
    after_describe = next(h for h in history if h["next"] == ["retrieve"])
    assert after_describe["values"]["descriptors"]["words"] == original_words

    # Fork at the checkpoint after describe with other descriptors, and run the fork on.
    descriptors = {**after_describe["values"]["descriptors"], "words": NEW_WORDS}
    forked = client.threads.update_state(
        thread,
        {"descriptors": descriptors},
        as_node="describe",
        checkpoint_id=after_describe["checkpoint"]["checkpoint_id"],
    )
    fork = client.runs.wait(
        thread,
        GRAPH,
        input=None,
        checkpoint_id=forked["checkpoint"]["checkpoint_id"],
        context={"dataset": "demo"},
        raise_error=False,
    )
    assert "__error__" not in fork, fork
    assert fork["descriptors"]["words"] == NEW_WORDS and fork["decision"] in candidates.qids
    retrieve = next(s for s in reversed(fork["steps"]) if s["node"] == "retrieve")
    assert "rocket" in retrieve["query"], "the fork's retrieval searched with the new descriptors"
    assert fork["steps"][-1]["node"] == "answer"
    longer = client.threads.get_history(thread, limit=50)
    assert len(longer) > len(history), "the fork added checkpoints; the original branch is kept"
    kept = next(
        h for h in longer if h["checkpoint"]["checkpoint_id"] == history[0]["checkpoint"]["checkpoint_id"]
    )
    assert kept["values"]["descriptors"]["words"] == original_words
