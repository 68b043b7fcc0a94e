"""Trace facts: what ``agent.chat`` may say about a decision, read from its checkpointed state.

Each function turns part of one thread's final state into numbered, quotable ``Fact`` lines
(the node they come from, and the text). Nothing here calls a model or guesses: a fact is a
value the graph stored, so an answer built on facts can be checked against ``agent.trace show``.
The chat prints the facts it used under every answer, and the LLM sees only these facts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.state import NODES
from agent.traces import node_outputs

NODE_INPUTS: dict[str, tuple[str, ...]] = {
    "describe": ("image",),
    "retrieve": ("mention", "descriptors", "candidates"),
    "store": ("evidence", "looked_up", "descriptors", "mention", "sentence"),
    "enrich": ("evidence", "context_evidence", "candidates"),
    "prerank": ("image", "candidates", "descriptions", "mention", "sentence"),
    "consult": ("prerank", "descriptions", "descriptors", "sentence", "mention"),
    "judge": ("prerank", "descriptions", "descriptors", "sentence", "mention", "consult"),
    "answer": ("prerank", "judge", "gold"),
}
"""The state keys each node reads (``agent.nodes``): what went into it."""

QID = re.compile(r"\bQ\d+\b", re.IGNORECASE)
RANK = re.compile(r"#(\d+)\b")
TEXT_LIMIT = 240


@dataclass(frozen=True)
class Fact:
    """One value from the trace: the node (or ``input``) it belongs to and what it says."""

    source: str
    text: str

    def line(self, number: int) -> str:
        return f"[{number}] ({self.source}) {self.text}"


def labels(values: dict[str, Any]) -> dict[str, str]:
    return {c["qid"]: c["label"] for c in values.get("candidates", [])}


def named(values: dict[str, Any], qid: str | None) -> str:
    if qid is None:
        return "none"
    return f"{labels(values).get(qid, qid)} ({qid})"


def resolve_candidates(values: dict[str, Any], text: str) -> list[str]:
    """Candidates a question names, in the order it names them: a QID, ``#N`` (pre-ranker rank N)
    or a label (longest labels first, so "Grace Hopper" wins over "Hopper")."""
    names = labels(values)
    order = (values.get("prerank") or {}).get("order", [])
    found: list[tuple[int, str]] = []
    for match in QID.finditer(text):
        qid = match.group(0).upper()
        if qid in names:
            found.append((match.start(), qid))
    for match in RANK.finditer(text):
        index = int(match.group(1)) - 1
        if 0 <= index < len(order):
            found.append((match.start(), order[index]))
    lowered = text.lower()
    taken: list[tuple[int, int]] = []
    for qid, label in sorted(names.items(), key=lambda kv: -len(kv[1])):
        if not label:
            continue
        for match in re.finditer(rf"(?<!\w){re.escape(label.lower())}(?!\w)", lowered):
            span = (match.start(), match.end())
            if not any(a < span[1] and span[0] < b for a, b in taken):
                taken.append(span)
                found.append((match.start(), qid))
    ordered: list[str] = []
    for _, qid in sorted(found):
        if qid not in ordered:
            ordered.append(qid)
    return ordered


def _clip(text: Any, limit: int = TEXT_LIMIT) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def decision_facts(values: dict[str, Any]) -> list[Fact]:
    """The decision itself: mention, image condition, answer, who decided, gold."""
    image = values.get("image") or {}
    words = (values.get("descriptors") or {}).get("words", [])
    facts = [
        Fact("input", f"mention {values.get('mention')!r} in caption {_clip(values.get('sentence'))!r}"),
        Fact("input", f"image condition {image.get('condition', 'none')}: {image.get('path')}"),
        Fact("describe", f"descriptors: {', '.join(words) or '(none)'}"),
        Fact(
            "answer",
            f"decision {named(values, values.get('decision'))} decided by {values.get('decided_by')}; "
            f"gold {named(values, values.get('gold'))}; correct {values.get('correct')}",
        ),
    ]
    prerank = values.get("prerank") or {}
    if prerank.get("order"):
        top = ", ".join(named(values, q) for q in prerank["order"][:3])
        facts.append(Fact("prerank", f"pre-ranker top 3: {top}; margin {prerank.get('margin')}"))
    return facts


def candidate_facts(values: dict[str, Any], qid: str) -> list[Fact]:
    """One candidate through the graph: KB text, enriched description, store similarity,
    pre-ranker score/probability/rank, whether the judge saw it and whether it was chosen."""
    names = labels(values)
    if qid not in names:
        raise KeyError(f"{qid} is not a candidate of this decision ({', '.join(names)})")
    candidate = next(c for c in values["candidates"] if c["qid"] == qid)
    who = named(values, qid)
    facts = [Fact("input", f"{who} KB description: {_clip(candidate.get('description')) or '(none)'}")]
    descriptions = values.get("descriptions") or {}
    if qid in descriptions and descriptions[qid] != candidate.get("description"):
        origin = (values.get("description_origin") or {}).get(qid, "?")
        origin = "llm" if origin == "llm" else origin.split(":")[0]
        facts.append(Fact("enrich", f"{who} description [{origin}]: {_clip(descriptions[qid])}"))
    retrieval = values.get("retrieval") or {}
    if qid in retrieval:
        ranked = sorted(retrieval, key=lambda q: -retrieval[q])
        facts.append(
            Fact(
                "store",
                f"{who} evidence similarity to the descriptors {retrieval[qid]:.3f} "
                f"(rank {ranked.index(qid) + 1} of {len(ranked)})",
            )
        )
    prerank = values.get("prerank") or {}
    if prerank.get("order"):
        index = [c["qid"] for c in values["candidates"]].index(qid)
        facts.append(
            Fact(
                "prerank",
                f"{who} score {prerank['scores'][index]}, probability {prerank['probabilities'][index]}, "
                f"rank {prerank['order'].index(qid) + 1} of {len(prerank['order'])}",
            )
        )
    judge = values.get("judge") or {}
    if judge:
        shortlist = judge.get("shortlist", [])
        seen = (
            f"was the judge's option {shortlist.index(qid) + 1} of {len(shortlist)}"
            if qid in shortlist
            else f"was not shown to the judge (outside its top {len(shortlist)})"
        )
        if judge.get("fallback") is not None:
            verdict = "the judge gave no usable answer"
        else:
            verdict = "the judge chose it" if judge.get("decision") == qid else "the judge did not choose it"
        distributions = judge.get("distributions") or {}
        if qid in shortlist and distributions.get("judge"):
            verdict += (
                f" (judge probability {distributions['judge'][qid]}, pre-ranker {distributions['prerank'][qid]}"
                f" over the shortlist, fused {distributions['fused'][qid]})"
            )
        facts.append(Fact("judge", f"{who} {seen}; {verdict}"))
    return facts


def judge_facts(values: dict[str, Any]) -> list[Fact]:
    judge = values.get("judge") or {}
    if not judge:
        return [Fact("judge", "the judge did not run (the pre-ranker was decisive)")]
    facts = [
        Fact(
            "judge",
            f"{judge.get('model')} answered {judge.get('raw')!r} ({named(values, judge.get('judge_decision'))}) "
            f"-> decision {named(values, judge.get('decision'))}",
        )
    ]
    if judge.get("fallback"):
        facts.append(Fact("judge", f"fallback to the pre-ranker: {_clip(judge['fallback'], 100)}"))
    return facts + distribution_facts(values)


def consult_facts(values: dict[str, Any]) -> list[Fact]:
    """What the consult step looked up and why: the uncertainty that started it, each call with its
    arguments and first result line, why it stopped, and what the decision would have been without it."""
    record = values.get("consult")
    if not record:
        prerank = values.get("prerank") or {}
        return [
            Fact(
                "consult",
                f"nothing was looked up: the consult step did not run (pre-ranker margin {prerank.get('margin')})",
            )
        ]
    order = (values.get("prerank") or {}).get("order", [])
    facts = [
        Fact(
            "consult",
            f"looked things up because the pre-ranker was uncertain: its margin {record['margin']} was below "
            f"the consult threshold {record.get('threshold')}, between "
            f"{named(values, order[0] if order else None)} and {named(values, order[1] if len(order) > 1 else None)}, "
            f"entropy {record['entropy']} over the top {record['shortlist_size']}",
        )
    ]
    for i, call in enumerate(record["calls"], 1):
        first = call["result"].splitlines()[0] if call["result"] else ""
        arguments = json.dumps(call["arguments"], ensure_ascii=False)
        facts.append(
            Fact(
                "consult", f"call {i}: {call['name']}({arguments}) [{call['status']}] -> {_clip(first, 160)}"
            )
        )
    facts.append(
        Fact(
            "consult",
            f"stopped: {record['stopped']} ({len(record['calls'])} of at most {record['max_calls']} calls)",
        )
    )
    without = ((values.get("judge") or {}).get("without_consult") or {}).get("decision")
    if without:
        same = without == values.get("decision")
        facts.append(
            Fact(
                "judge",
                f"without the look-ups the decision would have been {named(values, without)}"
                + (" too" if same else f", not {named(values, values.get('decision'))}"),
            )
        )
    return facts


def _distribution(values: dict[str, Any], probabilities: dict[str, float]) -> str:
    ranked = sorted(probabilities.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{labels(values).get(q, q)} {p:.3f}" for q, p in ranked)


def distribution_facts(values: dict[str, Any]) -> list[Fact]:
    """The judge's, the pre-ranker's and the fused distribution over the shortlist, and what
    the fusion did: whether the judge's own choice or the pre-ranker's top won, and by how much."""
    judge = values.get("judge") or {}
    distributions = judge.get("distributions") or {}
    if not distributions.get("prerank"):
        return []
    pre, own, fused = distributions["prerank"], distributions.get("judge"), distributions.get("fused")
    facts = [Fact("judge", f"pre-ranker distribution over the shortlist: {_distribution(values, pre)}")]
    if not own or not fused:
        why = "its free-text answer was parsed" if judge.get("method") == "free-text" else "no judge answer"
        return [*facts, Fact("judge", f"no judge distribution ({why}); no fusion")]
    weight = judge.get("weight")
    facts += [
        Fact(
            "judge",
            f"judge distribution ({judge.get('method')}; {judge.get('valid_mass')} of its unconstrained "
            f"first-token probability was on an index): {_distribution(values, own)}",
        ),
        Fact("judge", f"fused p ∝ pre^{1 - weight:.2f} · judge^{weight:.2f}: {_distribution(values, fused)}"),
    ]
    decision, pre_top = judge.get("decision"), max(pre, key=pre.get)
    judge_top = judge.get("judge_decision")
    if judge_top == decision == pre_top:
        text = f"the judge and the pre-ranker agreed on {named(values, decision)}"
    elif decision == pre_top:
        text = (
            f"the judge alone preferred {named(values, judge_top)} ({own[judge_top]:.3f}), but the pre-ranker "
            f"gave it {pre[judge_top]:.4f} against {pre[decision]:.4f} for {named(values, decision)}, "
            f"so the fused decision stayed with the pre-ranker"
        )
    elif decision == judge_top:
        text = (
            f"the judge moved the decision from the pre-ranker's {named(values, pre_top)} to "
            f"{named(values, decision)} (judge {own[decision]:.3f} against {own[pre_top]:.3f})"
        )
    else:
        text = f"neither's top won: the fused decision is {named(values, decision)} ({fused[decision]:.3f})"
    return [*facts, Fact("judge", text)]


def comparison_facts(values: dict[str, Any], a: str, b: str) -> list[Fact]:
    """Why one candidate and not the other: the decision, both candidates, the judge's answer."""
    return [
        *decision_facts(values)[2:],
        *candidate_facts(values, a),
        *candidate_facts(values, b),
        *judge_facts(values),
    ]


def evidence_facts(values: dict[str, Any], qid: str, limit: int = 6) -> list[Fact]:
    """The Wikipedia/Wikidata/KB records retrieved for a candidate, and context hits naming it."""
    who = named(values, qid)
    if qid not in labels(values):
        raise KeyError(f"{qid} is not a candidate of this decision")
    records = (values.get("evidence") or {}).get(qid, [])
    facts = [
        Fact(
            "retrieve",
            f"{who} [{r.get('source')}/{r.get('origin')}] {r.get('title')}: {_clip(r.get('text'))}",
        )
        for r in records[:limit]
    ]
    label = labels(values)[qid].lower()
    for hit in values.get("context_evidence") or []:
        if hit.get("qid") == qid or (hit.get("title") or "").lower() == label:
            facts.append(Fact("retrieve", f"context search hit for {who}: {_clip(hit.get('text'))}"))
    return facts or [Fact("retrieve", f"no evidence was retrieved for {who}")]


def node_facts(values: dict[str, Any], node: str) -> list[Fact]:
    """What went into a node (the state keys it reads) and what came out (its output and step)."""
    from agent.trace import node_lines

    if node not in NODES:
        raise KeyError(f"no node {node!r}; the nodes are {', '.join(NODES)}")
    outputs = node_outputs(values)
    if node not in outputs:
        return [Fact(node, f"{node} did not run in this decision")]
    facts = [Fact(node, f"in {key}: {_clip(_brief(values, key), 300)}") for key in NODE_INPUTS[node]]
    output = outputs[node]
    facts += [Fact(node, f"out {_clip(line, 300)}") for line in node_lines(node, output, labels(values))]
    facts.append(Fact(node, f"took {output['step'].get('seconds')} s"))
    return facts


def _brief(values: dict[str, Any], key: str) -> str:
    """A one-line view of a state value (long structures summarised, not dumped)."""
    value = values.get(key)
    if key == "image":
        return f"{(value or {}).get('path')} ({(value or {}).get('condition')})" if value else "none"
    if key == "candidates":
        return ", ".join(named(values, c["qid"]) for c in value or [])
    if key == "descriptors":
        return ", ".join((value or {}).get("words", [])) or "(none)"
    if key in ("evidence",):
        return f"{sum(len(v) for v in (value or {}).values())} records for {len(value or {})} candidates"
    if key == "context_evidence":
        return ", ".join(str(h.get("title")) for h in value or []) or "(none)"
    if key == "descriptions":
        return "; ".join(f"{labels(values).get(q, q)}: {t}" for q, t in (value or {}).items())
    if key == "prerank":
        return "order " + ", ".join(named(values, q) for q in (value or {}).get("order", []))
    if key == "consult":
        return f"{len((value or {}).get('calls', []))} look-ups" if value else "(did not run)"
    if key == "judge":
        return f"answer {(value or {}).get('raw')!r} -> {(value or {}).get('decision')}"
    if key == "gold":
        return named(values, value)
    return str(value)


def numbered(facts: Sequence[Fact]) -> str:
    return "\n".join(fact.line(i) for i, fact in enumerate(facts, 1))
