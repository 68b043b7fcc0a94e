"""agent.chat: scripted sessions (stdin) about real decisions of the graph on the demo dataset.

The decisions are made by the real graph (describer, scorer, offline wiki replica, Chroma,
SQLite); the LLM is a closed port on 127.0.0.1, so fast tests exercise the deterministic
parts (intent parser, trace facts, what-if forks) and the LLM's failure path. The slow test
asks the embedded Qwen2.5-Coder-1.5B a "why X and not Y?" question and runs one what-if with it.
"""

from __future__ import annotations

import io
import re
import sqlite3
from pathlib import Path

import pytest
import torch
from support import closed_port, private_cache

from agent import chat
from agent.graph import thread_id
from agent.intents import parse
from agent.link import Linker, build_candidates, link_mentions
from agent.resources import Resources, load_pixels
from agent.settings import AgentSettings
from agent.traces import TraceStore, first_divergence
from kb.dataset import load_dataset
from tools.llm import LLMSettings
from tools.wiki import WikiSettings


@pytest.fixture(scope="module")
def decisions(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A clean and a noised decision of one demo mention, in their own cache and checkpoint file."""
    root = tmp_path_factory.mktemp("chat")
    private_cache(root / "cache", ("kb", "text_embeddings", "models"))
    port = closed_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEL_CACHE_DIR", str(root / "cache"))
        demo = load_dataset("demo")
        llm = LLMSettings(
            base_url=f"http://127.0.0.1:{port}/v1", model="none", retries=0, budget_s=2, timeout_s=1
        )
        settings = AgentSettings(
            task="i2t",
            llm=llm,
            wiki=WikiSettings(mode="offline", cache_dir=root / "wiki"),
            checkpoint_db=root / "checkpoints.sqlite",
        )
        linker = Linker(Resources(settings, demo.entities), settings.checkpoint_db)
        mention = next(m for m in demo.mentions if m.image_path is not None)
        candidates = build_candidates(demo, [mention], 5, seed=0)
        clean = next(link_mentions(linker, demo, [mention], candidates, run_id="chat"))
        pixels = load_pixels({"path": str(mention.image_path), "bbox": None, "condition": "clean"})
        noise = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
        torch.save((pixels + 0.3 * noise).clamp(0, 1), root / "noisy.pt")
        images = {mention.id: {"path": str(root / "noisy.pt"), "bbox": None, "condition": "noise"}}
        noisy = next(
            link_mentions(
                linker, demo, [mention], candidates, run_id="chat", images=images, condition="noise"
            )
        )
        linker.close()
    assert clean["error"] is None and noisy["error"] is None
    return {"root": root, "port": port, "db": settings.checkpoint_db, "clean": clean, "noisy": noisy}


def session(
    decisions: dict, thread: str, script: str, monkeypatch, capsys, llm: list[str] | None = None
) -> str:
    """Run ``python -m agent.chat`` on ``thread`` with ``script`` as its (non-terminal) stdin."""
    monkeypatch.setenv("MEL_CACHE_DIR", str(decisions["root"] / "cache"))
    monkeypatch.setenv("MEL_WIKI_CACHE_DIR", str(decisions["root"] / "wiki"))
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    if llm is None:
        monkeypatch.setenv("MEL_LLM_RETRIES", "0")
        monkeypatch.setenv("MEL_LLM_BUDGET_S", "2")
        monkeypatch.setenv("MEL_LLM_TIMEOUT_S", "1")
        llm = ["--llm-base-url", f"http://127.0.0.1:{decisions['port']}/v1", "--llm-model", "none"]
    argv = ["--thread", thread, "--checkpoint-db", str(decisions["db"]), "--dataset", "demo", "--task", "i2t"]
    assert chat.main(argv + llm) == 0
    return capsys.readouterr().out


def thread_rows(db: Path, thread: str) -> dict[str, list[tuple]]:
    """Every row the thread has, every column, in every table keyed by ``thread_id``
    (LangGraph's ``checkpoints``, with their metadata, and its pending ``writes``)."""
    connection = sqlite3.connect(str(db))
    try:
        tables = [
            name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        found = {}
        for table in tables:
            columns = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
            if "thread_id" in columns:
                found[table] = sorted(
                    connection.execute(f"SELECT * FROM {table} WHERE thread_id = ?", (thread,)).fetchall(),
                    key=repr,
                )
        return found
    finally:
        connection.close()


def rows(db: Path, thread: str) -> list[tuple]:
    connection = sqlite3.connect(str(db))
    try:
        return connection.execute(
            "SELECT checkpoint_id, parent_checkpoint_id, checkpoint FROM checkpoints WHERE thread_id = ?"
            " ORDER BY checkpoint_id",
            (thread,),
        ).fetchall()
    finally:
        connection.close()


def test_intents_are_parsed_by_rules() -> None:
    values = {
        "candidates": [
            {"qid": "Q11641", "label": "Grace Hopper", "description": ""},
            {"qid": "Q23548", "label": "NASA", "description": ""},
            {"qid": "Q5", "label": "Hopper", "description": ""},
        ],
        "prerank": {"order": ["Q23548", "Q11641", "Q5"]},
    }
    why = parse("Why Grace Hopper and not NASA?", values)
    assert (why.kind, why.candidates) == ("why", ["Q11641", "Q23548"]), "the longer label wins over 'Hopper'"
    assert parse("compare #1 q5", values).candidates == ["Q23548", "Q5"]
    assert parse("what went into the judge?", values).node == "judge"
    assert parse("what if the descriptors were 'rocket, launch'?", values).words == ["rocket", "launch"]
    assert parse('what if the descriptors were "rocket" and "launch pad"', values).words == [
        "rocket",
        "launch pad",
    ]
    drop = parse("drop candidate Q5", values)
    assert (drop.kind, drop.candidates) == ("drop", ["Q5"])
    assert parse("what if we use the clean image?", values).kind == "clean_image"
    assert parse("use image /tmp/x.png", values).path == "/tmp/x.png"
    assert parse("evidence for NASA", values).candidates == ["Q23548"]
    assert parse("how sure was it?", values).kind == "ask"
    assert parse("explain", values).kind == parse("distributions?", values).kind == "fusion"
    assert parse("quit", values).kind == "quit"


def test_scripted_session_answers_from_the_trace_and_forks_what_ifs(
    decisions: dict, monkeypatch, capsys
) -> None:
    db, thread = decisions["db"], decisions["clean"]["thread"]
    store = TraceStore(db)
    original = store.get(thread).values
    store.close()
    before_rows = rows(db, thread)
    before_all = thread_rows(db, thread)
    assert {"checkpoints", "writes"} <= set(before_all) and before_all["writes"], before_all.keys()
    labels = {c["qid"]: c["label"] for c in original["candidates"]}
    decision = original["decision"]
    runner_up = next(q for q in original["prerank"]["order"] if q != decision)
    dropped = decision
    script = "\n".join(
        [
            "summary",
            f"why {labels[decision]} and not {labels[runner_up]}?",
            f"compare {decision} #2",
            f"evidence for {labels[runner_up]}",
            "what went into the prerank node?",
            "evidence for nobody",
            "explain",
            "what if the descriptors were 'rocket, launch'?",
            f"drop candidate {dropped}",
            "use the clean image",
            "quit",
            "summary",  # after quit: never answered
        ]
    )
    out = session(decisions, thread, script, monkeypatch, capsys)
    index = [c["qid"] for c in original["candidates"]]
    for qid in (decision, runner_up):
        score = original["prerank"]["scores"][index.index(qid)]
        assert f"{labels[qid]} ({qid}) score {score}" in out, "the facts quote the pre-ranker's stored scores"
    assert "the LLM gave no answer (LLMError" in out, "a failed LLM is said, and the facts still printed"
    assert f"decision {labels[decision]} ({decision}) decided by prerank" in out
    assert "[wikidata/offline]" in out, "evidence comes from the stored retrieval records"
    assert "(prerank) in candidates:" in out and "(prerank) out source tagger" in out
    assert "error: name a candidate" in out
    assert "(judge) pre-ranker distribution over the shortlist:" in out
    assert "no judge distribution (no judge answer); no fusion" in out, "explain says the judge failed"
    assert out.count("> summary") == 1, "nothing after quit is answered"
    assert "error: this decision already used the clean image" in out

    assert rows(db, thread) == before_rows, "forks never write to the original thread"
    assert thread_rows(db, thread) == before_all, "nor to its metadata or writes, in any table"
    store = TraceStore(db)
    assert store.get(thread).values == original
    first, second = f"{thread}~whatif-1", f"{thread}~whatif-2"
    assert {first, second} <= set(store.thread_ids())
    described = store.get(first).values
    assert described["descriptors"]["words"] == ["rocket", "launch"]
    assert described["descriptors"]["source"] == "what-if"
    assert first_divergence(original, described) == "describe"
    assert [s["node"] for s in described["steps"]] == [
        "describe", "what-if", "retrieve", "store", "enrich", "prerank", "judge", "answer"
    ]  # fmt: skip
    # The fork is a branch: the original checkpoints are its ancestors, and its what-if
    # checkpoint's parent is the original's checkpoint written after describe.
    original_ids = {row[0] for row in before_rows}
    fork_rows = rows(db, first)
    assert original_ids < {row[0] for row in fork_rows}
    history = list(store.graph.get_state_history({"configurable": {"thread_id": first}}))
    update = next(s for s in history if s.metadata.get("source") == "update")
    assert update.parent_config["configurable"]["checkpoint_id"] in original_ids
    assert f"forked {thread} at checkpoint {update.parent_config['configurable']['checkpoint_id']}" in out
    without = store.get(second).values
    assert dropped not in [c["qid"] for c in without["candidates"]] and without["decision"] != dropped
    assert [s["node"] for s in without["steps"]][-4:] == ["what-if", "prerank", "judge", "answer"]
    assert f"what-if: without candidate {labels[dropped]} ({dropped})" in out
    assert f"[was {labels[decision]} ({decision})" in out and "first divergence: prerank" in out
    store.close()


def test_the_clean_image_what_if_undoes_the_attack(decisions: dict, monkeypatch, capsys) -> None:
    noisy, clean = decisions["noisy"]["thread"], decisions["clean"]["thread"]
    assert noisy == thread_id("chat", decisions["clean"]["id"], "noise")
    out = session(decisions, noisy, "use the clean image\n", monkeypatch, capsys)
    store = TraceStore(decisions["db"])
    fork = store.get(f"{noisy}~whatif-1").values
    before = store.get(clean).values
    assert fork["image"]["path"] == before["image"]["path"] and fork["image"]["condition"] == "clean"
    assert fork["descriptors"]["words"] == before["descriptors"]["words"], "same pixels, same describer"
    assert fork["decision"] == before["decision"]
    assert first_divergence(store.get(noisy).values, fork) == "describe"
    store.close()
    assert "re-ran: describe, retrieve, store, enrich, prerank, judge, answer" in out


def test_unknown_thread_and_bad_what_if_are_clear_errors(decisions: dict, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert chat.main(["--thread", "nope|x|clean", "--checkpoint-db", str(decisions["db"])]) == 2
    assert "no thread 'nope|x|clean'" in capsys.readouterr().err
    missing = decisions["root"] / "none.sqlite"
    assert chat.main(["--thread", "a|b|c", "--checkpoint-db", str(missing)]) == 2
    assert "no checkpoint database" in capsys.readouterr().err
    out = session(
        decisions,
        decisions["clean"]["thread"],
        "use image /no/such/file.png\nwhat if the descriptors were ''\n",
        monkeypatch,
        capsys,
    )
    assert "error: no image file /no/such/file.png" in out
    assert "error: give the descriptor words" in out


@pytest.mark.slow
def test_embedded_llm_explains_and_judges_a_what_if(decisions: dict, monkeypatch, capsys) -> None:
    """The real embedded Qwen2.5-Coder-1.5B answers a why-question from the trace facts and judges
    a what-if fork (dropping the pre-ranker's runner-up re-runs prerank and the judge)."""
    for name in ("MEL_LLM_BASE_URL", "MEL_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    store = TraceStore(decisions["db"])
    values = store.get(decisions["clean"]["thread"]).values
    store.close()
    labels = {c["qid"]: c["label"] for c in values["candidates"]}
    decision = values["decision"]
    other = values["prerank"]["order"][1]
    script = f"why {labels[decision]} and not {labels[other]}?\ndrop candidate {other}\n"
    store = TraceStore(decisions["db"])
    known = set(store.thread_ids())
    store.close()
    out = session(decisions, decisions["clean"]["thread"], script, monkeypatch, capsys, llm=[])
    print(out)
    assert "answer (embedded:" in out, out
    answer = out.split("answer (embedded:", 1)[1].split("based on these trace facts", 1)[0]
    assert len(answer.split()) >= 8, "a real sentence, not an empty reply"
    assert f"{labels[other]} ({other}) score" in out
    store = TraceStore(decisions["db"])
    (fork_id,) = set(store.thread_ids()) - known
    fork = store.get(fork_id).values
    store.close()
    judged = fork["judge"]
    assert judged["model"].startswith("embedded:") and judged["raw"], "the embedded judge answered the fork"
    assert other not in judged["shortlist"]


def test_settings_flags_keep_the_environment(monkeypatch) -> None:
    """agent.chat and agent.link share their settings flags; unset ones keep ``MEL_*`` values."""
    import argparse

    from agent.link import add_settings_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    monkeypatch.setenv("MEL_AGENT_TASK", "i2t")
    settings = settings_from_args(parser.parse_args(["--checkpoint-db", "/tmp/x.sqlite"]))
    assert settings.task == "i2t" and settings.checkpoint_db == Path("/tmp/x.sqlite")
    assert settings_from_args(parser.parse_args(["--task", "it2t"])).task == "it2t"


def test_explain_says_which_side_the_fused_decision_followed() -> None:
    from agent.facts import distribution_facts

    candidates = [{"qid": q, "label": q.lower(), "description": ""} for q in ("QA", "QB")]
    values = {
        "candidates": candidates,
        "judge": {
            "shortlist": ["QA", "QB"],
            "method": "logits",
            "valid_mass": 0.9,
            "weight": 0.5,
            "judge_decision": "QB",
            "decision": "QA",
            "distributions": {
                "prerank": {"QA": 0.99, "QB": 0.01},
                "judge": {"QA": 0.3, "QB": 0.7},
                "fused": {"QA": 0.92, "QB": 0.08},
            },
        },
    }
    lines = [f.text for f in distribution_facts(values)]
    assert "fused p ∝ pre^0.50 · judge^0.50: qa 0.920, qb 0.080" in lines
    assert "so the fused decision stayed with the pre-ranker" in lines[-1]
    values["judge"]["decision"] = "QB"
    assert (
        "the judge moved the decision from the pre-ranker's qa (QA) to qb (QB)"
        in distribution_facts(values)[-1].text
    )


def test_why_numbers_the_facts_and_marks_the_ones_the_answer_cites(
    decisions: dict, monkeypatch, capsys
) -> None:
    """The LLM (a real HTTP server on 127.0.0.1) gets the facts numbered 1..n and answers
    "Because of [2]."; the reply prints the answer, then every fact with only fact 2 marked ``*``."""
    from openai_faults_server import MODEL, fault_server

    store = TraceStore(decisions["db"])
    values = store.get(decisions["clean"]["thread"]).values
    store.close()
    other = next(q for q in values["prerank"]["order"] if q != values["decision"])
    with fault_server(answer="Because of [2].") as server:
        llm = ["--llm-base-url", server.url, "--llm-model", MODEL]
        out = session(
            decisions,
            decisions["clean"]["thread"],
            f"why {values['decision']} and not {other}?\n",
            monkeypatch,
            capsys,
            llm=llm,
        )
        (body,) = server.bodies
    sent = body["messages"][-1]["content"]
    facts = re.findall(
        r"^\[(\d+)\] ", sent.split("Trace facts:\n", 1)[1].split("\n\nQuestion:")[0], flags=re.M
    )
    assert facts == [str(i) for i in range(1, len(facts) + 1)] and len(facts) >= 3, sent
    reply = out.split(f"why {values['decision']} and not {other}?", 1)[1]
    assert "Because of [2]." in reply and "based on these trace facts (* = cited):" in reply
    marked = re.findall(r"^\* \[(\d+)\] ", reply, flags=re.M)
    unmarked = re.findall(r"^  \[(\d+)\] ", reply, flags=re.M)
    assert marked == ["2"] and sorted(int(n) for n in marked + unmarked) == list(range(1, len(facts) + 1))


def test_help_lists_every_command_it_understands() -> None:
    """Each example in ``help`` parses to the intent it documents (none falls through to a free
    question), and every intent the parser has is in ``help``."""
    from agent.intents import HELP

    examples = {
        "summary": "summary",
        "node": "node judge",
        "compare": "compare #1 #2",
        "fusion": "explain",
        "evidence": "evidence #1",
        "lookups": "what did you look up?",
        "why": "why #1 and not #2?",
        "descriptors": "what if the descriptors were 'cat, sofa'?",
        "drop": "drop candidate #2",
        "clean_image": "use the clean image",
        "image": "use image /tmp/x.png",
        "quit": "quit",
        "help": "help",
    }
    values = {
        "candidates": [{"qid": "Q1", "label": "one"}, {"qid": "Q2", "label": "two"}],
        "prerank": {"order": ["Q1", "Q2"]},
        "decision": "Q1",
    }
    for kind, line in examples.items():
        assert parse(line, values).kind == kind, line
        if kind != "help":
            assert line.split()[0].strip("?") in HELP, line


def test_a_what_if_reads_its_kb_from_the_runs_config_json(
    decisions: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Without ``--dataset``: a checkpoint file inside an ``eval.run`` folder takes the KB named in
    its ``config.json``; a config naming another dataset is the one used (an error here), and
    without a config the what-if says to give ``--dataset``."""
    import json
    import shutil

    monkeypatch.setenv("MEL_CACHE_DIR", str(decisions["root"] / "cache"))
    monkeypatch.setenv("MEL_LLM_RETRIES", "0")
    thread = decisions["clean"]["thread"]
    answers = {}
    for name, config in (
        ("demo", {"dataset": "demo", "task": "i2t"}),
        ("other", {"dataset": "nope"}),
        ("none", None),
    ):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(decisions["db"], folder / "checkpoints.sqlite")
        if config is not None:
            (folder / "config.json").write_text(json.dumps(config))
        monkeypatch.setattr("sys.stdin", io.StringIO("drop candidate #2\n"))
        argv = ["--thread", thread, "--checkpoint-db", str(folder / "checkpoints.sqlite")]
        argv += ["--llm-base-url", f"http://127.0.0.1:{decisions['port']}/v1", "--llm-model", "none"]
        assert chat.main(argv) == 0
        answers[name] = capsys.readouterr().out.split("drop candidate #2", 1)[-1]
    assert "re-ran: prerank" in answers["demo"] and "error" not in answers["demo"], answers["demo"]
    store = TraceStore(tmp_path / "demo" / "checkpoints.sqlite")
    assert store.get(f"{thread}~whatif-1").values["decision"]
    store.close()
    assert "unknown dataset 'nope'" in answers["other"], answers["other"]
    assert "give --dataset NAME" in answers["none"], answers["none"]
