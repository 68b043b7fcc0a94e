"""The graph's nodes. Each reads the state, uses ``Resources`` from the run's context, and
returns only the keys it owns plus one ``steps`` entry (node, seconds, a summary) and any
``fallbacks`` it had to take, so a trace says what happened and why.

A failing model or service never ends a decision: the describer falls back to no
descriptors, the wiki to the offline replica and then the KB text, the LLM writer to the
evidence's first sentence, the judge to the pre-ranker; each fallback is recorded. With
``AgentSettings.spotlight`` on, retrieved text reaches the writer and the judge fenced and
datamarked (``agent.spotlight``), and a written description that addresses the reader or gives
orders is replaced by the evidence's first sentence (a recorded fallback). The judge node's
work (constrained answer, distribution, fusion) is in ``agent.judge``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from langgraph.runtime import Runtime
from pydantic import ConfigDict
from pydantic.json_schema import SkipJsonSchema

from agent.candidate_store import evidence_digest
from agent.prompts import ENRICH_PROMPT_VERSIONS, enrich_messages
from agent.resources import Resources, load_pixels
from agent.spotlight import instruction_cues, unmark
from agent.state import Candidate, LinkState

SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]\"'][.!?])\s+(?=[A-Z\"'])")
"""A sentence ends at . ! or ? after a lower-case letter, digit or closing mark and before a
capital: "the U.S. federal government" and "Dr. Who" are not cut."""


@dataclass
class AgentContext:
    """What a run passes beside the state (never checkpointed): the loaded resources.

    A caller in this process hands its ``Resources`` over (``AgentContext(resources)``). LangGraph's
    server (``langgraph dev``) builds the context itself from the JSON a run sends, which can only
    carry ``dataset``: the resources are then the environment's (``default_resources``: the KB of
    ``dataset``, else ``$MEL_AGENT_DATASET``, else ``demo``; ``MEL_LLM_*`` and the other settings),
    looked up by the first node that needs them, never in the server's event loop. ``resources`` is
    left out of the context's JSON schema, so Studio offers ``dataset`` alone.
    """

    __pydantic_config__ = ConfigDict(arbitrary_types_allowed=True)  # for the schema LangGraph derives

    resources: SkipJsonSchema[Resources | None] = None
    dataset: str | None = field(
        default=None,
        metadata={
            "description": "the dataset whose KB the agent links against (default $MEL_AGENT_DATASET, else demo)"
        },
    )


def run_resources(runtime: Any) -> Resources:
    """The run's resources: the context's own, else the environment's (``langgraph dev``).
    ``runtime`` is a node's ``Runtime`` or a tool's ``ToolRuntime``: both carry the context."""
    context = runtime.context
    if context is not None and context.resources is not None:
        return context.resources
    from agent.resources import default_resources

    return default_resources(context.dataset if context is not None else None)


def _step(node: str, started: float, **summary: Any) -> dict[str, Any]:
    return {"node": node, "seconds": round(time.perf_counter() - started, 4), **summary}


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:160]}"


def _labels(state: LinkState) -> dict[str, str]:
    return {c["qid"]: c["label"] for c in state["candidates"]}


# ------------------------------------------------------------------------------ describe


def describe(state: LinkState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Stage 1: word-level descriptors of the (clean or attacked) image."""
    started = time.perf_counter()
    empty = {"words": [], "scores": [], "ocr": [], "source": "none"}
    if state.get("image") is None:
        return {"descriptors": empty, "steps": [_step("describe", started, words=[], note="no image")]}
    describer = run_resources(runtime).describer
    try:
        descriptors = describer.describe(load_pixels(state["image"])).to_json()
    except Exception as exc:  # noqa: BLE001 - a decision goes on without descriptors
        return {
            "descriptors": {**empty, "error": _short(exc)},
            "fallbacks": [f"describe: {_short(exc)}"],
            "steps": [_step("describe", started, words=[], error=_short(exc))],
        }
    return {
        "descriptors": descriptors,
        "steps": [_step("describe", started, words=descriptors["words"], source=descriptors["source"])],
    }


# ------------------------------------------------------------------------------ retrieve


def _candidate_evidence(wiki: Any, qids: Sequence[str], labels: dict[str, str]) -> dict[str, list[dict]]:
    """Wikidata entity + Wikipedia intro of each candidate (two batched look-ups)."""
    entities = wiki.wikidata_entities(list(qids))
    titles = {q: _wikipedia_title(entities.get(q), labels[q]) for q in qids}
    pages = wiki.wikipedia_pages(sorted(set(titles.values())))
    evidence: dict[str, list[dict]] = {}
    for qid in qids:
        records = []
        if qid in entities:
            records.append(entities[qid].to_json())
        if titles[qid] in pages:
            records.append(pages[titles[qid]].to_json())
        evidence[qid] = records
    return evidence


def _wikipedia_title(entity: Any, label: str) -> str:
    """The candidate's English Wikipedia page: its Wikidata sitelink, else its label."""
    return getattr(entity, "enwiki_title", None) or label


def with_wiki_fallback(res: Resources, call: Any, fallbacks: list[str], what: str) -> Any:
    """Run ``call(wiki)`` on the configured client; on failure once more on the offline replica."""
    try:
        return call(res.wiki)
    except Exception as exc:  # noqa: BLE001 - recorded, then answered offline
        if res.settings.wiki.mode == "offline":
            fallbacks.append(f"retrieve {what}: {_short(exc)}; no evidence")
            return None
        fallbacks.append(f"retrieve {what}: {_short(exc)}; answered from the offline replica")
        try:
            return call(res.offline_wiki)
        except Exception as inner:  # noqa: BLE001
            fallbacks.append(f"retrieve {what} offline: {_short(inner)}; no evidence")
            return None


def retrieve(state: LinkState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Stage 2a: Wikipedia/Wikidata evidence per candidate (stored evidence is reused) and
    context evidence queried with the mention, the caption and the descriptors."""
    started = time.perf_counter()
    res = run_resources(runtime)
    mode = res.settings.wiki.mode
    labels = _labels(state)
    qids = list(labels)
    fallbacks: list[str] = []
    evidence = res.store.stored_evidence(qids, mode)
    reused = sorted(evidence)
    looked_up: list[str] = []
    missing = [q for q in qids if q not in evidence]
    if missing:
        fetched = with_wiki_fallback(
            res, lambda wiki: _candidate_evidence(wiki, missing, labels), fallbacks, "candidates"
        )
        evidence.update(fetched or {q: [] for q in missing})
        looked_up = sorted(fetched or {})
    words = state["descriptors"]["words"][:3]
    query = " ".join([state["mention"], *words]).strip()
    context: list[dict] = []
    if query:
        hits = with_wiki_fallback(
            res,
            lambda wiki: wiki.wikipedia_search(query, 3) + wiki.wikidata_search(state["mention"] or query, 5),
            fallbacks,
            "context",
        )
        context = [h.to_json() for h in hits or []]
    for qid in qids:  # a candidate nobody describes keeps the KB's own text
        if not evidence[qid]:
            kb_text = next(c["description"] for c in state["candidates"] if c["qid"] == qid)
            if kb_text:
                evidence[qid] = [
                    {"source": "kb", "title": labels[qid], "text": kb_text, "qid": qid, "origin": "kb"}
                ]
    return {
        "evidence": evidence,
        "looked_up": looked_up,
        "context_evidence": context,
        "fallbacks": fallbacks,
        "steps": [
            _step(
                "retrieve",
                started,
                query=query,
                looked_up=looked_up,
                reused=reused,
                context_hits=[h.get("title") for h in context],
            )
        ],
    }


# ------------------------------------------------------------------------------ store


def store(state: LinkState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Write the new evidence to Chroma and rank the candidates' evidence against the image
    descriptors (plus the caption in IT2T): the store's view of which candidate fits."""
    started = time.perf_counter()
    res = run_resources(runtime)
    mode = res.settings.wiki.mode
    labels = _labels(state)
    new = {q: state["evidence"][q] for q in state.get("looked_up", []) if state["evidence"][q]}
    res.store.put_evidence(new, labels, mode)
    query = " ".join(state["descriptors"]["words"])
    if res.settings.task == "it2t":
        query = f"{query} {state['mention']}. {state['sentence']}"
    retrieval = res.store.rank_evidence(query, list(labels), mode)
    best = max(retrieval, key=retrieval.get) if retrieval else None
    return {"retrieval": retrieval, "steps": [_step("store", started, written=sorted(new), best=best)]}


# ------------------------------------------------------------------------------ enrich


def _first_sentence(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return SENTENCE_END.split(text, maxsplit=1)[0][:limit] if text else ""


def _candidate_records(state: LinkState, qid: str, label: str) -> list[dict]:
    """The candidate's own evidence plus context hits that name it."""
    own = state["evidence"].get(qid, [])
    hits = [
        h
        for h in state.get("context_evidence", [])
        if h.get("qid") == qid or (h.get("title") or "").lower() == label.lower()
    ]
    return own + [h for h in hits if h not in own]


def enrich(state: LinkState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Stage 2b: the LLM writes one sentence-level description per candidate from its evidence
    (read from the store when the same evidence was described by the same model before). With
    spotlighting on, the evidence is fenced and datamarked, and a description that carries
    instructions (stored or new) is replaced by the evidence's first clean sentence."""
    started = time.perf_counter()
    res = run_resources(runtime)
    limit = res.settings.evidence_chars
    spotlight = res.settings.spotlight
    version = ENRICH_PROMPT_VERSIONS[spotlight]
    records = {c["qid"]: _candidate_records(state, c["qid"], c["label"]) for c in state["candidates"]}
    texts = {q: [r["text"][:limit] for r in rs if r.get("text")] for q, rs in records.items()}
    digests = {q: evidence_digest(r) for q, r in records.items()}
    ids = {q: res.store.description_id(q, d, res.llm.name, version) for q, d in digests.items()}
    descriptions = res.store.get_descriptions(ids)
    origin = {q: "store" for q in descriptions}
    written: list[str] = []
    prompts: dict[str, str] = {}
    fallbacks: list[str] = []
    for candidate in state["candidates"]:
        qid, label = candidate["qid"], candidate["label"]
        if qid in descriptions:
            continue
        with res.store.writing(f"{qid}:{digests[qid]}:{version}"):  # another decision may be writing it
            # Keyed by the model's name now: a server's model is known once it has answered.
            key = res.store.description_id(qid, digests[qid], res.llm.name, version)
            stored = res.store.get_descriptions({qid: key})
            if stored:
                descriptions[qid], origin[qid] = stored[qid], "store"
                continue
            try:
                messages = enrich_messages(label, qid, texts[qid], spotlight)
                prompts[qid] = "\n".join(f"[{m['role']}] {m['content']}" for m in messages)
                reply = res.llm.chat(messages, max_tokens=80)  # the configured temperature (default 0)
                sentence = _first_sentence(unmark(reply.text) if spotlight else reply.text)
                if not sentence:
                    raise ValueError("empty answer")
            except Exception as exc:  # noqa: BLE001 - the evidence speaks for itself then
                descriptions[qid] = _evidence_sentence(texts[qid], label, spotlight)
                origin[qid] = f"fallback: {_short(exc)}"
                fallbacks.append(f"enrich {qid}: {_short(exc)}; first evidence sentence used")
                continue
            descriptions[qid] = sentence
            origin[qid] = "llm"
            key = res.store.description_id(qid, digests[qid], res.llm.name, version)
            res.store.put_descriptions({qid: (key, sentence)}, res.llm.name)  # seen by the waiters
            written.append(qid)
    if spotlight:
        for candidate in state["candidates"]:
            qid, label = candidate["qid"], candidate["label"]
            cues = instruction_cues(descriptions[qid], label) if origin[qid] in ("llm", "store") else []
            if cues:
                shown = ", ".join(repr(c) for c in cues[:3])
                descriptions[qid] = _evidence_sentence(texts[qid], label, spotlight)
                origin[qid] = f"fallback: instructions in the written description ({shown})"
                fallbacks.append(
                    f"enrich {qid}: written description carries instructions ({shown}); first evidence sentence used"
                )
    model_name = res.llm.name  # a server's model is known once it has answered
    return {
        "descriptions": descriptions,
        "description_origin": origin,
        "enrich_prompts": prompts,
        "fallbacks": fallbacks,
        "steps": [_step("enrich", started, written=sorted(written), model=model_name, spotlight=spotlight)],
    }


def _evidence_sentence(texts: Sequence[str], label: str, screen: bool) -> str:
    """The evidence's own first sentence (the writer's stand-in); when ``screen``, the first of
    its sentences that gives no orders (``agent.spotlight.instruction_cues``), else the label."""
    if not screen:
        return _first_sentence(texts[0]) if texts else label
    sentences = (s[:300] for text in texts for s in SENTENCE_END.split(" ".join(text.split())) if s)
    return next((s for s in sentences if not instruction_cues(s, label)), label)


# ------------------------------------------------------------------------------ prerank


def candidate_text(label: str, description: str) -> str:
    """What the pre-ranker compares with: the enriched description, led by the label when the
    sentence does not name the entity (paper 000's "Model*" replaces the static prompt)."""
    if not description or description == label:
        return label
    return description if label.lower() in description.lower() else f"{label}: {description}"


def prerank(state: LinkState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """The scorer ranks the candidates' enriched descriptions against the image (+ caption)."""
    started = time.perf_counter()
    res = run_resources(runtime)
    candidates: list[Candidate] = state["candidates"]
    texts = [candidate_text(c["label"], state["descriptions"].get(c["qid"], "")) for c in candidates]
    fallbacks: list[str] = []
    try:
        if state.get("image") is None:
            raise ValueError("no image for an image task")
        pixels = load_pixels(state["image"]).unsqueeze(0)
        context = [f"{state['mention']}. {state['sentence']}"] if res.settings.task == "it2t" else None
        with torch.no_grad():
            logits = res.scorer(pixels, context, [texts])[0].float()
        scores = [round(float(v), 5) for v in logits]
        source = res.scorer.name
    except Exception as exc:  # noqa: BLE001 - rank by the store's evidence similarity instead
        retrieval = state.get("retrieval", {})
        scores = [float(retrieval.get(c["qid"], 0.0)) for c in candidates]
        logits = torch.tensor(scores) * 100.0
        source = "store-retrieval"
        fallbacks.append(f"prerank: {_short(exc)}; ranked by evidence similarity")
    probabilities = logits.softmax(dim=-1)
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
    top, second = probabilities[order[0]].item(), probabilities[order[1]].item() if len(order) > 1 else 0.0
    margin = round(top - second, 5)
    threshold = res.settings.skip_judge_margin
    decisive = threshold is not None and margin >= threshold
    consult_below = res.settings.consult_margin
    uncertain = not decisive and consult_below is not None and margin < consult_below
    result = {
        "qids": [c["qid"] for c in candidates],
        "scores": scores,
        "probabilities": [round(float(p), 5) for p in probabilities],
        "order": [candidates[i]["qid"] for i in order],
        "texts": texts,
        "margin": margin,
        "decisive": decisive,
        "consult": uncertain,
        "source": source,
    }
    return {
        "prerank": result,
        "fallbacks": fallbacks,
        "steps": [
            _step("prerank", started, top=result["order"][0], margin=margin, decisive=decisive, source=source)
        ],
    }


def route_after_prerank(state: LinkState) -> str:
    """Skip the judge when the pre-ranker is decisive (only when a threshold is configured);
    consult first when it is uncertain (only when ``consult_margin`` is set)."""
    if state["prerank"]["decisive"]:
        return "answer"
    return "consult" if state["prerank"].get("consult") else "judge"


# ------------------------------------------------------------------------------ consult


def consult(state: LinkState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """One round of look-ups the judge's model chooses (``agent.consult``)."""
    from agent.consult import consult_node

    return consult_node(state, run_resources(runtime))


# ------------------------------------------------------------------------------ judge


def judge(state: LinkState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """The LLM (or VLM, which also sees the pixels) answers paper 000's question over the top-k
    pre-ranked candidates as a distribution, fused with the pre-ranker's (``agent.judge``); an
    unusable answer falls back to the pre-ranker."""
    from agent.judge import judge_node

    return judge_node(state, run_resources(runtime))


# ------------------------------------------------------------------------------ answer


def answer(state: LinkState) -> dict[str, Any]:
    """The decision and the full ranking (decision first, then the pre-ranker's order)."""
    started = time.perf_counter()
    judged = state.get("judge") if not state["prerank"]["decisive"] else None
    decision = judged["decision"] if judged else state["prerank"]["order"][0]
    decided_by = "judge" if judged and judged.get("fallback") is None else "prerank"
    ranking = [decision, *(q for q in state["prerank"]["order"] if q != decision)]
    gold = state.get("gold")
    correct = None if gold is None else decision == gold
    return {
        "decision": decision,
        "decided_by": decided_by,
        "ranking": ranking,
        "correct": correct,
        "steps": [_step("answer", started, decision=decision, decided_by=decided_by, correct=correct)],
    }
