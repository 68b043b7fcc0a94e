"""What the judge sends, read from the requests a real HTTP server on 127.0.0.1 receives: the
shortlist is the pre-ranker's top ``judge_top_k`` (5 by default), vLLM's structured ``choice`` is
sent only when asked for, a ``MEL_VLM_*`` judge gets the decision's own pixels, and an MLLM answer
that names no candidate is an invalid, wrong decision (seed paper Table 4's MLLM rows)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from openai_faults_server import MODEL, fault_server
from PIL import Image
from support import private_cache

from agent.judge import judge_node
from agent.resources import Resources
from agent.settings import AgentSettings
from kb.dataset import load_dataset
from kb.images import load_pixels
from tools.llm import LLMSettings
from tools.wiki import WikiSettings

TEN = [f"Q{100 + i}" for i in range(10)]


def _state(image: dict | None = None) -> dict:
    """A decision at the judge over ten candidates, pre-ranked in the order of ``TEN``."""
    probabilities = [0.3, 0.2, 0.1, 0.1, 0.08, 0.06, 0.06, 0.04, 0.03, 0.03]
    return {
        "mention": "rocket",
        "sentence": "A rocket on the launch pad.",
        "image": image,
        "candidates": [{"qid": q, "label": f"label {q}", "description": ""} for q in TEN],
        "descriptors": {"words": ["rocket", "launch pad"]},
        "descriptions": {q: f"Description of {q}." for q in TEN},
        "prerank": {
            "qids": TEN,
            "probabilities": probabilities,
            "order": TEN,
            "margin": 0.1,
            "decisive": False,
        },
    }


def _judge(tmp_path: Path, url: str, state: dict | None = None, **settings) -> dict:
    agent = AgentSettings(
        task="i2t",
        llm=LLMSettings(base_url=url, model=MODEL, retries=0),
        wiki=WikiSettings(mode="offline", cache_dir=tmp_path / "wiki"),
        checkpoint_db=tmp_path / "cp.sqlite",
        **settings,
    )
    return judge_node(state or _state(), Resources(agent, {}))["judge"]


def _listed(prompt: str) -> list[str]:
    """The candidates a judge prompt numbers, in order."""
    return re.findall(r"^(\d+)\. label (Q\d+)", prompt, flags=re.M)


@pytest.mark.parametrize("top_k", [None, 3])
def test_the_judge_sees_only_the_pre_rankers_top_k(tmp_path: Path, top_k: int | None) -> None:
    """Ten candidates reach the judge node; the request lists the first five (the default), or
    ``judge_top_k`` of them, in the pre-ranker's order."""
    expected = 5 if top_k is None else top_k
    with fault_server(answer="1") as server:
        record = _judge(tmp_path, server.url, **({} if top_k is None else {"judge_top_k": top_k}))
        (body,) = server.bodies
    assert record["shortlist"] == TEN[:expected]
    prompt = "\n".join(m["content"] for m in body["messages"] if isinstance(m["content"], str))
    assert _listed(prompt) == [(str(i), q) for i, q in enumerate(TEN[:expected], 1)], prompt
    assert TEN[expected] not in prompt, "a candidate past the shortlist reached the judge"


def test_structured_choice_is_sent_only_when_asked_for(tmp_path: Path) -> None:
    """``MEL_AGENT_JUDGE_STRUCTURED_CHOICE=true`` adds vLLM's ``structured_outputs.choice`` over the
    shortlist's indices to the request; by default the body carries no such field."""
    bodies = {}
    for structured in (False, True):
        with fault_server(answer="2") as server:
            record = _judge(tmp_path, server.url, judge_structured_choice=structured)
            (bodies[structured],) = server.bodies
        assert record["decision"] == TEN[1], "the server's free-text '2' decided"
    assert "structured_outputs" not in bodies[False] and "guided_choice" not in bodies[False]
    assert bodies[True]["structured_outputs"] == {"choice": ["1", "2", "3", "4", "5"]}
    from_env = AgentSettings.from_env(llm=LLMSettings(), vlm=None)
    assert from_env.judge_structured_choice is False


def test_a_vlm_judge_gets_the_decisions_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``MEL_VLM_BASE_URL`` set the judge's request goes to the VLM and carries an
    ``image_url`` part whose PNG decodes to the decision's own pixels (the WikiPerson-style crop
    box applied), not to another image and not to the whole photo."""
    photo = load_dataset("demo").mention("rocket-0").image_path
    width, height = Image.open(photo).size
    box = [width * 0.1, height * 0.2, width * 0.7, height * 0.9]
    with fault_server(answer="1") as text_server, fault_server(answer="1") as vlm_server:
        monkeypatch.setenv("MEL_VLM_BASE_URL", vlm_server.url)
        monkeypatch.setenv("MEL_VLM_MODEL", MODEL)
        agent = AgentSettings.from_env(
            task="i2t",
            llm=LLMSettings(base_url=text_server.url, model=MODEL, retries=0),
            wiki=WikiSettings(mode="offline", cache_dir=tmp_path / "wiki"),
            checkpoint_db=tmp_path / "cp.sqlite",
        )
        assert agent.vlm is not None and agent.vlm.base_url == vlm_server.url
        image = {"path": str(photo), "bbox": box, "condition": "clean"}
        judge_node(_state(image), Resources(agent, {}))
        assert text_server.bodies == [], "the text LLM was asked instead of the VLM"
        (body,) = vlm_server.bodies
    parts = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]]
    (url,) = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    got = torch.from_numpy(np.asarray(sent.convert("RGB")).copy()).permute(2, 0, 1)
    expected = load_pixels(photo, tuple(box)).mul(255).round().to(torch.uint8)
    assert got.shape == expected.shape and torch.equal(got, expected)
    assert got.shape[1:] != (height, width), "the crop box was applied"


@pytest.mark.slow
def test_an_mllm_answer_naming_no_candidate_is_invalid_and_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A free-text endpoint that answers "none of them" (no logprobs): every decision is recorded
    as invalid, ranked n + 1, wrong, and counted in ``results.json``'s ``invalid_answers``."""
    from eval.run import RunConfig, run

    monkeypatch.setenv("MEL_CACHE_DIR", str(private_cache(tmp_path / "cache", ("kb",))))
    with fault_server(answer="none of them") as server:
        config = RunConfig(
            dataset="demo",
            task="i2t",
            pipeline="mllm",
            limit=2,
            candidates=3,
            agent_flags={"llm_base_url": server.url, "llm_model": MODEL},
        )
        results = run(config, tmp_path / "mllm", progress=False)
    records = [json.loads(line) for line in (tmp_path / "mllm" / "items.jsonl").read_text().splitlines()]
    assert len(records) == 2 and results["n"] == 2
    for record in records:
        assert record["invalid"] is True and record["prediction"] is None and record["raw"] == "none of them"
        assert record["rank"] == len(record["candidates"]) + 1 and record["correct"] is False
    assert results["invalid_answers"] == 2 and results["metrics"]["acc@1"]["mean"] == 0.0
