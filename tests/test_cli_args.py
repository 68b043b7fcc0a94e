"""One set of flag names in every command (``kb.cli_args``).

Each command's own ``main`` is run with its parser's ``parse_args`` intercepted, so what is
checked is the namespace the command would act on: ``--candidates`` is λ and parses ``all``
and ``10`` the same way everywhere, ``--qids`` is an explicit QID list and rejects a non-QID,
``--split`` defaults to ``test``, ``--presets-file`` and ``--checkpoint-db`` have one name,
the old names are refused, and ``agent.trace`` takes its global option before or after the
subcommand (on a real, empty LangGraph SQLite checkpoint file).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from kb.cli_args import parse_candidates, parse_qids, parse_seeds


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


def parsed(module: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The namespace ``python -m <module> <argv>`` parses, without running the command."""
    original = argparse.ArgumentParser.parse_args

    def intercept(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", intercept)
    main = importlib.import_module(module).main
    with pytest.raises(_Parsed) as caught:
        main(argv)
    return caught.value.namespace


def refused(module: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The usage error ``python -m <module> <argv>`` exits with (status 2)."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err


# every command that builds candidate sets, with the arguments it needs to parse at all
CANDIDATE_COMMANDS = [
    pytest.param("eval.run", ["--dataset", "demo"], id="eval.run"),
    pytest.param("attacks.generate", ["--dataset", "demo"], id="attacks.generate"),
    pytest.param("agent.link", ["--dataset", "demo"], id="agent.link"),
    pytest.param("eval.bench", ["agent"], id="eval.bench agent"),
    pytest.param("attacks.bench", [], id="attacks.bench"),
    pytest.param("tools.train_mcr", ["--dataset", "demo", "--out", "x.pt"], id="tools.train_mcr"),
]
# every command that selects the mentions of a split (train_mcr has its own default: train)
SPLIT_COMMANDS = [p for p in CANDIDATE_COMMANDS if p.id != "tools.train_mcr"]


def test_parse_candidates() -> None:
    assert parse_candidates("10") == 10 and parse_candidates(" 100 ") == 100
    assert (
        parse_candidates("all") is None
        and parse_candidates("ALL") is None
        and parse_candidates("full") is None
    )
    for bad in ("0", "-3", "ten", "Q146,Q144", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_candidates(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="--qids"):
        parse_candidates("Q146,Q144")


def test_parse_seeds_and_qids() -> None:
    assert parse_seeds("0,1,2") == (0, 1, 2) and parse_seeds("3") == (3,) and parse_seeds("1, 1,2,") == (1, 2)
    for bad in ("", "a", "0,x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_seeds(bad)
    assert parse_qids("Q146, Q144,Q146") == ("Q146", "Q144")
    for bad in ("foo", "Q0", "Q01", "146", "Q146,cat", ","):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_qids(bad)


@pytest.mark.parametrize(("module", "base"), CANDIDATE_COMMANDS)
def test_candidates_is_lambda_everywhere(module: str, base: list[str], monkeypatch) -> None:
    assert parsed(module, base, monkeypatch).candidates == 10
    assert parsed(module, [*base, "--candidates", "10"], monkeypatch).candidates == 10
    assert parsed(module, [*base, "--candidates", "100"], monkeypatch).candidates == 100
    assert parsed(module, [*base, "--candidates", "all"], monkeypatch).candidates is None


@pytest.mark.parametrize(("module", "base"), CANDIDATE_COMMANDS)
def test_a_bad_candidates_value_is_a_usage_error(module: str, base: list[str], capsys) -> None:
    err = refused(module, [*base, "--candidates", "lots"], capsys)
    assert "--candidates" in err and "'lots'" in err


@pytest.mark.parametrize(("module", "base"), SPLIT_COMMANDS)
def test_split_defaults_to_test_and_takes_all(module: str, base: list[str], monkeypatch) -> None:
    assert parsed(module, base, monkeypatch).split == "test"
    assert parsed(module, [*base, "--split", "all"], monkeypatch).split == "all"
    assert parsed(module, [*base, "--limit", "3"], monkeypatch).limit == 3


def test_training_reads_the_train_split_by_default(monkeypatch) -> None:
    args = parsed("tools.train_mcr", ["--dataset", "demo", "--out", "x.pt"], monkeypatch)
    assert args.split == "train" and args.seed == 0 and args.data_dir is None


def test_seeds(monkeypatch) -> None:
    # --seeds is a list where a command repeats over seeds, --seed one seed where it makes one pass
    for module, base in (("agent.link", ["--dataset", "demo"]), ("attacks.bench", [])):
        assert parsed(module, base, monkeypatch).seed == 0
        assert parsed(module, [*base, "--seed", "4"], monkeypatch).seed == 4
    assert parsed("eval.run", ["--dataset", "demo", "--seeds", "0,1,2"], monkeypatch).seeds == (0, 1, 2)
    assert parsed("eval.run", ["--dataset", "demo"], monkeypatch).seeds == (0,)
    # argparse reads --seed as the unambiguous prefix of --seeds
    assert parsed("eval.run", ["--dataset", "demo", "--seed", "3"], monkeypatch).seeds == (3,)


def test_qids_is_the_explicit_list(monkeypatch, capsys) -> None:
    args = parsed("agent.link", ["--qids", "Q146,Q144,Q8486"], monkeypatch)
    assert args.qids == ("Q146", "Q144", "Q8486") and args.candidates == 10
    monkeypatch.undo()
    err = refused("agent.link", ["--qids", "foo"], capsys)
    assert "argument --qids" in err and "'foo' is not a Wikidata QID" in err
    err = refused("agent.link", ["--candidates", "Q146,Q144"], capsys)
    assert "argument --candidates" in err and "--qids" in err
    err = refused("agent.link", ["--dataset", "demo", "--qids", "Q146,Q144"], capsys)
    assert "--qids is the candidate list of an ad hoc --image decision" in err


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("agent.link", ["--dataset", "demo", "--candidates-size", "5"]),
        ("agent.link", ["--dataset", "demo", "--db", "x.sqlite"]),
        ("agent.chat", ["--thread", "a|b|c", "--db", "x.sqlite"]),
        ("agent.trace", ["--db", "x.sqlite", "list"]),
        ("agent.trace", ["list", "--db", "x.sqlite"]),
        pytest.param("eval.run", ["--dataset", "demo", "--attack-config", "p.json"], id="eval.run"),
        pytest.param("attacks.generate", ["--dataset", "demo", "--config", "p.json"], id="attacks.generate"),
    ],
)
def test_old_names_are_gone(module: str, argv: list[str], capsys) -> None:
    err = refused(module, argv, capsys)
    assert "unrecognized arguments" in err or "invalid choice: 'x.sqlite'" in err


@pytest.mark.parametrize(
    ("module", "base"),
    [
        pytest.param("eval.run", ["--dataset", "demo"], id="eval.run"),
        pytest.param("attacks.generate", ["--dataset", "demo"], id="attacks.generate"),
        pytest.param("attacks.bench", [], id="attacks.bench"),
    ],
)
def test_presets_file(module: str, base: list[str], monkeypatch) -> None:
    assert parsed(module, base, monkeypatch).presets_file is None
    assert str(parsed(module, [*base, "--presets-file", "p.json"], monkeypatch).presets_file) == "p.json"


@pytest.mark.parametrize(
    ("module", "base"),
    [("agent.link", ["--dataset", "demo"]), ("agent.chat", ["--thread", "a|b|c"])],
)
def test_checkpoint_db(module: str, base: list[str], monkeypatch) -> None:
    assert parsed(module, base, monkeypatch).checkpoint_db is None
    assert parsed(module, [*base, "--checkpoint-db", "x.sqlite"], monkeypatch).checkpoint_db == Path(
        "x.sqlite"
    )


@pytest.fixture
def checkpoint_db(tmp_path: Path) -> Path:
    """A real LangGraph SQLite checkpoint file, with its tables and no thread yet."""
    from agent.graph import open_checkpointer

    path = tmp_path / "checkpoints.sqlite"
    checkpointer = open_checkpointer(path)
    checkpointer.setup()
    checkpointer.conn.close()
    return path


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_trace_takes_the_checkpoint_db_before_or_after_the_subcommand(
    before: bool, checkpoint_db: Path, monkeypatch, capsys
) -> None:
    from agent import trace

    option = ["--checkpoint-db", str(checkpoint_db)]
    for command in (["list", "--json"], ["show", "r|m|clean"], ["diff", "r|m|clean", "r|m|pgd-s"]):
        argv = [*option, *command] if before else [*command, *option]
        args = trace.build_parser().parse_args(argv)
        assert args.checkpoint_db == checkpoint_db and args.command == command[0]
    argv = [*option, "list", "--json"] if before else ["list", "--json", *option]
    assert trace.main(argv) == 0
    assert capsys.readouterr().out.strip() == "[]"
    argv = [*option, "show", "r|m|clean"] if before else ["show", "r|m|clean", *option]
    assert trace.main(argv) == 2
    assert f"no thread 'r|m|clean' in {checkpoint_db}" in capsys.readouterr().err


def test_trace_default_checkpoint_db_is_the_agents(tmp_path: Path, monkeypatch, capsys) -> None:
    from agent import trace

    assert trace.build_parser().parse_args(["list"]).checkpoint_db is None
    missing = tmp_path / "nowhere.sqlite"
    monkeypatch.setenv("MEL_AGENT_DB", str(missing))
    assert trace.main(["list"]) == 2
    assert f"no checkpoint database at {missing}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("module", "argv", "flags"),
    [
        (
            "agent.link",
            ["--help"],
            ["--dataset", "--split", "--limit", "--candidates", "--qids", "--seed", "--checkpoint-db"],
        ),
        (
            "eval.run",
            ["--help"],
            ["--dataset", "--split", "--with-images", "--candidates", "--seeds", "--presets-file"],
        ),
        (
            "attacks.generate",
            ["--help"],
            ["--dataset", "--split", "--candidates", "--seed", "--presets-file"],
        ),
        ("agent.chat", ["--help"], ["--thread", "--dataset", "--data-dir", "--checkpoint-db"]),
        ("agent.trace", ["--help"], ["--checkpoint-db"]),
        ("agent.trace", ["list", "--help"], ["--checkpoint-db", "--run", "--wrong"]),
        ("eval.bench", ["agent", "--help"], ["--dataset", "--split", "--limit", "--candidates", "--seed"]),
        ("attacks.bench", ["--help"], ["--dataset", "--split", "--candidates", "--presets-file", "--seed"]),
        ("tools.train_mcr", ["--help"], ["--dataset", "--split", "--limit", "--candidates", "--seed"]),
    ],
)
def test_help_shows_the_shared_names(module: str, argv: list[str], flags: list[str], capsys) -> None:
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 0
    text = capsys.readouterr().out
    for flag in flags:
        assert flag in text, (module, flag)
    for old in ("--candidates-size", "--db ", "--attack-config", "--config "):
        assert old not in text, (module, old)
