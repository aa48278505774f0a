"""What an operator watches, as Prometheus metrics (one private registry per worker).

Served by :mod:`workers.web` on ``/metrics``. Rates (events/s) come from the counters with
PromQL ``rate()``; lag, assignment and event age are refreshed at scrape time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from engine.online import BUCKETS, LISTS, HitCounts


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("kindling_events", "Interaction events consumed", registry=r)
        self.dlq = Counter("kindling_dead_letters", "Messages sent to the dead-letter topic",
                           registry=r)
        self.duplicates = Counter(
            "kindling_duplicate_events", "Redelivered events recognised by id (not re-applied)",
            registry=r,
        )
        self.batch_latency = Histogram(
            "kindling_batch_seconds", "Micro-batch processing time (apply + adapt + rank + send)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=r,
        )
        self.support_size = Histogram(
            "kindling_support_size", "Support-set size after each event",
            buckets=(0, 1, 3, 5, 10, 20, 50), registry=r,
        )
        self.rank_latency = Histogram(
            "kindling_rank_seconds", "Batched adaptation + scoring time per micro-batch (rank)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=r,
        )
        self.batch_size = Histogram(
            "kindling_batch_events", "Events per micro-batch",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500), registry=r,
        )
        self.recommendations = Counter(
            "kindling_recommendations", "Recommendations published", registry=r
        )
        self.offset_gaps = Counter(
            "kindling_offset_gaps", "Fetched records past a partition's next expected offset "
            "(workers/gap_guard.py), by action: rewind (sought back, nothing committed past) or "
            "accept (a real hole in the log, committed past as Faust does)", ["action"],
            registry=r)
        self.lag = Gauge("kindling_consumer_lag", "Consumer lag (messages) by partition",
                         ["partition"], registry=r)
        self.assigned = Gauge("kindling_assigned_partitions",
                              "Interaction partitions assigned to this worker", registry=r)
        self.last_event_age = Gauge(
            "kindling_last_event_age_seconds", "Seconds since the last interaction batch "
            "(-1 before the first)", registry=r,
        )
        self._version = Info("kindling_model", "Model version being served", registry=r)
        self._lag_partitions: set[int] = set()
        # Online hit@K (engine/online.py): hit@K = rate(hits) / rate(events), per bucket and list;
        # the model's over popularity's is the live lift. Every series exists from the start.
        online_events = Counter(
            "kindling_online_events", "Events scored for online hit@K, by the support-set size "
            "their user's previous list was made from", ["bucket"], registry=r)
        online_hits = Counter(
            "kindling_online_hits", "Scored events whose item was in the user's previous list "
            "(list=model: the list published; list=popularity: popularity's list at the same "
            "moment)", ["bucket", "list"], registry=r)
        self._online_events = [online_events.labels(b) for b in BUCKETS]
        self._online_hits = [[online_hits.labels(b, lst) for b in BUCKETS] for lst in LISTS]
        self.online_unscored = Counter(
            "kindling_online_unscored_events", "Events not scored for online hit@K: the user's "
            "previous list is not remembered here (restart, rebalance, eviction)", registry=r)

    def online(self, counts: HitCounts) -> None:
        """Add one micro-batch's online hit@K counts."""
        for b, n in enumerate(counts.events.tolist()):
            if n:
                self._online_events[b].inc(n)
        for li, row in enumerate(counts.hits.tolist()):
            for b, n in enumerate(row):
                if n:
                    self._online_hits[li][b].inc(n)
        if counts.unscored:
            self.online_unscored.inc(counts.unscored)

    def model_version(self, version: str) -> None:
        self._version.info({"version": version})

    def observe_health(self, assigned: list[int], lag: dict[int, int],
                       last_event_age: float | None) -> None:
        """Scrape-time gauges; partitions revoked since the last scrape are dropped."""
        self.assigned.set(len(assigned))
        for partition in self._lag_partitions - set(lag):
            self.lag.remove(str(partition))
        for partition, n in lag.items():
            self.lag.labels(str(partition)).set(n)
        self._lag_partitions = set(lag)
        self.last_event_age.set(-1.0 if last_event_age is None else last_event_age)


def read_online(text: str) -> tuple[HitCounts, list[str]]:
    """The online hit@K counters in a ``/metrics`` page, and their sample lines (``_total``)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = HitCounts()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kindling_online_events_total":
                counts.events[BUCKETS.index(sample.labels["bucket"])] = int(sample.value)
            elif sample.name == "kindling_online_hits_total":
                at = LISTS.index(sample.labels["list"]), BUCKETS.index(sample.labels["bucket"])
                counts.hits[at] = int(sample.value)
            elif sample.name == "kindling_online_unscored_events_total":
                counts.unscored = int(sample.value)
    lines = [line for line in text.splitlines()
             if line.startswith("kindling_online") and "_total" in line.split("{")[0]]
    return counts, lines
