"""S3 storage settings for the embedded broker: what Tansu is given, and what it never is."""

from __future__ import annotations

import pytest

from engine.settings import Settings
from streams.broker import EmbeddedBroker, embedded_worker_settings
from streams.errors import BrokerError
from streams.s3 import bucket_of, storage_env, tansu_storage_url


def test_storage_urls() -> None:
    assert bucket_of("memory") is None and tansu_storage_url("memory") == "memory://tansu/"
    assert bucket_of("s3://kindling/") == "kindling"
    assert tansu_storage_url("s3://kindling") == "s3://kindling/"
    for bad in ("postgres://localhost", "file:///tmp/x", "s3://", "kindling"):
        with pytest.raises(BrokerError):
            bucket_of(bad)


def test_storage_env_names_endpoint_and_region_but_no_secret(monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-copy")
    aws = storage_env(Settings(s3_region="eu-west-1"))
    assert aws == {"AWS_DEFAULT_REGION": "eu-west-1"}  # AWS itself: no endpoint, HTTPS only
    minio = storage_env(Settings(s3_endpoint="http://127.0.0.1:9000"))
    assert minio["AWS_ENDPOINT"] == "http://127.0.0.1:9000" and minio["AWS_ALLOW_HTTP"] == "true"
    tls = storage_env(Settings(s3_endpoint="https://s3.example.internal"))
    assert "AWS_ALLOW_HTTP" not in tls
    for env in (aws, minio, tls):
        assert "do-not-copy" not in env.values()


def test_broker_from_settings() -> None:
    memory = EmbeddedBroker.from_settings(Settings())
    assert not memory.persistent and memory.engine == "memory://tansu/"
    s3 = EmbeddedBroker.from_settings(Settings(broker_storage="s3://b1/", s3_endpoint="local"))
    assert s3.persistent and s3.engine == "s3://b1/" and s3.local_s3 is not None
    assert s3.local_s3.buckets == ["b1"]
    real = EmbeddedBroker.from_settings(Settings(broker_storage="s3://b1/",
                                                 s3_endpoint="http://10.0.0.5:9000"))
    assert real.local_s3 is None and real.storage_env["AWS_ENDPOINT"] == "http://10.0.0.5:9000"
    for broker in (memory, s3, real):
        broker.stop()  # nothing started: only removes the log folders


def test_s3_worker_settings_wait_longer_for_fetches() -> None:
    memory = embedded_worker_settings("kafka://127.0.0.1:1")
    s3 = embedded_worker_settings("kafka://127.0.0.1:1", s3=True)
    assert s3.fetch_max_wait_ms > memory.fetch_max_wait_ms
    assert s3.max_poll_interval_s > memory.max_poll_interval_s
    mine = embedded_worker_settings("kafka://x:1", s3=True, fetch_max_wait_ms=7)
    assert mine.fetch_max_wait_ms == 7  # explicit changes win


def test_secrets_are_not_settings() -> None:
    names = Settings.env_names()
    assert not any("SECRET" in n or "ACCESS_KEY" in n for n in names)
