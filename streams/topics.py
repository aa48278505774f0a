"""Kindling's topics, their keys, and how to create them.

All six topics share one partition count and are keyed by user id (items by item id), so a
user's interactions, attributes, recommendation requests, support set changelog and
recommendations are co-partitioned: a request is answered by the worker holding the user's
support set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from engine.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicNames:
    interactions: str
    items: str
    users: str
    recommendations: str
    dlq: str
    requests: str

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicNames:
        names = ("interactions", "items", "users", "recommendations", "dlq", "requests")
        return cls(*(settings.topic(n) for n in names))

    def all(self) -> list[str]:
        return [self.interactions, self.items, self.users, self.recommendations, self.dlq,
                self.requests]


def bootstrap_servers(settings: Settings) -> str:
    """``kafka://h1:9092;h2:9092`` (Faust style) → ``h1:9092,h2:9092`` (kafka-python style)."""
    hosts = settings.broker.replace("kafka://", "").replace(";", ",")
    return ",".join(h.strip() for h in hosts.split(",") if h.strip())


def client_config(settings: Settings) -> dict[str, Any]:
    """kafka-python security settings, passed through from the environment."""
    conf: dict[str, Any] = {"bootstrap_servers": bootstrap_servers(settings)}
    if settings.security_protocol != "PLAINTEXT":
        conf["security_protocol"] = settings.security_protocol
    if settings.sasl_mechanism:
        conf["sasl_mechanism"] = settings.sasl_mechanism
        conf["sasl_plain_username"] = settings.sasl_username
        conf["sasl_plain_password"] = settings.sasl_password
    if settings.ssl_cafile:
        conf["ssl_cafile"] = settings.ssl_cafile
    return conf


def ensure_topics(settings: Settings, extra: list[str] | None = None) -> list[str]:
    """Create Kindling's topics with ``settings.partitions`` partitions if they don't exist.

    Faust creates only its internal topics (changelogs); source topics auto-created by a broker
    get the broker's default partition count, which would break co-partitioning with the
    changelogs, so they are created here explicitly first.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    names = TopicNames.from_settings(settings).all() + list(extra or [])
    admin = KafkaAdminClient(**client_config(settings), request_timeout_ms=10000)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            try:
                admin.create_topics(
                    [NewTopic(n, settings.partitions, 1) for n in missing], timeout_ms=10000
                )
            except TopicAlreadyExistsError:
                pass  # a concurrent worker created it first
            log.info("created topics %s with %d partitions", missing, settings.partitions)
        return missing
    finally:
        admin.close()
