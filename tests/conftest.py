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


def _wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` every 0.5 s until it returns something truthy (returned), or fail."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def wait_for():
    """``wait_for(predicate, timeout_s, what)`` for integration tests."""
    return _wait_for
