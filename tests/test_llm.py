"""LLM backends: settings, the OpenAI-compatible client against misbehaving servers, the answer
parser, and the real embedded model in-process (over HTTP through llama.cpp's own server:
tests/test_llama_server.py)."""

from __future__ import annotations

import time

import pytest
from openai_faults_server import ANSWER, MODEL, fault_server
from support import closed_port

from tools.llm import EmbeddedChat, LLMError, LLMSettings, OpenAIChat, chat_model, parse_choice
from tools.llm.openai_chat import parse_sse, retry_after

HI = [{"role": "user", "content": "hi"}]
# What may pass beyond a budget: thread hand-off and one interpreter scheduling slice, on a
# loaded 2-core machine.
SLACK_S = 0.5


def _client(url: str, **changes) -> OpenAIChat:
    base = dict(base_url=url, model=MODEL, timeout_s=2.0, retries=3, backoff_s=0.05, budget_s=10.0)
    return OpenAIChat(LLMSettings(**{**base, **changes}))


# --- settings ---------------------------------------------------------------------------------


def test_settings_from_env_with_overrides(monkeypatch) -> None:
    monkeypatch.setenv("MEL_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("MEL_LLM_MODEL", "qwen")
    monkeypatch.setenv("MEL_LLM_TIMEOUT_S", "7.5")
    monkeypatch.setenv("MEL_LLM_RETRIES", "5")
    monkeypatch.setenv("MEL_LLM_STREAM", "yes")
    monkeypatch.setenv("MEL_VLM_MODEL", "qwen2.5-vl")
    settings = LLMSettings.from_env(model=None, temperature=0.75, api_key="sk-secret")
    assert settings.base_url == "http://127.0.0.1:9/v1" and settings.model == "qwen"
    assert (settings.timeout_s, settings.retries, settings.stream, settings.temperature) == (
        7.5,
        5,
        True,
        0.75,
    )
    assert "sk-secret" not in repr(settings) and settings.to_json()["api_key"] == "***"
    vlm = LLMSettings.from_env("MEL_VLM")
    assert vlm.model == "qwen2.5-vl" and vlm.base_url is None and vlm.timeout_s == 60.0
    monkeypatch.setenv("MEL_LLM_RETRIES", "many")
    with pytest.raises(ValueError, match="RETRIES|retries"):
        LLMSettings.from_env()
    with pytest.raises(TypeError, match="unknown"):
        LLMSettings.from_env("MEL_VLM", base_ur="typo")
    with pytest.raises(ValueError):
        LLMSettings(timeout_s=0)


def test_chat_model_picks_the_backend_by_base_url() -> None:
    remote = chat_model(LLMSettings(base_url="http://127.0.0.1:8000/v1/", model="m"))
    assert isinstance(remote, OpenAIChat) and remote.name == "openai:m@http://127.0.0.1:8000/v1"
    embedded = chat_model(LLMSettings())
    assert isinstance(embedded, EmbeddedChat)
    assert embedded.name == "embedded:qwen2.5-coder-1.5b-instruct-q4_k_m"


def test_retry_after_header_forms() -> None:
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({}) is None and retry_after({"retry-after": "soon"}) is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= retry_after({"retry-after": later}) <= 31


# --- the OpenAI-compatible client against a misbehaving server ---------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("fault", ["500", "malformed", "empty", "cut", "hangup"])
def test_one_fault_is_retried_then_answered(fault: str, stream: bool) -> None:
    with fault_server([fault]) as server:
        client = _client(server.url, stream=stream)
        reply = client.chat(HI)
    assert reply.text == ANSWER and reply.attempts == 2 and reply.model == MODEL
    assert server.seen == [fault, "ok"]
    assert client.stats.as_dict() == {"calls": 1, "attempts": 2, "retries": 1, "failures": 0}
    if not stream:
        assert (reply.prompt_tokens, reply.completion_tokens) == (7, 5)


def test_429_retry_after_is_honoured() -> None:
    with fault_server(["429:0.6"]) as server:
        start = time.monotonic()
        reply = _client(server.url, backoff_s=0.01).chat(HI)
    assert reply.attempts == 2 and time.monotonic() - start >= 0.6


def test_429_asking_past_the_budget_gives_up_at_once() -> None:
    with fault_server(default="429:30") as server:
        start = time.monotonic()
        with pytest.raises(LLMError, match="HTTP 429.*budget"):
            _client(server.url, budget_s=5.0).chat(HI)
    assert time.monotonic() - start < 1.0 and server.seen == ["429:30"]


def test_persistent_500_raises_llm_error_naming_server_model_and_cause() -> None:
    with fault_server(default="500") as server:
        client = _client(server.url, retries=2)
        with pytest.raises(LLMError) as caught:
            client.chat(HI)
    error = caught.value
    assert server.url in str(error) and MODEL in str(error) and "HTTP 500: boom" in str(error)
    assert error.attempts == 3 and len(server.seen) == 3
    assert client.stats.as_dict() == {"calls": 1, "attempts": 3, "retries": 2, "failures": 1}


def test_client_errors_are_not_retried() -> None:
    with fault_server(default="400") as server, pytest.raises(LLMError, match="HTTP 400: bad model"):
        _client(server.url).chat(HI)
    assert server.seen == ["400"]


def test_closed_port_fails_fast_with_a_connection_error() -> None:
    client = _client(f"http://127.0.0.1:{closed_port()}/v1", retries=2)
    start = time.monotonic()
    with pytest.raises(LLMError, match="connection failed") as caught:
        client.chat(HI)
    assert caught.value.attempts == 3 and time.monotonic() - start < 2.0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("fault", ["sleep:30", "drip", "drip-headers"])
def test_no_attempt_outlives_its_timeout_and_no_call_its_budget(fault: str, stream: bool) -> None:
    """A stalled server, and servers that send a byte every 0.2 s forever (in the body or in the
    headers, where no read ever times out), are all cut off on time."""
    with fault_server(default=fault) as server:
        client = _client(server.url, timeout_s=0.6, retries=10, backoff_s=0.05, budget_s=1.5, stream=stream)
        start = time.monotonic()
        with pytest.raises(LLMError, match=r"within|after") as caught:
            client.chat(HI)
        elapsed = time.monotonic() - start
    assert elapsed <= 1.5 + SLACK_S
    assert caught.value.attempts >= 2  # the first attempt stopped at 0.6 s, leaving time to retry


def test_single_attempt_stops_at_timeout_without_retries() -> None:
    with fault_server(default="drip") as server:
        start = time.monotonic()
        with pytest.raises(LLMError, match="retries exhausted"):
            _client(server.url, timeout_s=0.5, retries=0).chat(HI)
    assert 0.5 <= time.monotonic() - start <= 0.5 + SLACK_S


def test_model_is_looked_up_when_not_configured() -> None:
    with fault_server() as server:
        client = _client(server.url, model=None)
        assert client.name.startswith("openai:auto@")
        client.chat(HI, temperature=0.75, max_tokens=9, seed=3)
        assert client.name == f"openai:{MODEL}@{server.url}"
    sent = server.bodies[-1]
    assert (sent["model"], sent["temperature"], sent["max_tokens"], sent["seed"]) == (MODEL, 0.75, 9, 3)


def test_settings_temperature_is_the_default() -> None:
    with fault_server() as server:
        _client(server.url, temperature=0.75).chat(HI)
    assert server.bodies[-1]["temperature"] == 0.75


def test_sse_parser_requires_a_finish_reason() -> None:
    whole = (
        b'data: {"choices":[{"index":0,"delta":{"content":"A"},"finish_reason":null}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3}}\n\n'
    )
    assert parse_sse(whole) == ("A", {"prompt_tokens": 3}, None)
    assert parse_sse(whole + b"data: [DONE]\n\n")[0] == "A"
    with pytest.raises(RuntimeError, match="finish_reason"):
        parse_sse(whole.split(b"\n\n")[0] + b"\n\ndata: [DONE]\n\n")


# --- the judge's answer --------------------------------------------------------------------------

OPTIONS = ["Barack Obama", "Michelle Obama", "Obama", "Paris", "Paris Hilton"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("2", 1),
        ("(2)", 1),
        ("[3]", 2),
        ("#2", 1),
        ("**2**", 1),
        ("B", 1),
        ("b.", 1),
        ("(B)", 1),
        ("Candidate 2", 1),
        ("candidate #4", 3),
        ("Option C", 2),
        ("Answer: 2", 1),
        ("The answer is 2.", 1),
        ("Final answer: (D)", 3),
        ("I choose candidate 3 because it fits.", 2),
        ("Selected candidate: 3", 2),
        ("I'd pick 1", 0),
        ("Answer: B. Michelle fits best.", 1),
        ('{"answer": 2}', 1),
        ('```json\n{"choice": "B"}\n```', 1),
        ('{"answer": "Paris Hilton"}', 4),
        ("Paris Hilton", 4),
        ("Paris", 3),
        ("Barack Obama", 0),
        ("Obama", 2),
        ("2. Michelle Obama", 1),
        ("Candidate 2: Michelle Obama", 1),
        ("Candidate 1 is a lawyer, candidate 2 a president. The answer is 2.", 1),
        ("The correct entity is candidate 5 (Paris Hilton).", 4),
        # ambiguous or no answer: the agent falls back to the pre-ranker
        ("Candidate 1: Michelle Obama", None),
        ("Candidate 2 or candidate 3", None),
        ("1 or 2", None),
        ("Not sure between Barack Obama and Michelle Obama", None),
        ("The answer is A former senator", None),
        ("None of them", None),
        ("NIL", None),
        ("", None),
        ("7", None),
        ("0", None),
        ('{"reason": "unclear"}', None),
        ("He was born in 1961", None),
    ],
)
def test_parse_choice(answer: str, expected: int | None) -> None:
    assert parse_choice(answer, OPTIONS) == expected


def test_parse_choice_without_options() -> None:
    assert parse_choice("1", []) is None


# --- the embedded model --------------------------------------------------------------------------

QUESTION = [
    {"role": "system", "content": "You answer with one word."},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_embedded_rejects_image_parts_before_loading() -> None:
    image_part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(LLMError, match="cannot read"):
        EmbeddedChat().chat([{"role": "user", "content": [{"type": "text", "text": "what?"}, image_part]}])


@pytest.fixture(scope="module")
def embedded_answer():
    chat = EmbeddedChat()
    return chat, chat.chat(QUESTION, max_tokens=8)


@pytest.mark.slow
def test_embedded_model_answers_deterministically(embedded_answer) -> None:
    chat, first = embedded_answer
    again = chat.chat(QUESTION, max_tokens=8)
    assert "paris" in first.text.lower()
    assert again.text == first.text and first.attempts == 1
    assert first.model == "qwen2.5-coder-1.5b-instruct-q4_k_m" and first.prompt_tokens > 10
    assert 1 <= first.completion_tokens <= 8


@pytest.mark.slow
def test_embedded_prompt_over_the_context_is_an_llm_error(embedded_answer) -> None:
    chat, _ = embedded_answer
    with pytest.raises(LLMError, match="context"):
        chat.chat([{"role": "user", "content": "word " * 5000}], max_tokens=4)


# --- constrained choice: a distribution over the answers a numbered list allows ----------------


def test_a_distribution_is_read_from_top_logprobs() -> None:
    import math

    from tools.llm.answers import distribution_from_top_logprobs, index_options

    log = math.log
    found = distribution_from_top_logprobs(
        [[("2", log(0.6)), (" 1", log(0.25)), ("The", log(0.1))]], ["2"], "123"
    )
    probabilities, valid, top, approximate = found
    assert top == "2" and valid == pytest.approx(0.85) and not approximate
    assert probabilities == pytest.approx([0.25 / 0.9, 0.6 / 0.9, 0.05 / 0.9]), (
        "an absent index gets the rest"
    )
    ten = index_options(10)
    first = [("1", log(0.7)), ("2", log(0.2))]
    split, _, _, approximate = distribution_from_top_logprobs([first, [("0", log(0.5))]], ["1", "0"], ten)
    assert not approximate and split[0] == pytest.approx(split[9]), "'1' then '0' (p 0.5) splits the mass"
    _, _, _, approximate = distribution_from_top_logprobs([first], ["2"], ten)
    assert approximate, "without the second position '1' and '10' cannot be told apart"
    assert distribution_from_top_logprobs([[("The", log(0.9))]], ["The"], "12") is None
    assert distribution_from_top_logprobs([], [], "12") is None


def test_choice_logprobs_are_parsed_from_a_completion_body() -> None:
    import json

    from tools.llm.openai_chat import parse_choice_logprobs

    entry = {
        "token": "2",
        "logprob": -0.1,
        "top_logprobs": [{"token": "2", "logprob": -0.1}, {"token": "1", "logprob": -2.5}],
    }
    body = {"model": "m", "choices": [{"message": {"content": "2"}, "logprobs": {"content": [entry]}}]}
    text, positions, generated, served = parse_choice_logprobs(json.dumps(body).encode())
    assert (text, generated, served) == ("2", ["2"], "m") and positions == [[("2", -0.1), ("1", -2.5)]]
    bare = {"choices": [{"message": {"content": "2"}}]}
    assert parse_choice_logprobs(json.dumps(bare).encode())[1] == []


@pytest.mark.slow
def test_embedded_choice_is_exact_and_agrees_with_grammar_constrained_decoding(embedded_answer) -> None:
    """The distribution comes from the model's own logits: its top option is what llama.cpp's greedy
    decoder answers under a grammar allowing only those options, and it is the same every call."""
    from llama_cpp import LlamaGrammar

    from tools.llm.embedded import gguf_path, load_llama

    chat, _ = embedded_answer
    messages = [
        {
            "role": "system",
            "content": "You answer multiple-choice questions with the number of one candidate.",
        },
        {
            "role": "user",
            "content": "Which is a fruit?\n1. hammer\n2. banana\n3. cloud\nAnswer with the index.",
        },
    ]
    reply = chat.choose(messages, ["1", "2", "3"])
    assert reply.method == "logits" and sum(reply.probabilities) == pytest.approx(1.0)
    assert reply.text == "2" and reply.choice == 1 and 0 < reply.valid_mass <= 1
    assert chat.choose(messages, ["1", "2", "3"]).probabilities == reply.probabilities, "deterministic"
    llama, lock = load_llama(gguf_path(None))
    with lock:
        llama.reset()
        constrained = llama.create_chat_completion(
            messages=messages,
            grammar=LlamaGrammar.from_string('root ::= "1" | "2" | "3"', verbose=False),
            temperature=0.0,
            repeat_penalty=1.0,
            max_tokens=2,
        )
    assert constrained["choices"][0]["message"]["content"].strip() == reply.text
    top = chat.next_token_logprobs(messages, 5)
    assert top[0][0].strip() == reply.free_top.strip() and len(top) == 5


@pytest.mark.slow
def test_embedded_prefix_cache_is_reused_and_answers_do_not_depend_on_history(embedded_answer) -> None:
    """The system turn stays in llama.cpp's KV cache between calls with the same system line, and
    an answer's numbers are the same whatever was asked before (the prompt is always evaluated as
    system turn, then the rest)."""
    from tools.llm.embedded import PREFIX_CACHE

    chat, first = embedded_answer
    other_system = [{"role": "system", "content": "You are terse."}, QUESTION[1]]
    same_system = [QUESTION[0], {"role": "user", "content": "What is the capital of Italy?"}]
    chat.chat(other_system, max_tokens=4)
    after_other_system = chat.next_token_logprobs(QUESTION)
    chat.chat(same_system, max_tokens=4)
    hits = PREFIX_CACHE["hits"]
    after_same_system = chat.next_token_logprobs(QUESTION)
    assert PREFIX_CACHE["hits"] == hits + 1, "the system turn was read from the cache"
    assert after_same_system == after_other_system, "exactly the same numbers, whatever came before"
    chat.chat(same_system, max_tokens=4)
    assert chat.chat(QUESTION, max_tokens=8).text == first.text
