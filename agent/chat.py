"""``python -m agent.chat``: ask questions about one linking decision, and try what-ifs.

    python -m agent.chat --thread 'RUN|MENTION|CONDITION' [--checkpoint-db PATH] [--dataset NAME]
        [--task i2t|it2t] [--scorer NAME] [--llm-base-url URL --llm-model NAME]

Reads questions line by line from stdin when it is not a terminal (scriptable: ``printf
'why A and not B?\\n' | python -m agent.chat --thread T``), with a prompt otherwise; ``help``
lists what it understands.

What is deterministic and what is the LLM:

- every line is first read by ``agent.intents`` (rules, no model): commands (``summary``,
  ``node NODE``, ``explain``, ``compare A B``, ``evidence X``) are answered with trace facts
  (``agent.facts``) alone; ``explain`` lays out the judge's, the pre-ranker's and the fused
  distributions and says which side the fused decision followed;
- what-ifs ("what if the descriptors were 'rocket, launch'?", "drop candidate Q5", "use the
  clean image", "use image PATH") fork the decision at a checkpoint into a new thread and run
  the graph on (``agent.forks``); the reply is the new decision and what changed, from
  ``agent.traces.compare``. The graph's own nodes call the LLM there as in any run;
- only "why ..." questions and other free text go to the configured LLM
  (``AgentSettings.llm``; the embedded Qwen2.5-Coder-1.5B by default), with the relevant trace
  facts numbered in its prompt. Every answer is printed with the facts it was given, marking
  the ones it cited, so a reader can check it; when the LLM fails, the facts are printed alone
  with the reason.

The knowledge base a what-if needs (the offline wiki replica) is ``--dataset``, or the
``dataset`` of the ``config.json`` beside the checkpoint file (an ``eval.run`` folder); task
and scorer default the same way.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from agent import facts as trace_facts
from agent import forks
from agent.facts import Fact, named, numbered
from agent.graph import split_thread_id, thread_id
from agent.intents import HELP, Intent, parse
from agent.resources import Resources
from agent.settings import AgentSettings
from agent.traces import TraceStore
from kb.errors import DatasetError

EXPLAIN_SYSTEM = (
    "You explain one decision of an entity-linking agent to a researcher. Use only the numbered "
    "trace facts given; do not invent facts and do not copy the list. Cite each fact you use by "
    "its number in brackets, for example: The pre-ranker put it first [7]. Answer in two or three "
    "sentences."
)
CITATION = re.compile(r"\[(\d+)\]")


class ChatSession:
    """One conversation about one thread. ``resources`` is called on the first what-if (it loads
    the KB and the models the re-run nodes need); ``llm`` answers free-form questions."""

    def __init__(self, store: TraceStore, thread: str, llm: Any, resources: Callable[[], Resources]) -> None:
        self.store = store
        self.thread = store.get(thread)
        self.llm = llm
        self._resources_factory = resources
        self._resources: Resources | None = None

    @property
    def values(self) -> dict[str, Any]:
        return self.thread.values

    def resources(self) -> Resources:
        if self._resources is None:
            self._resources = self._resources_factory()
        return self._resources

    def opening(self) -> str:
        return (
            f"decision {self.thread.thread} (checkpoints {self.store.db})\n"
            + numbered(trace_facts.decision_facts(self.values))
            + "\n(type help for what I understand)"
        )

    def handle(self, line: str) -> str:
        """The reply to one line (``ValueError``/``KeyError`` and a KB that cannot be loaded for a
        what-if, ``DatasetError``, become a one-line error)."""
        intent = parse(line, self.values)
        try:
            return self._dispatch(intent)
        except (KeyError, ValueError, DatasetError) as exc:
            return f"error: {exc.args[0] if exc.args else exc}"

    def _dispatch(self, intent: Intent) -> str:
        v = self.values
        if intent.kind == "help":
            return HELP
        if intent.kind == "quit":
            return "bye"
        if intent.kind == "summary":
            return numbered(trace_facts.decision_facts(v))
        if intent.kind == "node":
            return numbered(trace_facts.node_facts(v, intent.node or ""))
        if intent.kind == "fusion":
            return numbered(trace_facts.decision_facts(v)[3:] + trace_facts.judge_facts(v))
        if intent.kind == "lookups":
            return numbered(trace_facts.consult_facts(v))
        if intent.kind == "compare":
            a, b = self._pair(intent.candidates)
            return numbered(trace_facts.comparison_facts(v, a, b))
        if intent.kind == "evidence":
            if not intent.candidates:
                raise ValueError("name a candidate: evidence Q42, evidence 'label' or evidence #2")
            return "\n".join(numbered(trace_facts.evidence_facts(v, qid)) for qid in intent.candidates)
        if intent.kind == "why":
            a, b = self._pair(intent.candidates)
            return self.explain(intent.text, trace_facts.comparison_facts(v, a, b))
        if intent.kind == "ask":
            extra = [f for qid in intent.candidates for f in trace_facts.candidate_facts(v, qid)]
            return self.explain(
                intent.text, [*trace_facts.decision_facts(v), *extra, *trace_facts.judge_facts(v)]
            )
        return self.what_if(intent)

    def _pair(self, named_qids: list[str]) -> tuple[str, str]:
        """Two candidates to compare: the two named; one named and the decision (or, when the one
        named is the decision, the gold if it was wrong, else the pre-ranker's runner-up)."""
        decision = self.values.get("decision")
        order = (self.values.get("prerank") or {}).get("order", [])
        if len(named_qids) >= 2:
            return named_qids[0], named_qids[1]
        first = named_qids[0] if named_qids else decision
        if first != decision:
            return decision, first
        gold = self.values.get("gold")
        if gold and gold != decision and gold in trace_facts.labels(self.values):
            return decision, gold
        other = next((q for q in order if q != decision), None)
        if other is None:
            raise ValueError("this decision has a single candidate; nothing to compare")
        return decision, other

    def explain(self, question: str, given: list[Fact]) -> str:
        """The LLM's answer from the numbered facts, then the facts (cited ones marked *)."""
        messages = [
            {"role": "system", "content": EXPLAIN_SYSTEM},
            {"role": "user", "content": f"Trace facts:\n{numbered(given)}\n\nQuestion: {question}"},
        ]
        try:
            reply = self.llm.chat(messages, temperature=0.0, max_tokens=160)
            answer, head = reply.text.strip(), f"answer ({self.llm.name}, {reply.seconds:.1f} s):"
        except Exception as exc:  # noqa: BLE001 - the facts still answer; the reason is shown
            answer, head = (
                "",
                f"the LLM gave no answer ({type(exc).__name__}: {str(exc)[:200]}); the trace facts:",
            )
        cited = {int(n) for n in CITATION.findall(answer)}
        lines = [head]
        if answer:
            marks = "* = cited" if cited else "it cites none by number"
            lines += [answer, "", f"based on these trace facts ({marks}):"]
        lines += [("* " if i in cited else "  ") + fact.line(i) for i, fact in enumerate(given, 1)]
        return "\n".join(lines)

    def what_if(self, intent: Intent) -> str:
        change = self._change(intent)
        fork = forks.run_fork(self.store, self.resources(), self.thread, change)
        return fork_report(fork, self.store.db)

    def _change(self, intent: Intent) -> forks.Change:
        v = self.values
        if intent.kind == "descriptors":
            return forks.descriptors_change(v, intent.words)
        if intent.kind == "drop":
            if len(intent.candidates) != 1:
                raise ValueError("drop one candidate at a time (by QID, label or #rank)")
            return forks.drop_change(v, intent.candidates[0])
        if intent.kind == "image":
            path = Path(intent.path or "").expanduser()
            if not path.is_file():
                raise ValueError(f"no image file {path}")
            return forks.image_change(str(path.resolve()), f"what-if:{path.name}")
        run_id, mention_id, condition = split_thread_id(self.thread.thread.split(forks.FORK_MARK)[0])
        if condition == "clean":
            raise ValueError("this decision already used the clean image")
        clean = thread_id(run_id, mention_id, "clean")
        try:
            image = self.store.get(clean).values.get("image")
        except KeyError:
            raise ValueError(f"no clean decision {clean!r} in {self.store.db}; try: use image PATH") from None
        if not image:
            raise ValueError(f"the clean decision {clean!r} had no image")
        return forks.image_change(image["path"], "clean", image.get("bbox"))


def fork_report(fork: forks.Fork, db: Path) -> str:
    """The new decision and what changed, node by node (from ``agent.traces.compare``)."""
    before, after = fork.before, fork.after
    rerun = [s["node"] for s in after.get("steps", [])]
    rerun = rerun[rerun.index("what-if") + 1 :] if "what-if" in rerun else rerun
    lines = [
        f"what-if: {fork.change.summary}",
        f"forked {fork.source} at checkpoint {fork.parent_checkpoint} (after {fork.change.as_node}) into "
        f"{fork.thread}; the original thread is unchanged",
        f"re-ran: {', '.join(rerun)} ({fork.seconds:.1f} s)",
        f"decision: {named(after, after.get('decision'))} by {after.get('decided_by')}, correct "
        f"{after.get('correct')}  [was {named(before, before.get('decision'))} by {before.get('decided_by')}, "
        f"correct {before.get('correct')}]",
        f"first divergence: {fork.first_divergence or 'none'}",
    ]
    for node, change in fork.nodes.items():
        if change["changed"]:
            lines.append(f"  ≠ {node}: {_change_line(node, change, before, after)}")
    lines.append(f"inspect: python -m agent.trace --checkpoint-db {db} diff '{fork.source}' '{fork.thread}'")
    return "\n".join(lines)


def _change_line(node: str, change: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> str:
    def names(values: dict[str, Any], qids: Iterable[str]) -> str:
        return ", ".join(trace_facts.labels(values).get(q, q) for q in qids)

    if node == "describe":
        return f"only before: {change['only_a']}; only after: {change['only_b']}"
    if node == "retrieve":
        return f"context hits {change['context_hits_a']} -> {change['context_hits_b']}"
    if node == "store":
        return (
            f"evidence order {names(before, change['order_a'][:3])} -> {names(after, change['order_b'][:3])}"
        )
    if node == "enrich":
        return f"descriptions rewritten for {names(before, change['rewritten']) or 'none'}"
    if node == "prerank":
        return (
            f"top 3 {names(before, change['order_a'][:3])} -> {names(after, change['order_b'][:3])}; "
            f"gold rank {change['gold_rank_a']} -> {change['gold_rank_b']}"
        )
    if node == "judge":
        return f"answer {change['raw_a']!r} -> {change['raw_b']!r}"
    return f"{named(before, change['decision_a'])} -> {named(after, change['decision_b'])}"


def run_config(db: Path) -> dict[str, Any]:
    """The ``eval.run`` configuration beside a checkpoint file (empty when there is none)."""
    path = db.parent / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def make_resources(
    settings: AgentSettings, dataset: str | None, data_dir: str | None
) -> Callable[[], Resources]:
    def load() -> Resources:
        from agent.resources import resources_for
        from kb.dataset import load_dataset

        if dataset is None:
            raise ValueError("a what-if re-runs nodes that need the knowledge base: give --dataset NAME")
        loaded = load_dataset(dataset, data_dir)
        return resources_for(settings, loaded.entities, loaded.name)

    return load


def converse(session: ChatSession, lines: Iterable[str], out: TextIO, echo: bool) -> None:
    """Answer each line in turn; ``echo`` repeats the question (a scripted transcript reads as one)."""
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if echo:
            print(f"\n> {line}", file=out)
        if parse(line, session.values).kind == "quit":
            break
        print(session.handle(line), file=out, flush=True)


def _prompt_lines() -> Iterable[str]:
    while True:
        try:
            yield input("\nchat> ")
        except EOFError:
            return


def main(argv: list[str] | None = None) -> int:
    from agent.link import add_settings_arguments, settings_from_args
    from tools.llm import chat_model

    parser = argparse.ArgumentParser(
        prog="python -m agent.chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--thread", required=True, help="'<run>|<mention id>|<condition>' (quote it)")
    parser.add_argument(
        "--dataset", default=None, help="the KB what-ifs use (default: the run's config.json)"
    )
    parser.add_argument("--data-dir", default=None)
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    db = args.checkpoint_db or AgentSettings.from_env().checkpoint_db
    config = run_config(db)
    if args.task is None and config.get("task") in ("i2t", "it2t"):
        args.task = config["task"]
    if args.scorer is None:
        args.scorer = config.get("scorer")
    settings = settings_from_args(args).replace(checkpoint_db=db)
    try:
        store = TraceStore(db)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        session = ChatSession(
            store,
            args.thread,
            chat_model(settings.llm),
            make_resources(
                settings, args.dataset or config.get("dataset"), args.data_dir or config.get("data_dir")
            ),
        )
    except KeyError as exc:
        store.close()
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    interactive = sys.stdin.isatty()
    try:
        print(session.opening())
        converse(session, _prompt_lines() if interactive else sys.stdin, sys.stdout, echo=not interactive)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
