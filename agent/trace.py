"""``python -m agent.trace``: list, show, diff and export linking decisions from the checkpoints.

    python -m agent.trace list [--run RUN] [--wrong] [--flipped] [--json]
    python -m agent.trace show THREAD
    python -m agent.trace diff THREAD_A THREAD_B [--json]
    python -m agent.trace export THREAD --format json|html [--out FILE]

``--checkpoint-db PATH`` picks the checkpoint file (default: the agent's, ``$MEL_AGENT_DB`` or
the cache); it goes before or after the subcommand.
A thread id is ``<run>|<mention id>|<condition>``; quote it in a shell. ``--flipped`` keeps
attacked decisions whose answer differs from the same run's clean decision of that mention.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path
from typing import Any

from agent.settings import AgentSettings
from agent.state import NODES
from agent.traces import Thread, TraceStore, compare, first_divergence, node_outputs
from kb.cli_args import add_checkpoint_db_argument


def _clean_twin(store: TraceStore, thread: Thread) -> Thread | None:
    from agent.graph import thread_id

    try:
        return store.get(thread_id(thread.run_id, thread.mention_id, "clean"))
    except KeyError:
        return None


def list_rows(store: TraceStore, run: str | None, wrong: bool, flipped: bool) -> list[dict[str, Any]]:
    rows = []
    for thread in store.threads(run):
        row = thread.summary()
        if thread.condition != "clean":
            twin = _clean_twin(store, thread)
            row["flipped"] = twin is not None and twin.values.get("decision") != thread.values.get("decision")
        if wrong and row["correct"] is not False:
            continue
        if flipped and not row.get("flipped"):
            continue
        rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def show_text(thread: Thread) -> str:
    """Node by node, in order: what went in and what came out."""
    v = thread.values
    lines = [
        f"thread {thread.thread}",
        f"mention {v.get('mention')!r} in {v.get('sentence')!r}",
        f"image {(v.get('image') or {}).get('path')} ({thread.condition})",
        f"gold {v.get('gold')}  decision {v.get('decision')}  correct {_cell(v.get('correct'))}",
        "candidates " + ", ".join(f"{c['label']} ({c['qid']})" for c in v.get("candidates", [])),
    ]
    labels = {c["qid"]: c["label"] for c in v.get("candidates", [])}
    for node, output in node_outputs(v).items():
        lines.append(f"\n── {node} ({output['step']['seconds']:.2f}s)")
        lines += [f"   {line}" for line in node_lines(node, output, labels)]
    if v.get("fallbacks"):
        lines.append("\nfallbacks:")
        lines += [f"   - {f}" for f in v["fallbacks"]]
    return "\n".join(lines)


def node_lines(node: str, output: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """What ``show`` prints of one node's output (``agent.facts`` quotes the same lines)."""
    if node == "describe":
        d = output["descriptors"] or {}
        return [
            f"descriptors: {', '.join(d.get('words', [])) or '(none)'}  [{d.get('source')}]",
            f"ocr: {d.get('ocr')}",
        ]
    if node == "retrieve":
        lines = [f"query: {output['step'].get('query')!r}", f"looked up: {output['looked_up']}"]
        for hit in output["context_evidence"] or []:
            lines.append(
                f"context hit [{hit.get('source')}/{hit.get('origin')}] {hit.get('title')}: {hit.get('text', '')[:100]}"
            )
        for qid, records in (output["evidence"] or {}).items():
            for r in records:
                lines.append(
                    f"{labels.get(qid, qid)} [{r.get('source')}/{r.get('origin')}]: {r.get('text', '')[:100]}"
                )
        return lines
    if node == "store":
        ranked = sorted((output["retrieval"] or {}).items(), key=lambda kv: -kv[1])
        return ["evidence similarity: " + ", ".join(f"{labels.get(q, q)} {s:.3f}" for q, s in ranked)]
    if node == "enrich":
        origin = output["description_origin"] or {}
        return [
            f"{labels.get(q, q)} [{origin.get(q)}]: {text}"
            for q, text in (output["descriptions"] or {}).items()
        ]
    if node == "prerank":
        p = output["prerank"]
        by_qid = dict(zip(labels, p["scores"], strict=True))
        lines = [f"source {p['source']}, margin {p['margin']}, decisive {p['decisive']}"]
        lines += [f"{i}. {labels.get(q, q)} ({q}) score {by_qid.get(q)}" for i, q in enumerate(p["order"], 1)]
        return lines
    if node == "consult":
        c = output["consult"]
        lines = [
            f"model {c.get('model')}: margin {c['margin']}, entropy {c['entropy']}, "
            f"{len(c['calls'])} of at most {c['max_calls']} calls, {c['seconds']:.2f}s; stopped: {c['stopped']}"
        ]
        for i, call in enumerate(c["calls"], 1):
            arguments = json.dumps(call["arguments"], ensure_ascii=False)
            lines.append(f"{i}. {call['name']}({arguments}) [{call['status']}, {call['seconds']:.2f}s]")
            lines += [f"     {line}" for line in call["result"].splitlines()[:6]]
        if c.get("answer"):
            lines.append(f"model's last answer: {c['answer'][:200]!r}")
        return lines
    if node == "judge":
        j = output["judge"]
        return [
            f"model {j.get('model')}, method {j.get('method')}, weight {j.get('weight')}",
            "prompt:",
            *[f"  | {line}" for line in j.get("prompt", "").splitlines()],
            f"raw answer: {j.get('raw')!r}",
            f"choice {j.get('choice')} -> {j.get('judge_decision')} (judge); decision {j.get('decision')} (fused)",
            f"unconstrained: {j.get('valid_mass')} of the first token's probability on an index, top {j.get('free_top')!r}",
            *distribution_lines(j, labels),
            f"fallback: {j.get('fallback')}",
            *(
                [f"without the consult step's look-ups: decision {j['without_consult'].get('decision')}"]
                if j.get("without_consult")
                else []
            ),
        ]
    return [f"decision {output['decision']} by {output['decided_by']}, correct {_cell(output['correct'])}"]


def distribution_lines(judge: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """The shortlist with the pre-ranker's, the judge's and the fused probability of each."""
    d = judge.get("distributions") or {}
    if not d.get("prerank"):
        return []
    width = max(len(f"{labels.get(q, q)} ({q})") for q in judge["shortlist"])
    lines = [f"{'candidate':<{width + 3}} pre-ranker    judge    fused"]
    for i, q in enumerate(judge["shortlist"], 1):
        cells = [d[k].get(q) if d.get(k) else None for k in ("prerank", "judge", "fused")]
        shown = "  ".join(f"{'-' if c is None else f'{c:.4f}':>8}" for c in cells)
        mark = "  <- decision" if q == judge.get("decision") else ""
        lines.append(f"{i}. {labels.get(q, q) + f' ({q})':<{width}} {shown}{mark}")
    return lines


def diff_report(a: Thread, b: Thread) -> dict[str, Any]:
    return {
        "a": a.thread,
        "b": b.thread,
        "first_divergence": first_divergence(a.values, b.values),
        "nodes": compare(a.values, b.values),
    }


def diff_text(report: dict[str, Any]) -> str:
    lines = [
        f"A {report['a']}",
        f"B {report['b']}",
        f"first divergence: {report['first_divergence'] or 'none'}",
    ]
    for node in NODES:
        change = report["nodes"][node]
        details = {k: v for k, v in change.items() if k != "changed"}
        lines.append(
            f"\n{'≠' if change['changed'] else '='} {node}: " + json.dumps(details, ensure_ascii=False)
        )
    return "\n".join(lines)


def export_html(thread: Thread) -> str:
    """A self-contained page of one decision (no scripts, no external files)."""
    body = html.escape(show_text(thread))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(thread.thread)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em}pre{white-space:pre-wrap;"
        "background:#f6f8fa;padding:1em;border-radius:6px}</style></head><body>"
        f"<h1>Decision trace</h1><p><code>{html.escape(thread.thread)}</code></p><pre>{body}</pre>"
        f"<h2>State</h2><pre>{html.escape(json.dumps(thread.values, indent=2, ensure_ascii=False, default=str))}</pre>"
        "</body></html>"
    )


def _global_options(*, subcommand: bool) -> argparse.ArgumentParser:
    """The options every subcommand shares, accepted before or after the subcommand.

    The main parser and each subparser get a copy; the subparsers' default is SUPPRESS so a
    value given before the subcommand is not overwritten by the subparser's default."""
    parent = argparse.ArgumentParser(add_help=False)
    add_checkpoint_db_argument(parent, default=argparse.SUPPRESS if subcommand else None)
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.trace",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_options(subcommand=False)],
    )
    shared = [_global_options(subcommand=True)]
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", parents=shared, help="threads: decision, gold, seconds")
    listing.add_argument("--run", default=None)
    listing.add_argument("--wrong", action="store_true")
    listing.add_argument("--flipped", action="store_true")
    listing.add_argument("--json", action="store_true")
    show = sub.add_parser("show", parents=shared, help="one decision node by node")
    show.add_argument("thread")
    diff = sub.add_parser("diff", parents=shared, help="the first node where two decisions diverged")
    diff.add_argument("thread_a")
    diff.add_argument("thread_b")
    diff.add_argument("--json", action="store_true")
    export = sub.add_parser("export", parents=shared, help="one decision as JSON or a self-contained page")
    export.add_argument("thread")
    export.add_argument("--format", choices=("json", "html"), default="json")
    export.add_argument("--out", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = TraceStore(args.checkpoint_db or AgentSettings.from_env().checkpoint_db)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(store, args)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _run(store: TraceStore, args: argparse.Namespace) -> int:
    if args.command == "list":
        rows = list_rows(store, args.run, args.wrong, args.flipped)
        columns = [
            "thread",
            "mention_text",
            "condition",
            "decision",
            "gold",
            "correct",
            "flipped",
            "decided_by",
            "seconds",
        ]
        print(json.dumps(rows, indent=2, ensure_ascii=False) if args.json else _table(rows, columns))
    elif args.command == "show":
        print(show_text(store.get(args.thread)))
    elif args.command == "diff":
        report = diff_report(store.get(args.thread_a), store.get(args.thread_b))
        print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else diff_text(report))
    else:
        thread = store.get(args.thread)
        text = (
            export_html(thread)
            if args.format == "html"
            else json.dumps(
                {"thread": thread.thread, "values": thread.values}, indent=2, ensure_ascii=False, default=str
            )
        )
        if args.out:
            args.out.write_text(text, encoding="utf-8")
            print(f"wrote {args.out}")
        else:
            print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
