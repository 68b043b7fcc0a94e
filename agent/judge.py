"""The judge: paper 000's question over the pre-ranker's shortlist, answered as a distribution and
fused with the pre-ranker's.

The judge's answer is constrained to the shortlist's indices (``"1"`` .. ``"k"``) and read as a
probability per candidate (``ChoiceModel.choose``): exactly from the next-token logits for the
embedded model, from ``top_logprobs`` for an OpenAI-compatible endpoint (with vLLM's
structured-output ``choice`` when ``AgentSettings.judge_structured_choice``). The decision is then

    p_fused(c) ∝ p_pre(c)^(1 − w) · p_judge(c)^w        over the shortlist,

with ``p_pre`` the pre-ranker's softmax restricted to the shortlist and renormalised, and
``w = AgentSettings.judge_weight``: w = 0 is the pre-ranker alone, w = 1 the judge alone.
**This fusion is the project's interpretation**: paper 000's LLM-RetLink lets the MLLM answer
an index and says nothing about confidence or about combining it with the pre-ranker. A
log-linear mix (a product of experts) keeps a confident pre-ranker from being overturned by a
hesitant judge and the reverse; ``agent.calibrate`` picks ``w`` and the pre-ranker margin above
which the judge is skipped, on a dev split.

Where no distribution can be had (an endpoint without logprobs, a model without ``choose``),
the free-text answer is parsed as before (``tools.llm.answers.parse_choice``) and decides, and
a fallback is recorded; an unusable answer or a failed call leaves the pre-ranker's top
candidate. Sampling temperature plays no part in a distribution: it is the model's own (T = 1),
and the decision its argmax.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from agent.prompts import judge_messages
from agent.resources import Resources, load_pixels
from agent.state import LinkState

FLOOR = 1e-12
"""Smallest probability a log is taken of (a candidate the pre-ranker rules out stays possible)."""


def shortlist_distribution(
    prerank: dict[str, Any], qids: Sequence[str], shortlist: Sequence[str]
) -> list[float]:
    """The pre-ranker's softmax probabilities of ``shortlist`` (``qids`` is the candidate order
    of ``prerank["probabilities"]``), renormalised over the shortlist."""
    by_qid = dict(zip(qids, prerank["probabilities"], strict=True))
    values = [max(float(by_qid[q]), 0.0) for q in shortlist]
    total = sum(values)
    return [v / total for v in values] if total > 0 else [1.0 / len(values)] * len(values)


def fuse(prerank: Sequence[float], judge: Sequence[float], weight: float) -> list[float]:
    """The log-linear mix p ∝ p_pre^(1 − weight) · p_judge^weight, normalised (see module doc)."""
    logs = [
        (1.0 - weight) * math.log(max(a, FLOOR)) + weight * math.log(max(b, FLOOR))
        for a, b in zip(prerank, judge, strict=True)
    ]
    top = max(logs)
    raw = [math.exp(v - top) for v in logs]
    total = sum(raw)
    return [v / total for v in raw]


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; ties go to the earliest (the pre-ranker's better rank)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def ask(model: Any, messages: list[dict[str, Any]], count: int, structured: bool = False) -> Any:
    """The model's ``ChoiceReply`` over the indices ``1``..``count`` (``LLMError`` when it fails).

    A model without ``choose`` answers in free text (``method="free-text"``)."""
    from tools.llm.answers import index_options
    from tools.llm.base import ChoiceReply

    options = index_options(count)
    if hasattr(model, "choose"):
        if structured and type(model).__name__ == "OpenAIChat":
            return model.choose(messages, options, structured=True)
        return model.choose(messages, options)
    reply = model.chat(messages, max_tokens=16)  # free text: the configured temperature (default 0)
    return ChoiceReply(
        options, None, reply.text, reply.model, reply.seconds, "free-text", attempts=reply.attempts
    )


def _rounded(qids: Sequence[str], values: Sequence[float] | None) -> dict[str, float] | None:
    return None if values is None else {q: round(float(v), 6) for q, v in zip(qids, values, strict=True)}


def _clip_words(text: str, limit: int) -> str:
    words = text.split()
    return text if len(words) <= limit else " ".join(words[:limit]) + " …"


def _prompt_text(messages: list[dict[str, Any]]) -> str:
    parts = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = "\n".join(p.get("text", "[image]") for p in content)
        parts.append(f"[{message['role']}] {content}")
    return "\n".join(parts)


def image_part(image: Any) -> dict[str, Any] | None:
    """An ``ImageRef``'s pixels as an OpenAI ``image_url`` content part (a PNG data URI) for a VLM."""
    import base64
    import io

    from PIL import Image

    if image is None:
        return None
    pixels = load_pixels(image)
    array = pixels.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def _answered(
    model: Any,
    messages: list[dict[str, Any]],
    pre: list[float],
    shortlist: list[str],
    labels: list[str],
    settings: Any,
) -> dict[str, Any]:
    """The judge's answer to ``messages`` as record fields: raw answer, method, distributions and
    decision (fused with ``pre`` when the model gave a distribution, else its parsed index)."""
    from tools.llm.answers import parse_choice

    reply = ask(model, messages, len(shortlist), settings.judge_structured_choice)
    fields: dict[str, Any] = {
        "raw": reply.text,
        "method": reply.method,
        "seconds": round(reply.seconds, 3),
        "attempts": reply.attempts,
        "valid_mass": reply.valid_mass,
        "free_top": reply.free_top,
        "fallback": None,
    }
    if reply.probabilities is not None:
        fused = fuse(pre, reply.probabilities, settings.judge_weight)
        choice = argmax(reply.probabilities)
        fields["distributions"] = {
            "prerank": _rounded(shortlist, pre),
            "judge": _rounded(shortlist, reply.probabilities),
            "fused": _rounded(shortlist, fused),
        }
        return {
            **fields,
            "choice": choice,
            "judge_decision": shortlist[choice],
            "decision": shortlist[argmax(fused)],
        }
    choice = parse_choice(reply.text, labels)
    if choice is None:
        raise ValueError(f"no distribution and no candidate index in the answer {reply.text[:80]!r}")
    return {**fields, "choice": choice, "judge_decision": shortlist[choice], "decision": shortlist[choice]}


def judge_node(state: LinkState, res: Resources) -> dict[str, Any]:
    """The judge node's work (``agent.nodes.judge`` calls it with the run's resources)."""
    from agent.consult import found_texts
    from agent.nodes import _labels, _short, _step

    started = time.perf_counter()
    settings = res.settings
    labels = _labels(state)
    shortlist = state["prerank"]["order"][: settings.judge_top_k]
    words = settings.judge_description_words
    options = [(labels[q], _clip_words(state["descriptions"].get(q, ""), words)) for q in shortlist]
    pixels = image_part(state.get("image")) if res.vlm is not None else None
    found = found_texts(state.get("consult"))

    def messages_with(looked_up: list[str]) -> list[dict[str, Any]]:
        return judge_messages(
            settings.task,
            options,
            state["descriptors"]["words"],
            state["sentence"],
            state["mention"],
            pixels,
            spotlight=settings.spotlight,
            found=looked_up,
        )

    messages = messages_with(found)
    model = res.vlm or res.llm
    qids = [c["qid"] for c in state["candidates"]]
    pre = shortlist_distribution(state["prerank"], qids, shortlist)
    record: dict[str, Any] = {
        "shortlist": shortlist,
        "model": model.name,
        "prompt": _prompt_text(messages),
        "weight": settings.judge_weight,
        "distributions": {"prerank": _rounded(shortlist, pre), "judge": None, "fused": None},
    }
    fallbacks: list[str] = []
    try:
        record.update(_answered(model, messages, pre, shortlist, [label for label, _ in options], settings))
        if record["method"] == "free-text":
            fallbacks.append(f"judge: no distribution from {model.name}; free-text answer parsed")
    except Exception as exc:  # noqa: BLE001 - the pre-ranker decides then
        record.update(choice=None, judge_decision=None, decision=shortlist[0], fallback=_short(exc))
        fallbacks.append(f"judge: {_short(exc)}; pre-ranker's top candidate used")
    if found:  # what the agent would have decided without the consult step
        try:
            alone = _answered(
                model, messages_with([]), pre, shortlist, [label for label, _ in options], settings
            )
            record["without_consult"] = {
                k: alone.get(k) for k in ("decision", "judge_decision", "distributions", "raw")
            }
        except Exception as exc:  # noqa: BLE001 - the pre-ranker's top, as the judge would fall back
            record["without_consult"] = {"decision": shortlist[0], "fallback": _short(exc)}
    return {
        "judge": record,
        "fallbacks": fallbacks,
        "steps": [
            _step(
                "judge",
                started,
                decision=record["decision"],
                judge_decision=record.get("judge_decision"),
                method=record.get("method"),
                raw=record.get("raw"),
                fallback=record["fallback"],
            )
        ],
    }
