"""A new item published on the items topic is recommended after one event of a matching user.

Runs a real worker (MiniLM content encoder, untrained model: every item is scored from content)
against the embedded broker, and checks the item-vector cache: unchanged text is never
re-encoded, changed text is.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from engine.settings import Settings
from ops.process import WorkerProcess
from schemas import Interaction, Item
from streams.broker import embedded_worker_settings
from streams.kafka import EventProducer, consume
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration

FILLER = [
    "Tax law for small businesses", "Gardening with tomatoes and herbs", "Baroque organ music",
    "A history of the Roman empire", "Knitting patterns for winter", "Introduction to accounting",
    "Medieval castle architecture", "Baking sourdough bread at home", "Birdwatching in wetlands",
    "Classical ballet technique", "Car engine repair manual", "The economics of fishing",
    "Pottery and ceramic glazes", "Chess openings for beginners", "Wine regions of France",
    "Yoga for back pain", "A guide to stamp collecting", "Victorian poetry anthology",
    "Plumbing basics for homeowners", "Beekeeping through the seasons",
]
SEEN = Item("seen", title="Alien robots invade a distant galaxy",
            text="space battle starship laser science fiction")
NEW = Item("brand-new", title="Starship war against alien robots in deep space",
           text="science fiction space opera")


def _wait_cached(read_until, settings: Settings, key: bytes, count: int,
                 timeout: float = 60.0) -> list[bytes]:
    """The vector cache's changelog keys once ``key`` is there ``count`` times (and 2 s on:
    a stray re-encoding shows up in the counts)."""
    keys = [k for k, _ in read_until(
        settings, f"{settings.app_id}-item_vectors-changelog",
        lambda got: [k for k, _ in got].count(key) >= count, timeout)]
    if keys.count(key) < count:
        raise AssertionError(f"{key!r} cached {keys.count(key)} times, expected {count}")
    return keys


def test_new_item_is_recommended_after_one_matching_event(
    broker, tmp_path: Path, read_until
) -> None:
    settings = embedded_worker_settings(
        broker.url, data_dir=str(tmp_path / "data"), partitions=2, app_id="it-newitems",
        topic_prefix=f"it-newitems-{uuid.uuid4().hex[:6]}.",
        encoder="minilm", top_k=3, torch_threads=1,
    )
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        with EventProducer(settings) as producer:
            for i, title in enumerate(FILLER):
                producer.item(Item(f"f{i:02d}", title=title))
            producer.item(SEEN)
        _wait_cached(read_until, settings, SEEN.item_id.encode(), 1)
        with EventProducer(settings) as producer:  # the new item arrives while serving
            producer.item(NEW)
            producer.item(NEW)  # same content again: must not be re-encoded
        _wait_cached(read_until, settings, NEW.item_id.encode(), 1)
        with EventProducer(settings) as producer:
            producer.interaction(Interaction("e1", "fan", SEEN.item_id, "click", 1.0, time.time()))
        recs = [json.loads(v) for _, v in consume(
            settings, settings.topic("recommendations"), idle_timeout_s=10, max_messages=1,
            deadline_s=60)]
        changed = Item(NEW.item_id, title=NEW.title + " (director's cut)", text=NEW.text)
        with EventProducer(settings) as producer:
            producer.item(changed)
        keys = _wait_cached(read_until, settings, NEW.item_id.encode(), 2)
    finally:
        worker.stop()
    assert "Traceback" not in worker.tail(200000), worker.tail()
    assert len(recs) == 1 and recs[0]["source_event_id"] == "e1"
    top = [i["item_id"] for i in recs[0]["items"]]
    assert top[0] == NEW.item_id, recs[0]
    assert recs[0]["items"][0]["why"] == "content"
    assert keys.count(NEW.item_id.encode()) == 2  # once for the text, once for the changed text
    assert keys.count(SEEN.item_id.encode()) == 1
