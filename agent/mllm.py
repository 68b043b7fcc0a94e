"""The MLLM baseline of paper 000's Table 4: the judge alone, with no retrieval, no enrichment and
no pre-ranker.

``judge_alone`` asks the configured judge (the VLM when ``MEL_VLM_*`` is set, which sees the
pixels; else the text LLM, which sees the describer's word-level descriptors of the image) the
seed paper's question verbatim (``agent.prompts.JUDGE_QUESTION``; the IT2T one with the
caption), over the candidates' labels numbered from 1 in the dataset's candidate order. The
answer is a distribution over those indices when the backend gives one (``agent.judge.ask``),
else its free-text answer parsed. This is the "MLLM" row; the agent's own judge over the
enriched, pre-ranked shortlist is "MLLM*".

Nothing is checkpointed: the baseline is one call per mention, and its record says everything
it saw (``prompt``) and answered (``raw``, ``distribution``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from agent.judge import _prompt_text, argmax, ask, image_part
from agent.prompts import judge_messages
from agent.resources import Resources, load_pixels
from agent.state import Candidate, ImageRef


def candidates_for(qids: Sequence[str], entities: Mapping[str, Any]) -> list[Candidate]:
    """Candidate records (QID, label, KB text) for ``qids`` in their order, from a KB's entities."""
    return [
        {
            "qid": q,
            "label": entities[q].label if q in entities else q,
            "description": entities[q].description if q in entities else "",
        }
        for q in qids
    ]


def judge_alone(
    resources: Resources, mention: Any, candidates: Sequence[Candidate], image: ImageRef | None
) -> dict[str, Any]:
    """The MLLM baseline's answer for one mention (see module doc).

    ``mention`` is a ``kb.records.Mention`` (its ``mention`` and ``sentence`` are read),
    ``candidates`` the candidate records in the dataset's order (``candidates_for``), ``image``
    the clean or attacked image (``agent.link.clean_image`` or a ``.pt`` reference). Returns
    ``qids`` (the order shown), ``distribution`` ({QID: probability} or None), ``decision`` (QID,
    or None when the answer named no candidate), ``ranking`` (all QIDs, most probable first;
    the shown order after the decision without a distribution), ``choice`` (0-based),
    ``method`` (``logits`` | ``top_logprobs`` | ``free-text``), ``raw``, ``valid_mass``,
    ``free_top``, ``model``, ``prompt``, ``descriptors``, ``fallback`` (why the answer is
    missing or free text) and ``seconds``.
    """
    from agent.nodes import _short
    from tools.llm.answers import parse_choice

    started = time.perf_counter()
    settings = resources.settings
    qids = [c["qid"] for c in candidates]
    labels = [c["label"] for c in candidates]
    words: list[str] = []
    notes: list[str] = []
    pixels = None
    if resources.vlm is not None:
        pixels = image_part(image)
    elif image is not None:
        try:
            words = resources.describer.describe(load_pixels(image)).to_json()["words"]
        except Exception as exc:  # noqa: BLE001 - the judge answers without descriptors then
            notes.append(f"describe: {_short(exc)}; no descriptors")
    messages = judge_messages(
        settings.task,
        [(label, "") for label in labels],
        words,
        getattr(mention, "sentence", ""),
        getattr(mention, "mention", ""),
        pixels,
        spotlight=False,
    )
    model = resources.vlm or resources.llm

    record: dict[str, Any] = {
        "qids": qids,
        "model": model.name,
        "prompt": _prompt_text(messages),
        "descriptors": words,
        "distribution": None,
        "decision": None,
        "choice": None,
        "ranking": list(qids),
        "method": None,
        "raw": None,
        "valid_mass": None,
        "free_top": None,
    }
    try:
        reply = ask(model, messages, len(qids), settings.judge_structured_choice)
        record.update(
            method=reply.method, raw=reply.text, valid_mass=reply.valid_mass, free_top=reply.free_top
        )
        if reply.probabilities is not None:
            choice = argmax(reply.probabilities)
            record["distribution"] = {
                q: round(float(p), 6) for q, p in zip(qids, reply.probabilities, strict=True)
            }
            order = sorted(range(len(qids)), key=lambda i: (-reply.probabilities[i], i))
            record["ranking"] = [qids[i] for i in order]
        else:
            choice = parse_choice(reply.text, labels)
            notes.append(f"judge: no distribution from {model.name}; free-text answer parsed")
            if choice is None:
                raise ValueError(f"no candidate index in the answer {reply.text[:80]!r}")
            record["ranking"] = [qids[choice], *(q for q in qids if q != qids[choice])]
        record.update(choice=choice, decision=qids[choice])
    except Exception as exc:  # noqa: BLE001 - recorded: the baseline gave no usable answer
        notes.append(f"judge: {_short(exc)}; no decision")
    record["fallback"] = "; ".join(notes) or None
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record
