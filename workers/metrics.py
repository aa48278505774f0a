"""What an operator watches, as Prometheus metrics (one private registry per worker)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("kindling_events", "Interaction events consumed", registry=r)
        self.dlq = Counter("kindling_dead_letters", "Messages sent to the dead-letter topic", registry=r)
        self.duplicates = Counter(
            "kindling_duplicate_events", "Redelivered events recognised by id (not re-applied)", registry=r
        )
        self.batch_latency = Histogram(
            "kindling_batch_seconds", "Micro-batch processing time (apply + adapt + rank + send)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=r,
        )
        self.support_size = Histogram(
            "kindling_support_size", "Support-set size after each event",
            buckets=(0, 1, 3, 5, 10, 20, 50), registry=r,
        )
        self.lag = Gauge("kindling_consumer_lag", "Consumer lag (messages) by partition",
                         ["partition"], registry=r)
        self._version = Info("kindling_model", "Model version being served", registry=r)

    def model_version(self, version: str) -> None:
        self._version.info({"version": version})
