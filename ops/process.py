"""Run ``kindling worker`` as a child process (the demo, the benchmarks, the fault-injection
tools and the integration tests use this)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.settings import Settings

# What the items agent logs per batch (workers/app.py); counts add up to the items received.
_CATALOG_LINE = re.compile(rb"catalog: (\d+) items received")


class WorkerProcess:
    """A real worker process configured through ``KINDLING_*`` env vars, logging to a file.

    ``module`` and ``ready`` run another consumer the same way (``ops.bare_echo``): the child's
    ``python -m`` arguments and the log line that says it is ready."""

    def __init__(self, settings: Settings, log_path: str | Path,
                 module: tuple[str, ...] = ("workers.cli", "worker"),
                 ready: bytes = b"[^Worker]: Ready") -> None:
        self.settings = settings
        self.log_path = Path(log_path)
        self.module = module
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return self.settings.child_env()

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        start_size = self.log_path.stat().st_size if self.log_path.exists() else 0
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *self.module], env=self.env(), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.tail()}")
            with self.log_path.open("rb") as f:
                f.seek(start_size)
                if self.ready in f.read():
                    return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"worker not ready within {timeout}s: {self.tail()}")

    def load_catalog(self, producer: Any, items: Sequence[Any], timeout: float = 120.0) -> None:
        """Send ``items`` (and whatever ``producer`` holds) and block until the worker has them:
        interactions sent before that race the catalog."""
        for item in items:
            producer.item(item)
        producer.flush()
        self.wait_for_catalog(len(items), timeout)

    def wait_for_catalog(self, n_items: int, timeout: float = 120.0) -> None:
        """Block until the items agent has logged ``n_items`` items received (since the log
        began). Interactions sent before that race the catalog: the worker can only rank items
        it has been told about, so a test or benchmark that sends items first waits here."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.tail()}")
            seen = sum(int(n) for n in _CATALOG_LINE.findall(self.log_path.read_bytes()))
            if seen >= n_items:
                return
            time.sleep(0.2)
        raise TimeoutError(f"the worker did not load {n_items} items within {timeout:.0f} s")

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no commit (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None:
            try:  # children the worker started (a retrain round) share its process group
                os.killpg(self.proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
