"""The judge that answers with a distribution: fusion, calibration, the MLLM baseline, and the real
embedded model in-process and over real HTTP on 127.0.0.1.

Fast tests check the fusion and the calibration grid on hand-written numbers. Slow tests run
the embedded Qwen2.5-Coder-1.5B GGUF: its distribution must decide (a judge whose answer were
ignored fails them), an index past 9 must come out of the token trie, an endpoint that gives no
logprobs must fall back to the free-text parse (recorded), and one that gives ``top_logprobs``
must reproduce the in-process distribution.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.calibrate import choose, decide
from agent.judge import fuse, judge_node, shortlist_distribution
from agent.prompts import JUDGE_QUESTION
from agent.resources import Resources
from agent.settings import AgentSettings
from agent.spotlight import MARK
from tools.llm import EmbeddedChat, LLMSettings
from tools.wiki import WikiSettings

# --- fusion and calibration, on numbers ---------------------------------------------------------


def test_fusion_is_the_normalised_weighted_geometric_mix() -> None:
    pre, judge = [0.7, 0.2, 0.1], [0.1, 0.6, 0.3]
    assert fuse(pre, judge, 0.0) == pytest.approx(pre)
    assert fuse(pre, judge, 1.0) == pytest.approx(judge)
    half = [math.sqrt(a * b) for a, b in zip(pre, judge, strict=True)]
    assert fuse(pre, judge, 0.5) == pytest.approx([v / sum(half) for v in half])
    assert max(range(3), key=fuse(pre, judge, 0.8).__getitem__) == 1, "a heavy judge weight follows the judge"
    assert fuse([1.0, 0.0], [0.0, 1.0], 0.5) == pytest.approx([0.5, 0.5]), "zeros are floored, not fatal"
    prerank = {"probabilities": [0.1, 0.6, 0.2, 0.1]}
    assert shortlist_distribution(prerank, ["a", "b", "c", "d"], ["b", "c"]) == pytest.approx([0.75, 0.25])


def _item(gold: str, pre: list[float], judge: list[float] | None, margin: float) -> dict:
    shortlist = ["A", "B", "C"]
    return {
        "id": gold + str(margin),
        "gold": gold,
        "in_candidates": True,
        "margin": margin,
        "top": shortlist[max(range(3), key=pre.__getitem__)],
        "p_top": dict(zip(shortlist, pre, strict=True)),
        "shortlist": shortlist,
        "prerank": pre,
        "judge": judge,
        "free_text": None,
    }


def test_calibration_picks_the_weight_and_margin_that_decide_best() -> None:
    items = [
        _item("A", [0.99, 0.005, 0.005], [0.1, 0.8, 0.1], margin=0.985),  # judge wrong, pre-ranker sure
        _item("B", [0.5, 0.4, 0.1], [0.05, 0.9, 0.05], margin=0.1),  # judge right, pre-ranker hesitant
        _item("C", [0.45, 0.1, 0.45], [0.2, 0.1, 0.7], margin=0.0),  # tie broken by the judge
    ]
    assert decide(items[1], 0.0, None)[0] == "A" and decide(items[1], 1.0, None)[0] == "B"
    result = choose(items)
    assert result["acc@1"] == 1.0 and result["prerank_acc@1"] < 1.0 and result["judge_acc@1"] < 1.0
    weight, margin = result["settings"]["judge_weight"], result["settings"]["skip_judge_margin"]
    assert all(decide(i, weight, margin)[0] == i["gold"] for i in items)
    assert result["env"].startswith(f"MEL_AGENT_JUDGE_WEIGHT={weight} ")
    assert len(result["grid"]) == 11 * 9


# --- the real embedded judge --------------------------------------------------------------------

CANDIDATES = [
    {"qid": "Q146", "label": "cat", "description": ""},
    {"qid": "Q8486", "label": "coffee", "description": ""},
    {"qid": "Q41291", "label": "rocket", "description": ""},
]
DESCRIPTIONS = {
    "Q146": "A cat is a small domesticated carnivorous mammal with soft fur.",
    "Q8486": "Coffee is a brewed drink prepared from roasted coffee beans.",
    "Q41291": "A rocket is a vehicle propelled by a rocket engine, used for spaceflight.",
}


def _state(order: list[str], probabilities: list[float]) -> dict:
    """A decision at the judge: the pre-ranker leans to cat, the image says rocket."""
    return {
        "mention": "rocket",
        "sentence": "A rocket on the launch pad before lift-off.",
        "image": None,
        "candidates": CANDIDATES,
        "descriptors": {"words": ["space shuttle", "missile", "rocket", "launch pad"]},
        "descriptions": DESCRIPTIONS,
        "prerank": {
            "qids": [c["qid"] for c in CANDIDATES],
            "probabilities": probabilities,
            "order": order,
            "margin": 0.2,
            "decisive": False,
        },
    }


def _resources(tmp_path: Path, llm: LLMSettings | None = None, task: str = "i2t", **settings) -> Resources:
    agent = AgentSettings(
        task=task,
        llm=llm or LLMSettings(),
        wiki=WikiSettings(mode="offline", cache_dir=tmp_path / "wiki"),
        checkpoint_db=tmp_path / "cp.sqlite",
        **settings,
    )
    return Resources(agent, {})


PAPER_QUESTION = {  # seed paper 000, section 4, the MLLM prompts, copied from the paper's text
    "i2t": "Which candidate best describes the main object in this image? \n Answer with the index of the candidate.",
    "it2t": "Please observe the image and understand the description. Which candidate best describes the "
    "main object in the image? \n Answer with the index of the candidate.",
}


@pytest.mark.parametrize("task", ["i2t", "it2t"])
def test_the_judge_asks_the_papers_question_and_its_answer_decides(tmp_path: Path, task: str) -> None:
    """Over a real OpenAI-compatible server on 127.0.0.1 (no logprobs: the free-text answer is
    parsed): the request ends with the paper's question word for word, and the judge's answer,
    not the pre-ranker, picks the decision: answers "1", "2", "3" give three decisions."""
    from openai_faults_server import fault_server

    state = _state(["Q146", "Q41291", "Q8486"], [0.5, 0.2, 0.3])
    decisions = {}
    for answer in ("1", "2", "3"):
        with fault_server(answer=answer) as server:
            llm = LLMSettings(base_url=server.url, model="fault-model", retries=0)
            out = judge_node(state, _resources(tmp_path, llm=llm, task=task, judge_weight=1.0))
            (body,) = server.bodies
        record = out["judge"]
        question = body["messages"][-1]["content"]
        assert question.endswith(PAPER_QUESTION[task]), question[-300:]
        assert record["fallback"] is None and record["raw"] == answer
        assert record["decision"] == record["shortlist"][int(answer) - 1]
        decisions[answer] = record["decision"]
    assert sorted(decisions.values()) == sorted(["Q146", "Q41291", "Q8486"]), decisions


@pytest.mark.slow
def test_the_embedded_judges_distribution_decides(tmp_path: Path) -> None:
    state = _state(["Q146", "Q41291", "Q8486"], [0.5, 0.2, 0.3])
    out = judge_node(state, _resources(tmp_path, judge_weight=1.0))
    record = out["judge"]
    print(json.dumps({k: record[k] for k in ("raw", "method", "distributions", "valid_mass")}))
    assert record["method"] == "logits" and record["fallback"] is None and out["fallbacks"] == []
    judged = record["distributions"]["judge"]
    assert sum(judged.values()) == pytest.approx(1.0, abs=1e-5)
    assert max(judged, key=judged.get) == "Q41291", "the descriptors say rocket"
    assert record["decision"] == record["judge_decision"] == "Q41291", "with w = 1 the judge decides"
    assert record["decision"] != state["prerank"]["order"][0], "and overturns the pre-ranker's top"
    assert record["shortlist"][record["choice"]] == "Q41291" and record["raw"] == str(record["choice"] + 1)
    assert MARK in record["prompt"] and "⟦" in record["prompt"], "descriptions reach the judge datamarked"
    assert JUDGE_QUESTION["i2t"] in record["prompt"].replace("[user] ", ""), "the paper's question verbatim"
    pre = [record["distributions"]["prerank"][q] for q in record["shortlist"]]
    own = [judged[q] for q in record["shortlist"]]
    assert record["distributions"]["fused"] == pytest.approx(dict(zip(record["shortlist"], own, strict=True)))
    assert max(range(3), key=fuse(pre, own, 0.0).__getitem__) == 0, "w = 0 would have kept the pre-ranker"


@pytest.mark.slow
def test_an_index_past_nine_comes_out_of_the_token_trie() -> None:
    """Qwen's tokenizer splits "10" into "1" and "0": the trie must tell "1" from "10" and "11"."""
    messages = [{"role": "user", "content": "What is 7 + 3? Answer with the number only."}]
    options = [str(i) for i in range(1, 12)]
    reply = EmbeddedChat().choose(messages, options)
    print(reply)
    assert reply.method == "logits" and len(reply.probabilities) == 11
    assert sum(reply.probabilities) == pytest.approx(1.0)
    assert reply.text == "10" and reply.probabilities[9] > 0.5, "'1' then '0', not '1' alone"
    assert reply.probabilities[9] > 10 * max(reply.probabilities[0], reply.probabilities[10])


@pytest.mark.slow
def test_mllm_baseline_is_the_judge_alone_in_dataset_order(tmp_path: Path) -> None:
    from agent.link import clean_image
    from agent.mllm import candidates_for, judge_alone
    from kb.dataset import load_dataset

    demo = load_dataset("demo")
    mention = demo.mention("rocket-0")
    qids = ["Q146", "Q8486", "Q41291", "Q405"]
    resources = _resources(tmp_path)
    resources.entities = demo.entities
    record = judge_alone(resources, mention, candidates_for(qids, demo.entities), clean_image(mention))
    print(json.dumps({k: record[k] for k in ("raw", "method", "distribution", "descriptors", "decision")}))
    assert record["qids"] == qids and record["method"] == "logits" and record["fallback"] is None
    assert record["descriptors"], "a text judge sees the describer's words"
    assert "1. cat\n2. coffee\n3. rocket\n4. Moon" in record["prompt"], "labels only, dataset order"
    assert MARK not in record["prompt"] and "Evidence" not in record["prompt"], "no retrieval, no enrichment"
    assert JUDGE_QUESTION["i2t"] in record["prompt"]
    probabilities = record["distribution"]
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert record["decision"] == max(probabilities, key=probabilities.get) == record["ranking"][0]
    assert record["ranking"] == sorted(qids, key=lambda q: -probabilities[q])


# --- the OpenAI-compatible path, on real servers on 127.0.0.1 -----------------------------------


class _PlainHandler(BaseHTTPRequestHandler):
    """``/v1/chat/completions`` answered by the real embedded model, with no ``logprobs`` field, as
    servers that do not implement them (older Ollama, some proxies) answer."""

    protocol_version = "HTTP/1.1"
    chat = None

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._json({"object": "list", "data": [{"id": "plain", "object": "model"}]})

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        reply = self.chat.chat(
            request["messages"], temperature=0.0, max_tokens=int(request.get("max_tokens") or 16)
        )
        message = {"role": "assistant", "content": reply.text}
        self._json({"model": "plain", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.slow
def test_an_endpoint_without_logprobs_falls_back_to_the_free_text_answer(tmp_path: Path) -> None:
    state = _state(["Q146", "Q41291", "Q8486"], [0.5, 0.2, 0.3])
    _PlainHandler.chat = EmbeddedChat()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _PlainHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        llm = LLMSettings(
            base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1", timeout_s=300, budget_s=600
        )
        out = judge_node(state, _resources(tmp_path, llm=llm, judge_weight=1.0))
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    record = out["judge"]
    print(json.dumps({k: record.get(k) for k in ("raw", "method", "decision", "fallback")}))
    assert record["method"] == "free-text" and record["distributions"]["judge"] is None
    assert any("no distribution" in f and "free-text answer parsed" in f for f in out["fallbacks"])
    assert record["fallback"] is None and record["decision"] == record["shortlist"][record["choice"]]


@pytest.mark.slow
def test_an_endpoints_top_logprobs_give_the_in_process_distribution(tmp_path: Path) -> None:
    """llama.cpp's own OpenAI server (``tools.llm.server``) on 127.0.0.1: the MLLM baseline's
    distribution read from its ``top_logprobs`` is the in-process one."""
    from agent.link import clean_image
    from agent.mllm import candidates_for, judge_alone
    from kb.dataset import load_dataset
    from tools.llm.server import serve_embedded

    demo = load_dataset("demo")
    mention = demo.mention("coffee-0")
    candidates = candidates_for(["Q6097", "Q8486", "Q146"], demo.entities)
    local = _resources(tmp_path)
    expected = judge_alone(local, mention, candidates, clean_image(mention))
    with serve_embedded() as url:
        remote = _resources(tmp_path, llm=LLMSettings(base_url=url, timeout_s=300, budget_s=600))
        remote.describer = local.describer
        got = judge_alone(remote, mention, candidates, clean_image(mention))
    print(json.dumps({"local": expected["distribution"], "remote": got["distribution"]}))
    assert got["method"] == "top_logprobs" and got["model"] and remote.llm.name.startswith("openai:")
    assert got["prompt"] == expected["prompt"] and got["fallback"] is None
    assert got["distribution"] == pytest.approx(expected["distribution"], abs=5e-3)
    assert got["decision"] == expected["decision"]
    assert got["valid_mass"] == pytest.approx(expected["valid_mass"], abs=5e-3)
