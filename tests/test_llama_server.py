"""``python -m tools.llm.server``: the real Qwen2.5-Coder-1.5B GGUF behind llama-cpp-python's own
OpenAI-compatible server, started as a child process on 127.0.0.1 and driven by the real
``openai`` client (chat, streaming, logprobs/top_logprobs, a json_schema response format) and by
the project's own client. One server serves the whole module (loading takes a while on 2 cores).
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import jsonschema
import openai
import pytest

from tools.llm import EmbeddedChat, LLMSettings, chat_model

QUESTION = [
    {"role": "system", "content": "You answer with one word."},
    {"role": "user", "content": "What is the capital of France?"},
]
MODEL_ID = "qwen2.5-coder-1.5b-instruct-q4_k_m"
CAPITAL = {
    "type": "object",
    "properties": {"country": {"type": "string"}, "capital": {"type": "string"}},
    "required": ["country", "capital"],
    "additionalProperties": False,
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url():
    from tools.llm.server import serve_embedded

    with serve_embedded() as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", timeout=300, max_retries=0)


def test_the_launcher_serves_on_loopback_under_the_embedded_name(url: str, client: openai.OpenAI) -> None:
    assert urlsplit(url).hostname == "127.0.0.1" and url.endswith("/v1")
    assert [m.id for m in client.models.list().data] == [MODEL_ID] == [EmbeddedChat().model_id]


def test_chat_and_its_stream_give_the_same_greedy_answer(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=QUESTION, temperature=0, max_tokens=8, seed=0
    )
    text = reply.choices[0].message.content
    assert "paris" in text.lower() and reply.model == MODEL_ID and reply.usage.prompt_tokens > 10
    chunks = list(
        client.chat.completions.create(
            model=MODEL_ID, messages=QUESTION, temperature=0, max_tokens=8, seed=0, stream=True
        )
    )
    assert len(chunks) > 2, "streamed as tokens come"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_logprobs_and_top_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=QUESTION, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    assert content, "logprobs come back (the hand-written server returned None)"
    first = content[0]
    assert len(first.top_logprobs) == 3
    values = [t.logprob for t in first.top_logprobs]
    assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
    assert first.top_logprobs[0].token == first.token and "Par" in first.token
    assert first.logprob > -0.5, "greedy 'Paris' is the model's clear favourite"


def test_json_schema_response_format_is_enforced(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Name the capital of France."}],
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": CAPITAL}},
    )
    answer = json.loads(reply.choices[0].message.content)
    jsonschema.validate(answer, CAPITAL)
    assert "paris" in answer["capital"].lower()


def test_json_object_response_format_gives_json(client: openai.OpenAI) -> None:
    """``response_format={"type": "json_object"}``: the answer parses as a JSON object, though the
    prompt asks for prose."""
    reply = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_the_api_docs_are_served(url: str) -> None:
    root = url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/docs", timeout=30) as page:
        assert page.status == 200 and "swagger" in page.read().decode().lower()
    with urllib.request.urlopen(f"{root}/openapi.json", timeout=30) as spec:
        assert "/v1/chat/completions" in json.loads(spec.read())["paths"]


def test_completions_endpoint(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL_ID, prompt="The capital of France is", max_tokens=3, temperature=0
    )
    assert "paris" in reply.choices[0].text.lower()


def test_the_projects_client_gets_the_in_process_answer(url: str) -> None:
    local = EmbeddedChat().chat(QUESTION, max_tokens=8)
    for stream in (False, True):
        served = chat_model(LLMSettings(base_url=url, stream=stream, timeout_s=300, budget_s=600))
        reply = served.chat(QUESTION, max_tokens=8)
        assert (reply.text, reply.model, reply.attempts) == (local.text, local.model, 1)


def test_concurrent_streams_are_not_cut_short(url: str, client: openai.OpenAI) -> None:
    """Requests queue behind the model's lock; a waiting one must not end another's stream early
    (llama_cpp.server's ``interrupt_requests``, off in the launcher)."""
    finishes: list[str | None] = []

    def stream() -> None:
        chunks = client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Count from 1 to 30, separated by spaces."}],
            temperature=0,
            max_tokens=24,
            stream=True,
        )
        finishes.append([c.choices[0].finish_reason for c in chunks if c.choices][-1])

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert finishes == ["length", "length"]


def test_bad_requests_get_an_error_and_the_server_goes_on(url: str) -> None:
    """llama_cpp.server answers a request it cannot read with HTTP 500 (its error handler maps
    validation errors so), naming the field; the next good request is answered."""
    bad = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}
    for body, says in ((b"not json", None), (json.dumps(bad).encode(), "max_tokens")):
        request = urllib.request.Request(
            f"{url}/chat/completions", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=60)
        assert caught.value.code == 500
        if says:
            assert says in json.loads(caught.value.read())["error"]["message"]
    reply = chat_model(LLMSettings(base_url=url, timeout_s=300, budget_s=600)).chat(QUESTION, max_tokens=8)
    assert "paris" in reply.text.lower()


def test_a_client_hanging_up_mid_stream_frees_the_model(url: str) -> None:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    body = {
        "messages": [{"role": "user", "content": "Count from 1 to 50."}],
        "max_tokens": 24,
        "stream": True,
    }
    connection.request(
        "POST", f"{parts.path}/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    assert response.status == 200 and response.read(6) == b"data: "
    connection.close()
    reply = chat_model(LLMSettings(base_url=url, timeout_s=300, budget_s=600)).chat(QUESTION, max_tokens=8)
    assert "paris" in reply.text.lower()
