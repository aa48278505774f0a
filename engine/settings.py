"""One settings object for the whole worker: defaults, ``KINDLING_*`` env vars, CLI flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

ENV_PREFIX = "KINDLING_"


@dataclass
class Settings:
    # Kafka
    broker: str = "kafka://127.0.0.1:9092"
    topic_prefix: str = "kindling."
    partitions: int = 4
    app_id: str = "kindling"
    # Short by default: a rejoining consumer waits up to the rebalance timeout (seen with Tansu).
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    rebalance_timeout_s: float = 10.0
    max_poll_interval_s: float = 10.0
    # Tansu (the embedded broker) reports a high watermark inside the last record batch, so a
    # restarted worker's persisted changelog offset looks "ahead" of it; Apache Kafka: keep True.
    recovery_consistency_check: bool = True
    fetch_max_wait_ms: int = 10  # Faust hard-codes 1500: see workers/faust_compat.py
    # Producer batching (recommendations, dead letters, table changelogs). Faust's defaults are 0
    # and 16 KiB; these gave +13% events/s through the embedded broker (`kindling bench kafka`).
    producer_linger_ms: int = 5
    producer_max_batch_size: int = 256 * 1024
    # Idempotent kafka-python producers (kindling produce, load, chaos, bench). Off for the
    # S3-backed embedded broker: after a crash, Tansu 0.6.0 on S3 answers a retried batch it
    # never stored with DUPLICATE_SEQUENCE_NUMBER, which an idempotent producer takes as
    # delivered (records lost at each broker kill, `kindling chaos --kill broker`). Without it a
    # retry may store a record twice; the worker de-duplicates interactions by event id.
    producer_idempotence: bool = True
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str = ""  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str = ""
    # secrets only via env: never logged, never in files, never in repr()
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""
    # The embedded broker's storage (streams/broker.py; `kindling broker`, chaos, bench kafka).
    # "memory" (the default: everything is gone when it stops) or "s3://BUCKET/" (Tansu keeps
    # topics, offsets and changelogs in that bucket and a restarted broker finds them again).
    # S3 credentials come only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    # AWS_SESSION_TOKEN), never from settings: see docs/broker.md.
    broker_storage: str = "memory"
    # S3 API endpoint for that storage: "" = AWS itself (by region), a URL for MinIO or another
    # S3-compatible store (http:// allows plain HTTP), or "local": start a loopback S3 endpoint
    # (moto's server, the `test` extra) for tests and local use; its objects live in its memory.
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    # State
    data_dir: str = "./kindling-data"
    support_capacity: int = 20
    dedup_window: int = 16  # evicted event ids still remembered for de-duplication
    # Exact de-duplication by a per-user interactions-offset watermark (engine/support.py). Turn
    # off if the interactions topic is deleted and recreated: offsets restart at 0 and would be
    # taken for redeliveries (the worker warns when an offset is far below a user's watermark).
    offset_dedup: bool = True
    # Serving
    learner: str = "hybrid"
    # The hybrid learner's item-item table (models/hybrid.py): neighbours kept per item, and the
    # most interacted items EASE models (its dense Gram matrix is this size squared).
    itemitem_neighbours: int = 128
    itemitem_max_items: int = 5000
    # Cross-domain transfer (models/transfer, `kindling transfer`): the domain whose events a
    # transfer learner carries over and the domain it serves with them. Empty: inferred from
    # event counts (the larger domain is the source), which flips as the stream's mix changes.
    transfer_source_domain: str = ""
    transfer_target_domain: str = ""
    model_dir: str = ""  # a checkpoint directory; empty = newest version under data_dir/models
    top_k: int = 10
    inner_steps: int = 2
    batch_max: int = 256
    # How long a micro-batch waits to fill before it is processed anyway. With 0.005 (was 0.02),
    # fetch_max_wait_ms 10 (was 50) and stream_buffer_events, p50 at 2,000 events/s through the
    # embedded broker went from 72 to 38 ms (`kindling bench kafka`).
    batch_within_s: float = 0.005
    # Events Faust may queue for the interactions agent. It stops fetching a partition once the
    # queue is 80% full and resumes at 40% of that; each resume costs a fetch round trip (up to
    # fetch_max_wait_ms on a broker that holds fetches), so a small queue starves the agent: the
    # echo pipeline ran 2,600 events/s with 1,024, 5,600 with 4,096 and 6,400 with 16,384. The
    # worker raises it to at least 10 x batch_max (one fetch returns up to 2 x batch_max records;
    # a fuller queue blocks the fetcher, which then misses max_poll_interval).
    stream_buffer_events: int = 8192
    # "full" serves recommendations. "echo" is the transport baseline of `kindling bench kafka`:
    # each interaction is decoded and validated (bad ones dead-lettered) and answered with an
    # empty recommendation; no state, no model. It measures what Kafka + Faust alone cost here.
    pipeline: str = "full"
    # Freeze the worker's start-up heap out of Python's cyclic GC (workers/cli.py, cmd_worker).
    gc_freeze: bool = True
    # The worker's asyncio event loop: uvloop | asyncio. uvloop (libuv) cuts the per-event cost of
    # the Kafka clients' I/O and Faust's tasks (`kindling bench kafka`, docs/throughput.md);
    # asyncio is the standard library's loop, for platforms or debuggers uvloop does not suit.
    event_loop: str = "uvloop"
    rating_low: float = 0.0
    rating_high: float = 5.0
    # Keep the model's decayed item counts (its "popular lately" prior, models/recency.py) fresh
    # from the events this process applies. Off: the bundle's train-end counts, refreshed at each
    # retrain, and recommendations independent of micro-batching and partitioning.
    recency_online: bool = False
    feature_dim: int = 64
    attribute_dim: int = 32
    # Item content encoder: hashing | minilm | a local HF model folder (engine/encoders.py);
    # a transformer fixes feature_dim to its width (384 for MiniLM).
    encoder: str = "hashing"
    # Hybrid bootstrap: fixed | learned | none (engine/recommender.py, models/content.py)
    blend: str = "none"
    seed: int = 0
    # One intra-op thread: batches are small and the event loop, the broker client and a retrain
    # child need the other core (2 threads: -8% events/s end to end on 2 cores, and ranking
    # stalls whenever a thread is descheduled; `kindling bench kafka`, `kindling bench retrain`).
    torch_threads: int = 1
    # Exploration
    policy: str = "none"  # none | epsilon | ucb | thompson | thompson-gaussian | linucb | lints
    explore_slots: int = 0  # last slots of the top-K open to the policy (engine/exploration.py)
    explore_epsilon: float = 0.3  # a new user's chance that an explore slot explores
    explore_decay: float = 20.0  # events after which that chance has halved
    explore_pool: int = 20  # explore picks come from the next best-scored items
    # Retraining
    retrain_interval_s: float = 0.0  # 0 disables the periodic meta-training agent
    retrain_steps: int = 200
    retrain_min_users: int = 20
    retrain_max_users: int = 20000  # most users snapshotted per retrain (local partitions)
    retrain_tolerance: float = 0.0  # promote if held-out loss <= incumbent's + tolerance
    # Operations
    web_port: int = 6066
    web_enabled: bool = False
    # Prometheus /metrics and /health (workers/web.py) on this port; 0 serves nothing.
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"
    log_format: str = "text"  # text | json (one JSON object per line, workers/logs.py)
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, overridden by ``KINDLING_<FIELD>`` env vars, overridden by ``overrides``
        (CLI flags; ``None`` values are ignored)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def env_names(cls) -> list[str]:
        return [ENV_PREFIX + f.name.upper() for f in fields(cls)]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def public(self) -> dict[str, Any]:
        """Settings safe to log (secrets masked)."""
        out = dataclasses.asdict(self)
        if out["sasl_password"]:
            out["sasl_password"] = "***"
        return out

    def child_env(self) -> dict[str, str]:
        """This process's environment with these settings as ``KINDLING_*`` variables, for a
        child process (a worker, a retrain round); a secret is inherited from this process's
        environment, never written out."""
        env = dict(os.environ)
        for key, value in self.public().items():
            if key != "sasl_password":
                env[ENV_PREFIX + key.upper()] = str(value)
        return env


def _coerce(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool}.get(
        str(f.type), str
    )
    try:
        if kind is bool:
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ValueError(
            f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}"
        ) from None
