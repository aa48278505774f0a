"""S3 storage for the embedded broker: the environment Tansu reads, and a loopback S3 endpoint.

Tansu's ``s3://BUCKET/`` storage engine is configured through the ``AWS_*`` environment of its
process (``AWS_ENDPOINT``, ``AWS_ALLOW_HTTP``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``). :func:`storage_env` builds the non-secret part
from :class:`~engine.settings.Settings`; credentials are only ever inherited from this process's
environment, never read from settings, logged or written out.

:class:`LocalS3` runs moto's S3 server (``moto[server]``, the ``test`` extra) on a free loopback
port, for tests and local use: its objects live in its own memory, so a broker restarted on it
finds everything again while the endpoint runs, and nothing survives the endpoint itself (point
the broker at MinIO or real S3 for that, see docs/broker.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from urllib.parse import urlparse

from engine.settings import Settings
from streams.errors import BrokerError

log = logging.getLogger(__name__)

#: What ``s3_endpoint`` says to start a loopback endpoint (:class:`LocalS3`).
LOCAL = "local"
#: Credentials for the loopback endpoint when the environment has none (moto accepts any).
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "kindling-local",
                     "AWS_SECRET_ACCESS_KEY": "kindling-local"}


def bucket_of(storage: str) -> str | None:
    """``s3://BUCKET/`` -> ``BUCKET``; None for memory storage; BrokerError otherwise."""
    if storage in ("", "memory") or storage.startswith("memory://"):
        return None
    url = urlparse(storage)
    if url.scheme != "s3" or not url.netloc:
        raise BrokerError(f"broker storage must be 'memory' or 's3://BUCKET/', got {storage!r}")
    return url.netloc


def tansu_storage_url(storage: str) -> str:
    """The ``--storage-engine`` argument for ``storage`` (a setting value)."""
    bucket = bucket_of(storage)
    return "memory://tansu/" if bucket is None else f"s3://{bucket}/"


def storage_env(settings: Settings, endpoint: str | None = None) -> dict[str, str]:
    """The non-secret ``AWS_*`` variables Tansu's S3 storage needs: the endpoint (``endpoint``
    or ``settings.s3_endpoint``; none = AWS itself) and the region. Plain HTTP is allowed only
    for an ``http://`` endpoint."""
    endpoint = endpoint if endpoint is not None else settings.s3_endpoint
    env = {"AWS_DEFAULT_REGION": settings.s3_region}
    if endpoint and endpoint != LOCAL:
        env["AWS_ENDPOINT"] = endpoint
        if urlparse(endpoint).scheme == "http":
            env["AWS_ALLOW_HTTP"] = "true"
    return env


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` if it still runs; SIGKILL it if it has not exited after ``timeout``."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class LocalS3:
    """moto's S3 server on a free loopback port: ``with LocalS3(["tansu"]) as s3: s3.endpoint``."""

    def __init__(self, buckets: Iterable[str] = (), port: int | None = None,
                 host: str = "127.0.0.1", region: str = "us-east-1") -> None:
        from streams.broker import free_port

        self.host, self.region = host, region
        self.port = port or free_port(host)
        self.buckets = list(buckets)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir = Path(tempfile.mkdtemp(prefix="kindling-s3-"))

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self._log_dir / "moto.log"

    def credentials(self) -> dict[str, str]:
        """The environment's credentials, else placeholder ones (moto checks none)."""
        return {k: os.environ.get(k, v) for k, v in LOCAL_CREDENTIALS.items()}

    def env(self) -> dict[str, str]:
        """Everything a client (Tansu, boto3) needs to use this endpoint."""
        return {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_DEFAULT_REGION": self.region, **self.credentials()}

    def start(self, timeout: float = 30.0) -> LocalS3:
        if self._proc is not None:
            return self
        try:
            import moto.server  # noqa: F401 - only to fail early with a clear message
        except ImportError as exc:
            raise BrokerError("a local S3 endpoint needs moto's server: "
                              "pip install 'moto[server]' (the kindling[test] extra)") from exc
        out = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                for bucket in self.buckets:
                    self.create_bucket(bucket)
                log.info("local S3 endpoint (moto) on %s, buckets %s", self.endpoint,
                         self.buckets)
                return self
            except ClientError as exc:  # the endpoint answered: no
                self.close()
                raise BrokerError(f"local S3 endpoint: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                time.sleep(0.2)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise BrokerError(f"local S3 endpoint did not start within {timeout}s ({last}): {tail}")

    def client(self) -> object:
        import boto3

        creds = self.credentials()
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])

    def create_bucket(self, bucket: str) -> None:
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}  # type: ignore[attr-defined]
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]

    def object_count(self, bucket: str) -> int:
        """Objects in ``bucket`` (tests: the broker really writes to S3)."""
        paginator = self.client().get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        return sum(page.get("KeyCount", 0) for page in paginator.paginate(Bucket=bucket))

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._log_dir, ignore_errors=True)

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
