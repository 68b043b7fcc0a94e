"""Test-wide settings: never reach a model hub; real data is read from ../shared; every cache is
the session's own.

**The suite's rule** (tests/README.md says more): every check in the code and every promise in
the README has a test that feeds it the broken case and sees it caught. A test that only ever
sees the check pass proves nothing: build the input the check exists to catch (a pixel outside
the ε ball, a record with a wrong type, a model that must not load) and assert the failure.

**Caches.** ``MEL_CACHE_DIR`` points at a temporary folder made for this session, before any
test module is imported, so no test reads or writes the developer's real cache
(``~/.cache/melrobust`` or their own ``MEL_CACHE_DIR``). Within the session that folder is
shared: KB stores, text embeddings and the assembled GGUF are built at most once per session.
``support.private_cache`` gives a test a cache of its own whose chosen parts link to the
session's. ``MEL_TEST_CACHE_DIR=DIR`` keeps the session cache in DIR across sessions instead
(it saves the WikiMEL store's minutes of building while you work; never point it at your real
cache, which is refused); unset, the folder is removed at the end of the session.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import support  # noqa: E402

SHARED_MEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "mel"
PROJECT = Path(__file__).resolve().parents[1]


def _session_cache() -> tuple[Path, bool]:
    """(the session's cache root, whether to remove it at the end)."""
    real = {
        Path(os.environ.get("MEL_CACHE_DIR") or Path.home() / ".cache" / "melrobust").expanduser().resolve(),
        (Path.home() / ".cache" / "melrobust").resolve(),
    }
    kept = os.environ.get("MEL_TEST_CACHE_DIR")
    if kept:
        root = Path(kept).expanduser().resolve()
        if any(root == r or root.is_relative_to(r) for r in real):
            raise RuntimeError(
                f"MEL_TEST_CACHE_DIR={kept} is the real cache: give the tests a folder of their own"
            )
        root.mkdir(parents=True, exist_ok=True)
        return root, False
    return Path(tempfile.mkdtemp(prefix="melrobust-test-cache-")), True


SESSION_CACHE, _REMOVE_AT_END = _session_cache()
os.environ["MEL_CACHE_DIR"] = str(SESSION_CACHE)  # before any test module (or subprocess) reads it
support.SESSION_CACHE = SESSION_CACHE


def pytest_unconfigure(config: pytest.Config) -> None:
    if _REMOVE_AT_END:
        shutil.rmtree(SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_mel() -> Path:
    """The real MEL files next to the checkout; a missing folder is a setup error, not a skip."""
    if not SHARED_MEL.is_dir():
        raise RuntimeError(f"real MEL data expected at {SHARED_MEL} (the ../shared folder)")
    return SHARED_MEL


@pytest.fixture(scope="session")
def session_cache() -> Path:
    """The session's ``MEL_CACHE_DIR`` (see the module doc)."""
    return SESSION_CACHE


@pytest.fixture(scope="session")
def wikimel_store(shared_mel: Path) -> dict:
    """``python -m kb.build --dataset wikimel``'s JSON: WikiMEL's KB store (18,880 entities), built
    by the real CLI once per session into the session cache (minutes on 2 cores) and shared by
    every test that asks for it (the eval runs over WikiMEL, the candidate tests, MCR training)."""
    command = [
        sys.executable,
        "-m",
        "kb.build",
        "--dataset",
        "wikimel",
        "--data-dir",
        str(shared_mel / "wikimel"),
    ]
    env = {**os.environ, "MEL_CACHE_DIR": str(SESSION_CACHE), "PYTHONPATH": str(PROJECT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=PROJECT)
    assert done.returncode == 0, f"kb.build wikimel failed:\n{done.stderr[-3000:]}"
    built = json.loads(done.stdout)
    assert built["entities"] == 18_880 and Path(built["path"]).is_relative_to(SESSION_CACHE), built
    return built
