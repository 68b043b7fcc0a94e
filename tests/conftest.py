"""Test-wide settings: never reach a model hub; real data is read from ../shared."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_MEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "mel"


@pytest.fixture(scope="session")
def shared_mel() -> Path:
    """The real MEL files next to the checkout; a missing folder is a setup error, not a skip."""
    if not SHARED_MEL.is_dir():
        raise RuntimeError(f"real MEL data expected at {SHARED_MEL} (the ../shared folder)")
    return SHARED_MEL
