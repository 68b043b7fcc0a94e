"""The one settings layer: the README's Settings table is exactly the variables the settings
classes and modules read (names and defaults), defaults < environment < arguments and flags,
and a bad value fails naming its variable."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from agent.settings import AgentSettings
from tools.llm import LLMSettings
from tools.wiki import WikiSettings

ROOT = Path(__file__).resolve().parent.parent
HEADER = "| variable | default | meaning | read by |"
CLASSES: dict[str, list[tuple[Any, str | None]]] = {
    "LLMSettings": [(LLMSettings, "MEL_LLM"), (LLMSettings, "MEL_VLM")],
    "WikiSettings": [(WikiSettings, None)],
    "AgentSettings": [(AgentSettings, None)],
}
"""A table row's "read by" -> the class (and prefix) whose ``variables()`` it lists."""
PACKAGES = ("agent", "tools", "kb", "eval", "attacks")
PREFIXES = {
    (prefix or cls.model_config["env_prefix"]).rstrip("_")
    for uses in CLASSES.values()
    for cls, prefix in uses
}
"""The classes' prefixes (``MEL_LLM_`` in a class, ``MEL_VLM`` given to ``from_env``): not variables."""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No ``MEL_*`` variable of the caller's shell; the cache in ``tmp_path``."""
    for key in list(os.environ):
        if key.startswith("MEL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MEL_CACHE_DIR", str(tmp_path / "cache"))
    return monkeypatch


def readme_rows() -> list[dict[str, Any]]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines.count(HEADER) == 1, f"the README needs exactly one table headed {HEADER!r}"
    rows = []
    for line in lines[lines.index(HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 4, f"a Settings row needs 4 cells: {line}"
        names = re.findall(r"`(MEL_[A-Z0-9_<>]+)`", cells[0])
        assert names, f"no variable named in {line}"
        rows.append({"names": names, "default": cells[1], "owners": re.findall(r"`([^`]+)`", cells[3])})
    return rows


def class_variables() -> dict[str, tuple[str, Any, str]]:
    """Variable -> (owner in the table, class, field) for every variable a settings class reads."""
    found = {}
    for owner, uses in CLASSES.items():
        for cls, prefix in uses:
            for field, variable in cls.variables(prefix).items():
                found[variable] = (owner, cls, field)
    return found


def table_default(cell: str, annotation: Any, cache_root: Path) -> Any:
    """A default cell as a value of the field's type: ``unset`` (None) or one literal in backticks."""
    if cell == "unset" or cell.startswith("unset "):
        return None
    literal = re.fullmatch(r"`([^`]*)`", cell)
    assert literal, f"a default is `literal` or unset, not {cell!r}"
    return TypeAdapter(annotation).validate_python(literal[1].replace("$MEL_CACHE_DIR", str(cache_root)))


def test_readme_table_is_every_class_variable_with_its_default(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    in_classes = class_variables()
    in_table = {
        name: row for row in readme_rows() if set(row["owners"]) & set(CLASSES) for name in row["names"]
    }
    assert set(in_table) == set(in_classes), (
        f"in the classes, not the README table: {sorted(set(in_classes) - set(in_table))}; "
        f"in the table, read by no class: {sorted(set(in_table) - set(in_classes))}"
    )
    for variable, (owner, cls, field) in in_classes.items():
        row = in_table[variable]
        assert row["owners"] == [owner], f"{variable} is read by {owner}, the table says {row['owners']}"
        info = cls.model_fields[field]
        expected = info.get_default(call_default_factory=True)
        assert table_default(row["default"], info.annotation, tmp_path / "cache") == expected, (
            f"{variable}: the README says {row['default']}, {cls.__name__}.{field} defaults to {expected!r}"
        )


def test_every_variable_read_in_the_code_is_in_the_table() -> None:
    rows = readme_rows()
    in_table = {name for row in rows for name in row["names"]}
    read: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            names = set(re.findall(r"""["'](MEL_[A-Z0-9_]+)["']""", text))
            names |= {
                f"MEL_<NAME>_{tail}"
                for tail in re.findall(r"""f["']MEL_\{[^}"']*\}_([A-Z0-9_]+)["']""", text)
            }
            for name in {name for name in names if name.rstrip("_") not in PREFIXES}:
                read.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    missing = {name: sorted(paths) for name, paths in read.items() if name not in in_table}
    assert not missing, f"variables read in the code but not in the README's Settings table: {missing}"
    for row in rows:
        modules = [owner for owner in row["owners"] if owner not in CLASSES]
        for module in modules:
            text = (ROOT / module).read_text(encoding="utf-8")
            for name in row["names"]:
                pattern = (
                    r"""f["']MEL_\{[^}]+\}_""" + re.escape(name.split(">_", 1)[1])
                    if "<" in name
                    else r"""["']""" + re.escape(name) + r"""["']"""
                )
                assert re.search(pattern, text), f"the README says {module} reads {name}; it does not"


def test_defaults_then_environment_then_arguments(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert LLMSettings.from_env() == LLMSettings() and WikiSettings.from_env() == WikiSettings()
    agent = AgentSettings.from_env()
    assert agent == AgentSettings() and agent.vlm is None
    assert agent.checkpoint_db == tmp_path / "cache" / "agent" / "checkpoints.sqlite"

    env.setenv("MEL_LLM_TIMEOUT_S", " 7.5 ")
    env.setenv("MEL_LLM_RETRIES", "5")
    env.setenv("MEL_LLM_STREAM", "on")
    env.setenv("MEL_LLM_MODEL", "")  # blank: unset
    env.setenv("MEL_VLM_BASE_URL", "http://127.0.0.1:9/v1")
    env.setenv("MEL_WIKI_MODE", "online")
    env.setenv("MEL_WIKIPEDIA_API", "http://mirror.local/w/api.php")
    env.setenv("MEL_WIKI_CACHE_DIR", str(tmp_path / "wiki"))
    env.setenv("MEL_AGENT_TASK", "i2t")
    env.setenv("MEL_AGENT_SKIP_JUDGE_MARGIN", "0.25")
    env.setenv("MEL_AGENT_DB", str(tmp_path / "db.sqlite"))
    agent = AgentSettings.from_env()
    assert (agent.llm.timeout_s, agent.llm.retries, agent.llm.stream, agent.llm.model) == (7.5, 5, True, None)
    assert (
        agent.vlm is not None
        and agent.vlm.base_url == "http://127.0.0.1:9/v1"
        and agent.vlm.timeout_s == 60.0
    )
    assert agent.wiki.mode == "online" and agent.wiki.wikipedia_api == "http://mirror.local/w/api.php"
    assert agent.wiki.cache_dir == tmp_path / "wiki"
    assert (agent.task, agent.skip_judge_margin, agent.checkpoint_db) == ("i2t", 0.25, tmp_path / "db.sqlite")
    assert LLMSettings() == LLMSettings.model_construct(), "arguments alone read no environment"

    llm = LLMSettings.from_env(timeout_s=9, retries=None)  # None: keep the environment's
    assert (llm.timeout_s, llm.retries) == (9.0, 5)
    wiki = WikiSettings.from_env(mode="offline", budget_s=None)
    assert (wiki.mode, wiki.budget_s, wiki.wikipedia_api) == (
        "offline",
        30.0,
        "http://mirror.local/w/api.php",
    )
    agent = AgentSettings.from_env(task="it2t", skip_judge_margin=None, vlm=None)  # applied as given
    assert (agent.task, agent.skip_judge_margin, agent.vlm, agent.llm.retries) == ("it2t", None, None, 5)


def test_command_line_flags_win_over_the_environment(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import argparse

    from agent.link import add_settings_arguments, settings_from_args

    env.setenv("MEL_AGENT_TASK", "i2t")
    env.setenv("MEL_LLM_TEMPERATURE", "0.1")
    env.setenv("MEL_LLM_MODEL", "from-env")
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    settings = settings_from_args(
        parser.parse_args(["--task", "it2t", "--temperature", "0.75", "--wiki", "online"])
    )
    assert (settings.task, settings.llm.temperature, settings.llm.model, settings.wiki.mode) == (
        "it2t",
        0.75,
        "from-env",
        "online",
    )
    assert settings_from_args(parser.parse_args([])).task == "i2t"


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        ("MEL_WIKI_TIMEOUT_S", "abc", "MEL_WIKI_TIMEOUT_S='abc' is not a number"),
        ("MEL_LLM_RETRIES", "many", "MEL_LLM_RETRIES='many' is not a whole number"),
        ("MEL_VLM_STREAM", "maybe", "MEL_VLM_STREAM='maybe' is not a boolean"),
        ("MEL_LLM_BUDGET_S", "0", "MEL_LLM_BUDGET_S='0' is not valid: input should be greater than 0"),
        (
            "MEL_WIKI_MODE",
            "sometimes",
            "MEL_WIKI_MODE='sometimes' is not valid: input should be 'online' or 'offline'",
        ),
        ("MEL_AGENT_TASK", "x2t", "MEL_AGENT_TASK='x2t' is not valid: input should be 'i2t' or 'it2t'"),
        ("MEL_AGENT_SKIP_JUDGE_MARGIN", "wide", "MEL_AGENT_SKIP_JUDGE_MARGIN='wide' is not a number"),
    ],
)
def test_a_bad_value_names_the_variable(
    env: pytest.MonkeyPatch, variable: str, raw: str, expected: str
) -> None:
    env.setenv(variable, raw)
    with pytest.raises(ValueError) as caught:
        AgentSettings.from_env()
    assert expected in str(caught.value)


def test_errors_copies_and_identity(env: pytest.MonkeyPatch) -> None:
    env.setenv("MEL_AGENT_TASK", "x2t")
    assert AgentSettings.from_env(task="i2t").task == "i2t", "an explicit argument wins over a bad variable"
    with pytest.raises(TypeError, match="unknown"):
        WikiSettings.from_env(mdoe="online")
    with pytest.raises(ValueError, match="timeout_s"):
        LLMSettings(timeout_s=0)

    settings = WikiSettings()
    with pytest.raises(ValueError, match="frozen"):
        settings.mode = "online"  # type: ignore[misc]
    assert settings.replace(mode="online").mode == "online" and settings.mode == "offline"
    with pytest.raises(ValueError, match="mode"):
        settings.replace(mode="sometimes")
    with pytest.raises(TypeError, match="unknown"):
        settings.replace(mdoe="online")

    embedded = LLMSettings(api_key="sk-secret").identity()
    assert embedded == {
        "backend": "embedded",
        "base_url": None,
        "model": None,
        "model_file": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "temperature": 0.0,
    }
    remote = LLMSettings(base_url="http://gpu:8000/v1/", model="qwen", api_key="sk-secret", temperature=0.75)
    assert remote.identity() == {
        "backend": "openai",
        "base_url": "http://gpu:8000/v1",
        "model": "qwen",
        "model_file": None,
        "temperature": 0.75,
    }
    assert remote.identity() == remote.replace(timeout_s=5, retries=0).identity(), "patience is not identity"
    agent = AgentSettings(llm=remote, wiki=WikiSettings(mode="online"))
    assert agent.identity() == {
        "scorer": "tagger",
        "task": "it2t",
        "judge_top_k": 5,
        "judge_description_words": 12,
        "skip_judge_margin": None,
        "judge_weight": 0.5,
        "judge_structured_choice": False,
        "spotlight": True,
        "descriptors": 5,
        "ocr": True,
        "evidence_chars": 600,
        "llm": remote.identity(),
        "vlm": None,
        "wiki": {
            "mode": "online",
            "wikipedia_api": "https://en.wikipedia.org/w/api.php",
            "wikidata_api": "https://www.wikidata.org/w/api.php",
        },
    }
    assert WikiSettings(wikipedia_api="http://unused/w/api.php").identity() == {"mode": "offline"}
    assert agent.identity() == agent.replace(checkpoint_db=Path("elsewhere.sqlite")).identity()
    assert "sk-secret" not in json.dumps(agent.identity()) + json.dumps(agent.to_json())


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        *((v, True) for v in ("true", "1", "yes", "on", "ON")),
        *((v, False) for v in ("false", "0", "no", "off")),
    ],
)
def test_every_boolean_form_the_error_names_parses(env: pytest.MonkeyPatch, raw: str, parsed: bool) -> None:
    """The forms the error message promises (true/false, 1/0, yes/no, on/off), both ways: the
    default of ``stream`` is False, so each false form is set over a True default first."""
    env.setenv("MEL_LLM_STREAM", raw)
    assert LLMSettings.from_env().stream is parsed
    assert LLMSettings.from_env(stream=not parsed).stream is not parsed  # arguments still win
