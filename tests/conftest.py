"""Shared fixtures: the embedded broker is started once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def broker() -> Iterator[object]:
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b
