"""``/metrics`` (Prometheus text format) and ``/health`` (JSON) for the worker.

Served by a small aiohttp app on ``Settings.metrics_port`` inside the worker's event loop rather
than through Faust's web server: Faust's web server is a whole extra service (its own views,
CORS, blueprints) that Kindling otherwise disables, and aiohttp is already installed with Faust.
Figures that only exist inside Faust (partition assignment, highwater and committed offsets) are
read at scrape time, so nothing extra runs per event.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from workers.metrics import Metrics

log = logging.getLogger("kindling.web")


@dataclass
class HealthState:
    """What ``/health`` reports; ``ready`` decides 200 vs 503."""

    ready: bool
    reasons: list[str]
    model_version: str
    assigned_partitions: list[int]
    last_event_age_s: float | None
    lag: dict[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ready else "not ready",
            "ready": self.ready,
            "not_ready_because": self.reasons,
            "model_version": self.model_version,
            "assigned_partitions": self.assigned_partitions,
            "last_event_age_s": None if self.last_event_age_s is None
            else round(self.last_event_age_s, 3),
            "consumer_lag": {str(p): n for p, n in sorted(self.lag.items())},
        }


def consumer_lag(app: Any, topic: str) -> tuple[list[int], dict[int, int]]:
    """Assigned partitions of ``topic`` and their lag: highwater (log end offset) minus the
    committed offset (Faust's ``_committed_offset`` holds the next offset to read after the last
    acked batch; it is private, so anything unexpected yields no figure rather than an error)."""
    consumer = getattr(app, "_consumer", None)  # never create the consumer from a scrape
    if consumer is None:
        return [], {}
    try:
        assigned = sorted(tp for tp in consumer.assignment() if tp.topic == topic)
    except Exception:  # noqa: BLE001 - not started yet / rebalancing
        return [], {}
    committed_map = getattr(consumer, "_committed_offset", {})
    lag: dict[int, int] = {}
    for tp in assigned:
        try:
            high = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - no fetch response for this partition yet
            high = None
        if high is None:
            continue
        committed = committed_map.get(tp)
        lag[tp.partition] = max(0, int(high) - int(committed or 0))
    return [tp.partition for tp in assigned], lag


class WebServer:
    """Start/stop an aiohttp server with the two endpoints."""

    def __init__(self, metrics: Metrics, health: Callable[[], HealthState], host: str,
                 port: int) -> None:
        self.metrics = metrics
        self.health = health
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("metrics on http://%s:%d/metrics, health on /health", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        state = self.health()  # refreshes the lag and partition gauges
        self.metrics.observe_health(state.assigned_partitions, state.lag, state.last_event_age_s)
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        state = self.health()
        return web.Response(
            text=json.dumps(state.to_dict()), status=200 if state.ready else 503,
            content_type="application/json",
        )


def event_age(last_event_at: float | None) -> float | None:
    return None if last_event_at is None else max(0.0, time.time() - last_event_at)
