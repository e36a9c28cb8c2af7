"""Shared test helpers: the venv's commands."""

import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.fixture
def fedunlearn_cmd() -> list[str]:
    """The installed console command of this interpreter's venv."""
    return [str(BIN / "fedunlearn")]
