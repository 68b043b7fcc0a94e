"""eval.report: one self-contained HTML page over a scorer run and an agent run, rendered in a
real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium).

The runs are real ``python -m eval.run`` invocations on the demo dataset with a short PGD
preset (scorer, describer, wiki replica, Chroma, SQLite and the attack are real; the agent's
LLM is a closed port on 127.0.0.1, so it falls back to the pre-ranker at once). Without
Chromium the browser test is skipped locally and fails under CI (``CI`` set), where
``.ci/run`` installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from support import closed_port, private_cache

from eval import report
from eval.run import main as eval_main

PRESET = {
    "presets": {
        "pgd-report": {"method": "pgd", "steps": 5, "eps": 32 / 255, "alpha": 8 / 255, "folder": "PGD-report"}
    }
}
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    private_cache(root / "cache")
    (root / "preset.json").write_text(json.dumps(PRESET))
    port = closed_port()
    common = ["--dataset", "demo", "--task", "i2t", "--limit", "4", "--attack", "pgd-report", "--quiet"]
    common += ["--presets-file", str(root / "preset.json"), "--adv-dir", str(root / "adv")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEL_CACHE_DIR", str(root / "cache"))
        patch.setenv("MEL_LLM_BASE_URL", f"http://127.0.0.1:{port}/v1")
        patch.setenv("MEL_LLM_MODEL", "none")
        patch.setenv("MEL_LLM_RETRIES", "0")
        assert eval_main([*common, "--out", str(root / "scorer")]) == 0
        assert eval_main([*common, "--pipeline", "agent", "--out", str(root / "agent")]) == 0
        page = root / "site" / "report.html"
        assert report.main([str(root / "scorer"), str(root / "agent"), "--out", str(page), "--quiet"]) == 0
    return {"root": root, "scorer": root / "scorer", "agent": root / "agent", "page": page}


def test_report_is_one_self_contained_page(runs: dict[str, Path]) -> None:
    text = runs["page"].read_text(encoding="utf-8")
    sources = re.findall(r"src='([^']*)'", text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in text and "<link" not in text
    assert all("://" not in href for href in re.findall(r"href='([^']*)'", text)), "links are relative"
    assert "<td>tagger</td>" in text and "<td>agent (tagger)</td>" in text, "a row per scorer and the agent"
    assert "<th>I2T pgd-report</th>" in text
    scorer_flips = report.flips(report.load_run(runs["scorer"]))
    agent_flips = report.flips(report.load_run(runs["agent"]))
    assert scorer_flips, "a 32/255 PGD flips some demo decision of the tagger"
    severities = [f.severity for f in scorer_flips]
    assert severities == sorted(severities, reverse=True), "worst first"
    assert f"Worst flips ({min(6, len(scorer_flips)) + min(6, len(agent_flips))} shown" in text
    results = json.loads((runs["agent"] / "results.json").read_text())
    flipped = results["attacks"]["pgd-report"]["divergence"]["flipped"]
    assert flipped == len(agent_flips)
    # The attack is seeded and the LLM refuses (the pre-ranker decides), so this is deterministic:
    # on the adversarial image the describer's words and the pre-ranker move, and a decision flips.
    assert agent_flips, "no agent decision flipped: the trace and divergence parts go untested"
    traces = sorted((runs["page"].parent / "report_traces").glob("*.html"))
    assert len(traces) == 2 * min(6, len(agent_flips))
    assert all("Decision trace" in t.read_text(encoding="utf-8") for t in traces)
    assert "first divergence: <b>" in text
    assert text.count("report_traces/") >= 2 * min(6, len(agent_flips)), "each flip links both traces"


def test_report_renders_a_run_killed_mid_line(runs: dict[str, Path], tmp_path: Path) -> None:
    """A run killed while writing items.jsonl leaves a cut last line: the report leaves it out
    (the run redoes it on resume) and renders the rest."""
    cut = tmp_path / "cut"
    shutil.copytree(runs["scorer"], cut)
    items = cut / "items.jsonl"
    whole = items.read_bytes()
    lines = whole.splitlines(keepends=True)
    items.write_bytes(whole + lines[0][: len(lines[0]) // 2])  # no newline: cut mid-record
    assert len(report.load_run(cut).records) == len(lines)
    page = tmp_path / "report.html"
    assert report.main([str(cut), "--out", str(page), "--quiet"]) == 0
    text = page.read_text(encoding="utf-8")
    assert "<td>tagger</td>" in text and "Worst flips (" in text


def test_report_escapes_data(runs: dict[str, Path], tmp_path: Path) -> None:
    """Autoescaping is on: markup in a run's data (here its folder name) is shown, not parsed."""
    odd = tmp_path / "<b>&'run"
    shutil.copytree(runs["scorer"], odd)
    page = tmp_path / "report.html"
    assert report.main([str(odd), "--out", str(page), "--quiet"]) == 0
    text = page.read_text(encoding="utf-8")
    assert "<h3>&lt;b&gt;&amp;&#39;run · pgd-report · mention" in text and "<b>&" not in text


def _browser():
    """A headless Chromium through chromedriver, or a skip (locally) / failure (CI) saying why."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        missing.append(f"selenium ({exc})")
    if missing:
        why = f"needs {', '.join(missing)}: apt-get install -y chromium chromium-driver; pip install selenium"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {why}")
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,2400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def test_report_renders_in_headless_chromium(runs: dict[str, Path]) -> None:
    driver = _browser()
    try:
        driver.get(runs["page"].as_uri())
        assert driver.title == "melrobust report"
        table = driver.execute_script(
            "return Array.from(document.querySelectorAll('table.table2 tr'))"
            ".map(r => Array.from(r.cells).map(c => c.textContent))"
        )
        assert table[0][:2] == ["Model", "I2T RAW"]
        assert {row[0] for row in table[1:]} == {"tagger", "agent (tagger)"}
        assert all(re.fullmatch(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", row[1]) for row in table[1:]), (
            table
        )  # acc@1 [95% CI]
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
        )
        plots = [i for i in images if i[0] in ("accuracy per attack", "divergence by node")]
        assert len(plots) == 2, images
        assert len(images) >= 2 + 3, "two plots and a clean/adversarial/difference triple per flip"
        assert all(complete and width > 0 and height > 0 for _, complete, width, height in images), images
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == [], errors
        links = driver.execute_script("return Array.from(document.links).map(a => a.href)")
        for href in links:
            driver.get(href)
            assert "Decision trace" in driver.find_element("tag name", "h1").text
            assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
        shot = runs["root"] / "report.png"
        driver.get(runs["page"].as_uri())
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()
