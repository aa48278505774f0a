"""Fuzzing the wire → serving → wire path, in process, with the objects the worker uses.

The property: for any bytes on the ``interactions``, ``items`` or ``users`` topic, decoding,
:meth:`engine.recommender.Recommender.apply`, :meth:`~engine.recommender.Recommender.rank` and
:func:`schemas.encode` never raise anything but :class:`~schemas.errors.SchemaError` on input,
every ``SchemaError`` carries a non-empty reason, and the :class:`~schemas.DeadLetter` built from
it encodes. Any other exception is a *crash* and is recorded with the payload that caused it.

The case generator is hand-written (seeded ``random.Random``) rather than Hypothesis because the
``kindling fuzz`` command must run 100,000+ cases in a couple of minutes and mix them into a
throughput measurement; the test suite adds Hypothesis strategies on top of the same harness
(``tests/ops/test_ops_fuzz.py``). Categories cover random bytes, byte-level mutations of
valid events, wrong types, huge payloads, deep nesting, odd unicode (lone surrogates, NUL, RTL,
emoji, combining marks, BOM, line separators), NaN/inf and out-of-range numbers.
"""

from __future__ import annotations

import json
import random
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.bundle import ModelBundle
from engine.recommender import Recommender
from engine.settings import Settings
from engine.trainer import learner_config
from evaluation.synthetic import generate
from schemas import (
    DeadLetter,
    Interaction,
    Item,
    SchemaError,
    decode_interaction,
    decode_item,
    decode_recommendation,
    decode_user,
    encode,
)
from schemas.wire import MAX_PAYLOAD_BYTES, RatingScale

TOPICS = ("interactions", "items", "users")
MAX_DLQ_MESSAGE_BYTES = 1_000_000  # Kafka's default message.max.bytes is 1,048,588
Case = tuple[str, str, bytes]  # (category, topic, payload)

ODD_STRINGS = (
    "\ud800", "\udfff", "a\ud83d", "\ud83d\ude00",  # lone and paired surrogates
    "nul\x00byte", "\x7f", "\u202eevil\u202c",  # NUL, DEL, right-to-left override
    "\u05e9\u05dc\u05d5\u05dd", "\u0645\u0631\u062d\u0628\u0627",  # Hebrew, Arabic (RTL)
    "\U0001f600", "\U0001f3f3\ufe0f\u200d\U0001f308",  # emoji, ZWJ sequence
    "\U0001f469\u200d\U0001f469\u200d\U0001f467", "e\u0301", "a" + "\u0301" * 200,  # combining
    "\ufeffbom", "\u2028\u2029", "\U0010ffff", "\ufffd", "\u200b",
    "Z\u0335\u0321\u0358a\u0336\u0322lgo", " ", "", "  x  ", "\t",
    "i" * 300, "\u00e9" * 256, "\U0001f600" * 256, "NaN", "null", "0", "-1", "1e309",
)
WRONG_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 2**64, 10**400, 1e308, -1e308, 3.5e38, 1e-320, "x", "", [], {},
    [1, [2, [3]]], {"a": {"b": None}}, "\ud800", 0.5,
)
NONFINITE_LITERALS = (b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-1e400")
FIELDS = ("v", "event_id", "user_id", "item_id", "kind", "value", "ts", "domain", "context")


@dataclass
class FuzzResult:
    cases: int = 0
    good: int = 0
    dead_letters: int = 0
    recommendations: int = 0
    items: int = 0
    users: int = 0
    crashes: list[dict[str, Any]] = field(default_factory=list)
    by_category: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "crashes": len(self.crashes),
            "dead_letters": self.dead_letters,
            "good_events": self.good,
            "recommendations": self.recommendations,
            "items_upserted": self.items,
            "user_profiles": self.users,
            "seconds": round(self.seconds, 3),
            "cases_per_s": round(self.cases / self.seconds, 1) if self.seconds else None,
            "by_category": dict(sorted(self.by_category.items())),
            "top_reasons": dict(self.reasons.most_common(12)),
            "first_crashes": self.crashes[:5],
        }


class FuzzHarness:
    """The worker's per-batch logic (decode → apply → rank → encode, dead letters for bad input)
    on in-memory state: a dict for the ``supports`` table, a dict for the ``users`` table."""

    def __init__(self, settings: Settings | None = None, *, seed: int = 0, n_items: int = 200):
        self.settings = settings or Settings()
        self.scale = RatingScale(self.settings.rating_low, self.settings.rating_high)
        torch.manual_seed(seed)
        self.bundle = ModelBundle.untrained(self.settings.learner, learner_config(self.settings))
        self.data = generate(n_users=200, n_items=n_items, events_per_user=(5, 15), seed=seed)
        self.supports: dict[str, bytes] = {}
        self.profiles: dict[str, bytes] = {}
        self._offset = 0
        self.reset_state()

    def reset_state(self) -> None:
        """Empty tables and a fresh catalog of the synthetic items (fuzzed items and ids gone)."""
        self.recommender = Recommender(self.settings, self.bundle)
        self.recommender.catalog.upsert(self.data.items)
        self.supports.clear()
        self.profiles.clear()

    def _profile_of(self, user_id: str) -> dict[str, Any] | None:
        raw = self.profiles.get(user_id)
        return json.loads(raw) if raw else None

    def _dead_letter(self, topic: str, raw: bytes, exc: SchemaError) -> bytes:
        if not exc.reason or not str(exc):
            raise AssertionError(f"SchemaError without a reason for {raw[:80]!r}")
        self._offset += 1
        letter = encode(DeadLetter(exc.describe(), topic, 0, self._offset, raw, raw[:2000]))
        if len(letter) > MAX_DLQ_MESSAGE_BYTES:
            raise AssertionError(f"dead letter of {len(letter)} bytes would not fit in Kafka")
        return letter

    def process(self, batch: Sequence[Case], result: FuzzResult) -> None:
        """One micro-batch, exactly as the worker's agents treat it."""
        events = []
        sources: list[Case] = []
        for case in batch:
            category, topic, raw = case
            result.cases += 1
            result.by_category[category] += 1
            try:
                try:
                    if topic == "interactions":
                        events.append(decode_interaction(raw, self.scale))
                        sources.append(case)
                        result.good += 1
                    elif topic == "items":
                        item = decode_item(raw)
                        encode(item)  # the worker writes it to the catalog table
                        self.recommender.catalog.upsert([item])
                        result.items += 1
                    else:
                        user = decode_user(raw)
                        self.profiles[user.user_id] = json.dumps(user.attributes).encode()
                        result.users += 1
                except SchemaError as exc:
                    self._dead_letter(topic, raw, exc)
                    result.dead_letters += 1
                    result.reasons[_reason_class(exc)] += 1
            except Exception as exc:  # noqa: BLE001 - the fuzzer's job is to record these
                result.crashes.append(_crash(case, exc))
        if not events:
            return
        try:
            # As the worker: the batch's good events applied together (one table read and write
            # per user), then ranked together.
            snaps = self.recommender.apply_batch(events, self.supports)
            recs = self.recommender.rank(snaps, self._profile_of)
            for rec in recs:
                decode_recommendation(encode(rec))  # output is valid wire format
            result.recommendations += len(recs)
            if len(recs) != len(snaps):
                raise AssertionError(f"{len(snaps)} events ranked into {len(recs)} recommendations")
        except Exception as exc:  # noqa: BLE001
            result.crashes.append(_crash(sources[0], exc, batch_of=len(sources)))

    def run(self, cases: Iterable[Case], batch_max: int | None = None) -> FuzzResult:
        batch_max = batch_max or self.settings.batch_max
        result = FuzzResult()
        started = time.perf_counter()
        batch: list[Case] = []
        for case in cases:
            batch.append(case)
            if len(batch) >= batch_max:
                self.process(batch, result)
                batch = []
        if batch:
            self.process(batch, result)
        result.seconds = time.perf_counter() - started
        return result

    # ------------------------------------------------------------------ generators
    def good_events(self, n: int, tag: str = "") -> list[Case]:
        """``n`` valid interactions (synthetic users, unique event ids) as wire bytes."""
        events = self.data.events
        out = []
        for i in range(n):
            e = events[i % len(events)]
            fresh = Interaction(f"{e.event_id}#{tag}{i}", e.user_id, e.item_id, e.kind, e.value,
                                e.ts, e.domain, e.context)
            out.append(("good", "interactions", encode(fresh)))
        return out

    def cases(self, n: int, seed: int = 0) -> Iterator[Case]:
        """``n`` fuzz cases, every category in turn with a seeded choice inside it."""
        rng = random.Random(seed)
        makers = CaseMaker(rng, self.data.events, self.data.items)
        generators = makers.all()
        for i in range(n):
            name, make = generators[i % len(generators)]
            topic, raw = make()
            yield name, topic, raw


class CaseMaker:
    """Seeded generators of hostile payloads, one method per category."""

    def __init__(self, rng: random.Random, events: Sequence[Interaction], items: Sequence[Item]):
        self.rng = rng
        self.events = events
        self.items = items
        self.n = 0

    def all(self) -> list[tuple[str, Callable[[], tuple[str, bytes]]]]:
        return [
            ("random_bytes", self.random_bytes),
            ("mutated", self.mutated),
            ("wrong_type", self.wrong_type),
            ("odd_unicode", self.odd_unicode),
            ("nonfinite", self.nonfinite),
            ("deep", self.deep),
            ("huge", self.huge),
            ("structure", self.structure),
            ("item", self.item),
            ("user", self.user),
            ("odd_valid", self.odd_valid),
        ]

    def _event(self) -> dict[str, Any]:
        self.n += 1
        e = self.rng.choice(self.events)
        doc = e.to_dict()
        doc["event_id"] = f"fz{self.n}"
        return doc

    def _odd(self) -> str:
        return self.rng.choice(ODD_STRINGS)

    @staticmethod
    def _dump(doc: Any) -> bytes:
        return json.dumps(doc).encode("utf-8")

    def random_bytes(self) -> tuple[str, bytes]:
        size = self.rng.choice((0, 1, 2, 8, 64, 300, 300, 300, 300, 900_000))
        return self.rng.choice(TOPICS), self.rng.randbytes(size)

    def mutated(self) -> tuple[str, bytes]:
        raw = bytearray(self._dump(self._event()))
        for _ in range(self.rng.randint(1, 4)):
            pos = self.rng.randrange(len(raw))
            op = self.rng.random()
            if op < 0.4:
                raw[pos] = self.rng.randrange(256)
            elif op < 0.7:
                del raw[pos]
            else:
                raw.insert(pos, self.rng.choice(b'{}[]",:\\0e-.\x00\xff'))
        return "interactions", bytes(raw)

    def wrong_type(self) -> tuple[str, bytes]:
        doc = self._event()
        doc[self.rng.choice(FIELDS)] = self.rng.choice(WRONG_VALUES)
        return "interactions", self._dump(doc)

    def odd_unicode(self) -> tuple[str, bytes]:
        doc = self._event()
        name = self.rng.choice(("event_id", "user_id", "item_id", "domain", "context", "key"))
        if name == "context":
            doc["context"] = {"k": self._odd(), "l": [self._odd(), {"m": self._odd()}]}
        elif name == "key":
            doc["context"] = {self._odd(): 1}
        else:
            doc[name] = self._odd()
        raw = self._dump(doc)
        if self.rng.random() < 0.2:  # surrogates as raw (invalid UTF-8) bytes, not escapes
            raw = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
        return "interactions", raw

    def nonfinite(self) -> tuple[str, bytes]:
        doc = self._event()
        name = self.rng.choice(("value", "ts", "context"))
        doc[name] = "__X__" if name != "context" else {"x": ["__X__"]}
        literal = self.rng.choice(NONFINITE_LITERALS)
        return "interactions", self._dump(doc).replace(b'"__X__"', literal)

    def deep(self) -> tuple[str, bytes]:
        depth = self.rng.choice((5, 8, 9, 20, 100, 1000, 50_000))
        if depth > 100:
            opener, closer = self.rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
            body = opener * depth + b"1" + closer * depth
            return "interactions", b'{"kind":"view","user_id":"u","item_id":"i","event_id":"d",' \
                b'"context":{"x":' + body + b"}}"
        value: Any = 1
        for _ in range(depth):
            value = {"k": value} if self.rng.random() < 0.5 else [value]
        doc = self._event()
        doc["context"] = {"deep": value}
        return self.rng.choice(("interactions", "items", "users")), self._dump(
            doc | {"attributes": doc["context"]}
        )

    def huge(self) -> tuple[str, bytes]:
        doc = self._event()
        limit = MAX_PAYLOAD_BYTES
        size = self.rng.choice((limit - 300, limit + 1, 3 * limit, 14 * limit))
        what = self.rng.random()
        if what < 0.3:
            doc["context"] = {"blob": "x" * size}
        elif what < 0.6:
            doc["context"] = {f"k{i}": i for i in range(size // 12)}
        elif what < 0.8:
            doc[self.rng.choice(("user_id", "item_id", "event_id"))] = "u" * (size // 200)
        else:
            return "items", self._dump({"item_id": "big", "text": "w " * (size // 2)})
        return "interactions", self._dump(doc)

    def structure(self) -> tuple[str, bytes]:
        choice = self.rng.randrange(6)
        doc = self._event()
        if choice == 0:
            return "interactions", self._dump(self.rng.choice(([], [doc], "s", 1, None, True)))
        if choice == 1:
            del doc[self.rng.choice(("event_id", "user_id", "item_id", "kind"))]
        elif choice == 2:
            doc["v"] = self.rng.choice((0, 2, "1", None, 1.0, True))
        elif choice == 3:
            doc["kind"] = self.rng.choice(("rate", "like", "RATE", ""))
            doc["value"] = self.rng.choice((-1, 5.5, 100, 2.5))
        elif choice == 4:
            return "interactions", self._dump(doc)[: self.rng.randrange(1, 60)]
        else:
            return "interactions", self._dump(doc) + self.rng.choice((b"x", b"{}", b"\x00", b" "))
        return "interactions", self._dump(doc)

    def item(self) -> tuple[str, bytes]:
        base = self.rng.choice(self.items).to_dict()
        field_name = self.rng.choice(("item_id", "title", "text", "attributes", "domain"))
        if field_name == "attributes":
            base["attributes"] = self.rng.choice(
                ({self._odd(): self._odd()}, {"genres": [self._odd(), 1, None]}, [1], "x",
                 {"n": 1e308, "m": -0.0}, {"l": list(range(500))})
            )
        else:
            base[field_name] = self.rng.choice((self._odd(), self.rng.choice(WRONG_VALUES)))
        if field_name != "item_id" and self.rng.random() < 0.5:
            base["item_id"] = f"fz-item-{self.rng.randrange(50)}"  # a bounded set of new items
        return "items", self._dump(base)

    def user(self) -> tuple[str, bytes]:
        user = self.rng.choice(self.events).user_id
        attrs = self.rng.choice(
            ({self._odd(): self._odd()}, {"age": self.rng.choice(WRONG_VALUES)},
             {"tags": [self._odd()] * 3}, {"x": {"y": {"z": self._odd()}}}, [1], "x", None)
        )
        return "users", self._dump({"user_id": self.rng.choice((user, self._odd())),
                                    "attributes": attrs})

    def odd_valid(self) -> tuple[str, bytes]:
        """Valid events with hostile-looking but legal content: they must be *served*."""
        doc = self._event()
        doc["item_id"] = self.rng.choice((self._odd(), doc["item_id"]))
        doc["user_id"] = self.rng.choice((self._odd(), doc["user_id"], f"fz-user-{self.n % 97}"))
        doc["kind"] = self.rng.choice(("view", "click", "rate", "purchase", "skip"))
        doc["value"] = self.rng.choice((0.0, 1.0, 5.0, 0.5, -3.0, 1e30, 3e38, 1e39, 2**70, 1e-300))
        doc["ts"] = self.rng.choice((0, 1.5, 1e12, 1e300, 2**63))
        doc["domain"] = self.rng.choice(("default", "default", self._odd()))
        return "interactions", self._dump(doc)


def _rejected(raw: bytes, scale: RatingScale) -> bool:
    try:
        decode_interaction(raw, scale)
    except SchemaError:
        return True
    return False


def _reason_class(exc: SchemaError) -> str:
    """The reason without the variable part, for a readable histogram."""
    text = exc.describe()
    for sep in (" (", ": line", " at byte", " {", " '", " 0x", " U+"):
        text = text.split(sep)[0]
    return "".join("#" if c.isdigit() else c for c in text)[:60]


def _crash(case: Case, exc: BaseException, batch_of: int = 1) -> dict[str, Any]:
    category, topic, raw = case
    return {
        "category": category,
        "topic": topic,
        "payload": raw[:300].decode("latin-1"),
        "error": repr(exc)[:300],
        "batch_of": batch_of,
        "where": traceback.format_exception(exc)[-2].strip()[:300],
    }


def interleave(good: Sequence[Case], bad: Sequence[Case], bad_ratio: float) -> list[Case]:
    """``good`` in order with bad cases spread evenly so they make up ``bad_ratio`` of the whole
    (deterministic, so two runs see the same batches)."""
    if bad_ratio <= 0 or not bad:
        return list(good)
    n_bad = round(len(good) * bad_ratio / (1.0 - bad_ratio))
    out: list[Case] = []
    step = len(good) / max(n_bad, 1)
    b = 0
    for i, case in enumerate(good):
        while b < n_bad and b * step <= i:
            out.append(bad[b % len(bad)])
            b += 1
        out.append(case)
    return out


def throughput(harness: FuzzHarness, n_good: int, bad_ratio: float, repeats: int = 3,
               seed: int = 0) -> dict[str, Any]:
    """Good events/s with and without bad events mixed in (best of ``repeats``, fresh state
    each run, same good events in the same order).

    The bad events are fuzz cases for the interactions topic that the decoder rejects: the
    question is what dead-lettering costs the good traffic, not what serving more (odd but
    valid) events costs.
    """
    good = harness.good_events(n_good, tag="tp")
    bad = [c for c in harness.cases(max(1, n_good), seed=seed + 1)
           if c[1] == "interactions" and _rejected(c[2], harness.scale)]
    mixed = interleave(good, bad, bad_ratio)
    rates: dict[str, list[float]] = {"clean": [], "mixed": []}
    for _ in range(repeats):
        for name, stream in (("clean", good), ("mixed", mixed)):
            harness.reset_state()
            res = harness.run(stream)
            if res.crashes:
                raise AssertionError(f"crash during throughput run: {res.crashes[0]}")
            rates[name].append(n_good / res.seconds)
    clean, mixed_rate = max(rates["clean"]), max(rates["mixed"])
    return {
        "good_events": n_good,
        "bad_ratio": bad_ratio,
        "bad_events_mixed_in": len(mixed) - len(good),
        "repeats": repeats,
        "good_per_s_clean": round(clean, 1),
        "good_per_s_mixed": round(mixed_rate, 1),
        "ratio": round(mixed_rate / clean, 4),
        "runs_clean": [round(r, 1) for r in rates["clean"]],
        "runs_mixed": [round(r, 1) for r in rates["mixed"]],
    }


def run(settings: Settings, args: Any) -> int:
    """``kindling fuzz``: print cases, crashes, DLQ count and the throughput ratio."""
    torch.set_num_threads(max(1, settings.torch_threads))
    harness = FuzzHarness(settings, seed=settings.seed)
    result = harness.run(harness.cases(args.cases, seed=settings.seed))
    out: dict[str, Any] = {"fuzz": result.summary()}
    if args.throughput_events > 0:
        out["throughput"] = throughput(harness, args.throughput_events, args.bad_ratio,
                                       repeats=args.repeats, seed=settings.seed)
    out["ok"] = not result.crashes and (
        "throughput" not in out or out["throughput"]["ratio"] >= 0.9
    )
    if args.json:
        print(json.dumps(out), flush=True)
    else:
        f = out["fuzz"]
        print(f"cases run      {f['cases']:>10,}   ({f['cases_per_s']:,} cases/s)")
        print(f"crashes        {f['crashes']:>10,}")
        print(f"dead letters   {f['dead_letters']:>10,}")
        print(f"served events  {f['good_events']:>10,}   "
              f"-> {f['recommendations']:,} recommendations")
        for crash in f["first_crashes"]:
            print(f"  CRASH {crash['category']}: {crash['error']} at {crash['where']}")
        if "throughput" in out:
            t = out["throughput"]
            print(f"throughput     clean {t['good_per_s_clean']:,.0f} good ev/s, with "
                  f"{t['bad_ratio']:.0%} bad mixed in {t['good_per_s_mixed']:,.0f} good ev/s "
                  f"(ratio {t['ratio']:.3f})")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
    return 0 if out["ok"] else 1
