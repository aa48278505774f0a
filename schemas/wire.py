"""Kindling's wire format: versioned JSON records and their strict validation.

Every decoder takes the raw bytes of a Kafka message and returns a typed record or raises
:class:`~schemas.errors.SchemaError` with a reason a human can act on. Nothing here raises any
other exception for bad input, which is what lets a worker route bad messages to the dead-letter
topic instead of crashing.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import orjson

from schemas.errors import SchemaError

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 16 * 1024
MAX_NESTING = 8
MAX_DLQ_ORIGINAL_BYTES = MAX_PAYLOAD_BYTES  # at most ~6x this once JSON-escaped: < 1 MB
MAX_DLQ_KEY_BYTES = 1024
MAX_DLQ_REASON_CHARS = 1000
MAX_VALUE = 1e30  # |value| bound, inside float32 range (engine/support.py stores float32)
KINDS = ("view", "click", "rate", "purchase", "skip")
WHY = ("exploit", "explore", "content", "popular")


@dataclass(frozen=True, slots=True)
class RatingScale:
    """Valid rating range; ratings outside it are rejected, inside it map to [0, 1]."""

    low: float = 0.0
    high: float = 5.0

    def to_unit(self, value: float) -> float:
        return (value - self.low) / (self.high - self.low)


DEFAULT_SCALE = RatingScale()


@dataclass(frozen=True, slots=True)
class Interaction:
    event_id: str
    user_id: str
    item_id: str
    kind: str
    value: float = 1.0
    ts: float = 0.0
    domain: str = "default"
    context: dict[str, Any] = field(default_factory=dict)

    def reward(self, scale: RatingScale = DEFAULT_SCALE) -> float:
        """The event as a reward in [0, 1]: click/purchase 1, skip 0, view 0.5 unless a value in
        [0, 1] is given, rating rescaled by ``scale``."""
        if self.kind == "rate":
            return scale.to_unit(self.value)
        if self.kind == "skip":
            return 0.0
        if self.kind == "view":
            return self.value if 0.0 <= self.value <= 1.0 else 0.5
        return 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "kind": self.kind,
            "value": self.value,
            "ts": self.ts,
            "domain": self.domain,
            "context": self.context,
        }


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    domain: str = "default"
    title: str = ""
    text: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "item_id": self.item_id,
            "domain": self.domain,
            "title": self.title,
            "text": self.text,
            "attributes": self.attributes,
        }

    def content(self) -> str:
        """The text a content encoder reads: title, text and attribute values."""
        parts = [self.title, self.text]
        for key in sorted(self.attributes):
            value = self.attributes[key]
            if isinstance(value, list):
                value = " ".join(str(v) for v in value)
            parts.append(f"{key}: {value}")
        return ". ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "user_id": self.user_id, "attributes": self.attributes}


@dataclass(frozen=True, slots=True)
class RecItem:
    item_id: str
    score: float
    why: str = "exploit"
    propensity: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "score": round(self.score, 6),
            "why": self.why,
            "propensity": round(self.propensity, 6),
        }


class RankedItems(Sequence[RecItem]):
    """A recommendation's items as columns: ids, scores, whys and propensities (None: all 1.0).

    The worker ranks a whole micro-batch at once and builds these from its arrays without an
    object per item; the encoder reads the columns directly. It is a sequence of
    :class:`RecItem` (made on access) and compares equal to the tuple of the same items."""

    __slots__ = ("ids", "scores", "whys", "propensities", "rounded")

    def __init__(self, ids: Sequence[str], scores: Sequence[float], whys: Sequence[str],
                 propensities: Sequence[float] | None = None, *, rounded: bool = False) -> None:
        if not len(ids) == len(scores) == len(whys) or (
                propensities is not None and len(propensities) != len(ids)):
            raise ValueError("ids, scores, whys (and propensities) must have one length")
        self.ids, self.scores, self.whys = ids, scores, whys
        self.propensities = propensities
        # True: the scores are already rounded to the wire's 6 decimals (the ranker rounds a
        # whole batch at once), so the encoder writes them as they are.
        self.rounded = rounded

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> RecItem: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[RecItem, ...]: ...

    def __getitem__(self, index: int | slice) -> RecItem | tuple[RecItem, ...]:
        if isinstance(index, slice):
            return tuple(self)[index]
        p = 1.0 if self.propensities is None else self.propensities[index]
        return RecItem(self.ids[index], self.scores[index], self.whys[index], p)

    def __iter__(self) -> Iterator[RecItem]:
        props = self.propensities or (1.0,) * len(self.ids)
        for item in zip(self.ids, self.scores, self.whys, props, strict=True):
            yield RecItem(*item)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RankedItems | tuple | list):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"RankedItems({tuple(self)!r})"


@dataclass(frozen=True, slots=True)
class Recommendation:
    user_id: str
    items: Sequence[RecItem]  # a tuple, or RankedItems (columns) from the ranker
    model_version: str
    source_event_id: str
    produced_at: float = field(default_factory=time.time)
    # The domain ranked, set on answers to a RecommendationRequest. Written only when set, so
    # event-driven recommendations keep their exact bytes and older readers see nothing new.
    domain: str = ""

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "v": SCHEMA_VERSION,
            "user_id": self.user_id,
            "items": [i.to_dict() for i in self.items],
            "model_version": self.model_version,
            "source_event_id": self.source_event_id,
            "produced_at": self.produced_at,
        }
        if self.domain:
            doc["domain"] = self.domain
        return doc

    def item_ids(self) -> list[str]:
        if type(self.items) is RankedItems:
            return list(self.items.ids)
        return [i.item_id for i in self.items]


@dataclass(frozen=True, slots=True)
class RecommendationRequest:
    """Ask for a ranking in ``domain`` without adding an event (``requests`` topic, keyed by
    user id). What lets a user whose history is all in a source domain be served a mapped
    target-domain list: event-driven recommendations follow the triggering event's domain.
    The answer is a :class:`Recommendation` whose ``source_event_id`` is ``request_id``."""

    request_id: str
    user_id: str
    domain: str = "default"
    requested_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "request_id": self.request_id,
            "user_id": self.user_id,
            "domain": self.domain,
            "requested_at": self.requested_at,
        }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message: the original bytes (as latin-1 text, lossless), where it came from and
    why it was rejected.

    The copy of the original is cut at :data:`MAX_DLQ_ORIGINAL_BYTES` (key: ``MAX_DLQ_KEY_BYTES``):
    a rejected message may be as large as the broker allows, and JSON-escaping latin-1 can grow
    it six-fold, so an uncut copy could exceed the broker's message limit and fail the very send
    that keeps the worker going. ``original_bytes`` keeps the true size.
    """

    reason: str
    topic: str
    partition: int
    offset: int
    original: bytes
    key: bytes | None = None
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "reason": self.reason[:MAX_DLQ_REASON_CHARS],  # reasons may quote the input
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "original_latin1": self.original[:MAX_DLQ_ORIGINAL_BYTES].decode("latin-1"),
            "original_bytes": len(self.original),
            "truncated": len(self.original) > MAX_DLQ_ORIGINAL_BYTES,
            "key_latin1": None if self.key is None
            else self.key[:MAX_DLQ_KEY_BYTES].decode("latin-1"),
            "at": self.at,
        }


# ----------------------------------------------------------------------------------- decoding


def _load(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None:
        raise SchemaError("empty message (no value)")
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise SchemaError(f"payload must be bytes, got {type(raw).__name__}")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise SchemaError(f"payload is {len(raw)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")
    # orjson first (~1.4 us for an event vs ~7.6 us for json): it accepts a subset of what the
    # standard parser accepts and gives the same objects, with one exception handled below. Any
    # payload it refuses (not UTF-8, NaN, lone surrogate escapes, a BOM, 1e400, depth > 1024...)
    # goes through the standard parser, so each dead-letter reason is the one it always was.
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = _load_standard(raw)
    else:
        if _needs_standard_parser(doc):
            doc = _load_standard(raw)
    if not isinstance(doc, dict):
        raise SchemaError(f"top level must be a JSON object, got {type(doc).__name__}")
    version = doc.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise SchemaError(
            f"unsupported schema version {version!r} (expected {SCHEMA_VERSION})", "v"
        )
    return doc


# A float of at least this magnitude may be an integer literal that overflowed 64 bits, which
# orjson reads as a float and json as an exact int (an id 12345678901234567890123 must stay one).
_HUGE = float(2**63)
# Deeper documents go to json, whose recursion limit (~1,000, less the caller's stack) is what
# rejected them before; orjson's own limit is 1,024.
_DEEP = 200


def _needs_standard_parser(doc: Any) -> bool:
    """Whether orjson's ``doc`` may differ from what json gives: a float of magnitude >= 2**63
    anywhere, or containers nested deeper than ``_DEEP`` levels. Iterative: no recursion."""
    if type(doc) is not dict:
        if type(doc) is not list:
            return type(doc) is float and not -_HUGE < doc < _HUGE
        doc = {"": doc}
    nested = []
    for child in doc.values():  # the flat top level of an event: no stack
        kind = type(child)
        if kind is float:
            if not -_HUGE < child < _HUGE:
                return True
        elif kind is dict or kind is list:
            if child:
                nested.append((child, 2))
    while nested:
        value, depth = nested.pop()
        for child in value.values() if type(value) is dict else value:
            kind = type(child)
            if kind is float:
                if not -_HUGE < child < _HUGE:
                    return True
            elif kind is dict or kind is list:
                if depth >= _DEEP:
                    return True
                nested.append((child, depth + 1))
    return False


def _load_standard(raw: bytes | bytearray | memoryview) -> Any:
    """The standard library's parser, and a readable reason for whatever it refuses."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"payload is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except SchemaError:
        raise
    except RecursionError:
        raise SchemaError("JSON nested too deeply") from None
    except ValueError as exc:
        raise SchemaError(f"not JSON: {exc}") from None
    return doc


def _reject_constant(name: str) -> float:
    raise SchemaError(f"non-finite number {name} is not allowed")


def _id(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if value is None:
        raise SchemaError("missing", name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SchemaError(f"must be a string, got {type(value).__name__}", name)
    text = str(value).strip()
    if not text:
        raise SchemaError("must not be empty", name)
    if len(text) > MAX_ID_CHARS:
        raise SchemaError(f"longer than {MAX_ID_CHARS} characters", name)
    if _CONTROL.search(text):
        raise SchemaError("contains control characters", name)
    _check_unicode(text, name)
    return text


# Compiled character classes: these checks run on every id of every event (a per-character
# Python loop cost ~10 us per interaction).
_CONTROL = re.compile("[\x00-\x1f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_unicode(text: str, name: str) -> None:
    """Reject lone surrogates: ``json.loads`` turns a ``"\\ud800"`` escape into one, it passes
    every other check, then crashes the first UTF-8 encode downstream (event hashes, the
    support-set codec, the recommendation's own encoding)."""
    found = _SURROGATE.search(text)
    if found:
        raise SchemaError(
            f"contains a lone surrogate U+{ord(found.group()):04X} (an invalid \\u escape)", name
        )


def _text(doc: dict[str, Any], name: str, default: str = "") -> str:
    value = doc.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise SchemaError(f"must be a string, got {type(value).__name__}", name)
    if len(value) > MAX_TEXT_CHARS:
        raise SchemaError(f"longer than {MAX_TEXT_CHARS} characters", name)
    _check_unicode(value, name)
    return value


def _number(doc: dict[str, Any], name: str, default: float, limit: float = sys.float_info.max
            ) -> float:
    value = doc.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"must be a number, got {type(value).__name__}", name)
    try:
        number = float(value)
    except OverflowError:  # a JSON integer with hundreds of digits
        raise SchemaError("integer too large", name) from None
    if not math.isfinite(number):
        raise SchemaError("must be finite", name)
    if abs(number) > limit:
        raise SchemaError(f"magnitude over {limit:.3g}", name)
    return number


def _mapping(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SchemaError(f"must be an object, got {type(value).__name__}", name)
    _check_depth(value, name, 1)
    return value


def _check_depth(value: Any, name: str, depth: int) -> None:
    if depth > MAX_NESTING:
        raise SchemaError(f"nested deeper than {MAX_NESTING} levels", name)
    if isinstance(value, dict):
        for key, child in value.items():
            _check_unicode(key, name)
            _check_depth(child, name, depth + 1)
    elif isinstance(value, list):
        for child in value:
            _check_depth(child, name, depth + 1)
    elif isinstance(value, str):
        _check_unicode(value, name)
    elif isinstance(value, float) and not math.isfinite(value):
        raise SchemaError("contains a non-finite number", name)


def decode_interaction(raw: bytes | str | None, scale: RatingScale = DEFAULT_SCALE) -> Interaction:
    doc = _load(raw)
    kind = doc.get("kind")
    if not isinstance(kind, str):
        raise SchemaError("missing or not a string" if kind is None else "must be a string", "kind")
    if kind not in KINDS:
        raise SchemaError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}", "kind")
    default_value = 0.0 if kind == "skip" else 1.0
    if kind == "rate" and "value" not in doc:
        raise SchemaError("a rating needs a value", "value")
    # The support-set codec stores values as float32: a larger finite value would crash it.
    value = _number(doc, "value", default_value, MAX_VALUE)
    if kind == "rate" and not scale.low <= value <= scale.high:
        raise SchemaError(f"rating {value} outside [{scale.low}, {scale.high}]", "value")
    ts = _number(doc, "ts", time.time())
    if ts < 0:
        raise SchemaError("must not be negative", "ts")
    return Interaction(
        event_id=_id(doc, "event_id"),
        user_id=_id(doc, "user_id"),
        item_id=_id(doc, "item_id"),
        kind=kind,
        value=value,
        ts=ts,
        domain=_id(doc, "domain") if "domain" in doc else "default",
        context=_mapping(doc, "context"),
    )


def decode_item(raw: bytes | str | None) -> Item:
    doc = _load(raw)
    return Item(
        item_id=_id(doc, "item_id"),
        domain=_id(doc, "domain") if "domain" in doc else "default",
        title=_text(doc, "title"),
        text=_text(doc, "text"),
        attributes=_mapping(doc, "attributes"),
    )


def decode_user(raw: bytes | str | None) -> User:
    doc = _load(raw)
    return User(user_id=_id(doc, "user_id"), attributes=_mapping(doc, "attributes"))


def decode_recommendation(raw: bytes | str | None) -> Recommendation:
    doc = _load(raw)
    items = doc.get("items")
    if not isinstance(items, list):
        raise SchemaError("must be a list", "items")
    parsed = []
    for entry in items:
        if not isinstance(entry, dict):
            raise SchemaError("entries must be objects", "items")
        why = entry.get("why", "exploit")
        if why not in WHY:
            raise SchemaError(f"unknown why {why!r}", "items.why")
        parsed.append(
            RecItem(
                item_id=_id(entry, "item_id"),
                score=_number(entry, "score", 0.0),
                why=why,
                propensity=_number(entry, "propensity", 1.0),
            )
        )
    return Recommendation(
        user_id=_id(doc, "user_id"),
        items=tuple(parsed),
        model_version=_text(doc, "model_version"),
        source_event_id=_text(doc, "source_event_id"),
        produced_at=_number(doc, "produced_at", 0.0),
        domain=_id(doc, "domain") if "domain" in doc else "",
    )


def decode_request(raw: bytes | str | None) -> RecommendationRequest:
    doc = _load(raw)
    requested_at = _number(doc, "requested_at", time.time())
    if requested_at < 0:
        raise SchemaError("must not be negative", "requested_at")
    return RecommendationRequest(
        request_id=_id(doc, "request_id"),
        user_id=_id(doc, "user_id"),
        domain=_id(doc, "domain") if "domain" in doc else "default",
        requested_at=requested_at,
    )


def encode(
    record: Interaction | Item | User | Recommendation | RecommendationRequest | DeadLetter,
) -> bytes:
    """Serialise a record to compact UTF-8 JSON (never NaN: the records are validated)."""
    if type(record) is Recommendation:
        fast = _encode_recommendation(record)
        if fast is not None:
            return fast
    return json.dumps(record.to_dict(), separators=(",", ":"), allow_nan=False).encode("utf-8")


_json_str = json.encoder.encode_basestring_ascii  # what json.dumps uses for str (C)


def _encode_recommendation(rec: Recommendation) -> bytes | None:
    """The bytes ``json.dumps(rec.to_dict(), separators=(",", ":"))`` gives, built directly: a
    recommendation is encoded for every event and the generic path (a dict per item, then the
    encoder) took ~23 us of them. None (use the generic path) for a non-finite number; a test
    checks both paths agree on random records."""
    parts = []
    isfinite = math.isfinite
    items = rec.items
    if (type(items) is RankedItems and items.rounded and items.propensities is None
            and isfinite(sum(items.scores))):  # a NaN or inf anywhere makes the sum one
        parts = [f'{{"item_id":{_json_str(i)},"score":{s!r},"why":{_json_str(w)},'
                 f'"propensity":1.0}}' for i, s, w in zip(items.ids, items.scores, items.whys,
                                                          strict=True)]
        columns: Iterable[tuple[str, float, str, float]] = ()
    elif type(items) is RankedItems:  # the columns as they are: no object per item
        props = items.propensities or (1.0,) * len(items.ids)
        columns = zip(items.ids, items.scores, items.whys, props, strict=True)
    else:
        columns = ((i.item_id, i.score, i.why, i.propensity) for i in items)
    for item_id, score, why, propensity in columns:
        score, propensity = round(score, 6), round(propensity, 6)
        if not (isfinite(score) and isfinite(propensity)):
            return None
        parts.append(f'{{"item_id":{_json_str(item_id)},"score":{score!r},'
                     f'"why":{_json_str(why)},"propensity":{propensity!r}}}')
    if not isfinite(rec.produced_at):
        return None
    domain = f',"domain":{_json_str(rec.domain)}' if rec.domain else ""
    return (f'{{"v":{SCHEMA_VERSION},"user_id":{_json_str(rec.user_id)},'
            f'"items":[{",".join(parts)}],"model_version":{_json_str(rec.model_version)},'
            f'"source_event_id":{_json_str(rec.source_event_id)},'
            f'"produced_at":{rec.produced_at!r}{domain}}}').encode()
