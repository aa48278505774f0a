"""Interaction logs and item catalogs from files: MovieLens in every release format, plus generic
CSV/JSONL with a column mapping.

Readers never crash on a bad row: the row is skipped, the reason is counted in a
:class:`ReadStats` and logged (the first few of each reason at WARNING, the rest at DEBUG).

Formats, detected from the file name
------------------------------------
=====================  =====================================================================
``ratings.csv``         MovieLens latest-small / 20M / 25M: ``userId,movieId,rating,timestamp``
``ratings.dat``         MovieLens 1M: ``UserID::MovieID::Rating::Timestamp``
``u.data``              MovieLens 100K: tab-separated ``user item rating timestamp``
``movies.csv``          ``movieId,title,genres`` (genres ``|``-separated)
``movies.dat``          ``MovieID::Title::Genres`` (latin-1)
``u.item``              ``|``-separated, 19 genre flags (genre names from a sibling ``u.genre``)
``tags.csv``            ``userId,movieId,tag,timestamp``: distinct tags appended to item text
``<domain>_ratings.dat``  Douban (GA-DTCDR release): tab-separated ``user item rating``, no
                        header, no timestamps: the row order is the time order (``ts`` = line
                        number); item ids become ``<domain>:<item>`` (ids are per domain)
other ``*.csv``         generic CSV, columns named by ``mapping`` (default: the wire names)
``*.jsonl``/``*.json``  generic JSON lines, keys named by ``mapping``
=====================  =====================================================================

Every log event gets a deterministic id ``f"{source_name}:{line_no}"`` (``source_name``
defaults to the file name, ``line_no`` is the 1-based physical line of the row) and logs are
returned sorted by timestamp (stable: ties keep file order).

Examples
--------
>>> log = read_log("ml-latest-small/ratings.csv")          # doctest: +SKIP
>>> catalog = read_items(items_beside("ml-latest-small/ratings.csv"))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import DEFAULT_SCALE, KINDS, Interaction, Item, RatingScale
from schemas.wire import MAX_ID_CHARS, MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

#: Wire field names a generic mapping may name; ``user_id`` and ``item_id`` are required.
MAPPABLE = ("user_id", "item_id", "value", "ts", "kind", "event_id", "domain")
#: Item catalog files looked for beside a log, in order of preference.
ITEM_FILES = ("movies.csv", "movies.dat", "u.item", "items.jsonl", "items.csv")
MAX_TAGS_PER_ITEM = 50
_WARN_PER_REASON = 5
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


class BadRow(ValueError):
    """A row that cannot be turned into a record; its message is the counted reason."""


@dataclass
class ReadStats:
    """What a reader did: rows seen, records produced, rows skipped by reason."""

    source: str = ""
    rows: int = 0
    ok: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, line_no: int, reason: str) -> None:
        self.skipped[reason] += 1
        level = logging.WARNING if self.skipped[reason] <= _WARN_PER_REASON else logging.DEBUG
        log.log(level, "%s line %d skipped: %s", self.source, line_no, reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "ok": self.ok,
            "skipped": dict(self.skipped),
        }


@dataclass
class LogRead:
    """A time-ordered interaction log and the counts of how it was read. Iterable."""

    events: list[Interaction]
    stats: ReadStats

    def __iter__(self) -> Iterator[Interaction]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


@dataclass
class ItemsRead:
    """An item catalog and the counts of how it was read. Iterable."""

    items: list[Item]
    stats: ReadStats

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


# ------------------------------------------------------------------------------ field parsing


def _ident(raw: Any, name: str) -> str:
    if raw is None or isinstance(raw, bool | dict | list):
        raise BadRow(f"bad {name}")
    text = str(raw).strip()
    if not text:
        raise BadRow(f"empty {name}")
    if any(ord(c) < 32 for c in text):
        raise BadRow(f"control characters in {name}")
    # The same limits as the wire format: replay feeds these straight to the serving path.
    if len(text) > MAX_ID_CHARS:
        raise BadRow(f"{name} longer than {MAX_ID_CHARS} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRow(f"lone surrogate in {name}") from None
    return text


def _float(raw: Any, name: str) -> float:
    if isinstance(raw, bool):
        raise BadRow(f"non-numeric {name}")
    try:
        value = float(str(raw).strip()) if not isinstance(raw, int | float) else float(raw)
    except ValueError:
        raise BadRow(f"non-numeric {name}") from None
    if not math.isfinite(value):
        raise BadRow(f"non-finite {name}")
    return value


def _event(
    source: str,
    line_no: int,
    user: Any,
    item: Any,
    value: Any,
    ts: Any,
    *,
    kind: str = "rate",
    domain: str = "default",
    event_id: Any = None,
    scale: RatingScale = DEFAULT_SCALE,
) -> Interaction:
    if kind not in KINDS:
        raise BadRow("unknown kind")
    number = (0.0 if kind == "skip" else 1.0) if value is None else _float(value, "value")
    if kind == "rate" and value is None:
        raise BadRow("rating without a value")
    if kind == "rate" and not scale.low <= number <= scale.high:
        raise BadRow("rating out of range")
    when = float(line_no) if ts is None else _float(ts, "timestamp")
    if when < 0:
        raise BadRow("negative timestamp")
    return Interaction(
        event_id=f"{source}:{line_no}" if event_id is None else _ident(event_id, "event_id"),
        user_id=_ident(user, "user id"),
        item_id=_ident(item, "item id"),
        kind=kind,
        value=number,
        ts=when,
        domain=domain,
    )


# ------------------------------------------------------------------------------ log formats


def _split_rows(path: Path, sep: str, encoding: str, header: bool) -> Iterator[tuple[int, list]]:
    with path.open(encoding=encoding, errors="replace", newline="") as fh:
        for line_no, line in enumerate(fh, start=1):
            if header and line_no == 1:
                continue
            line = line.rstrip("\r\n")
            if line.strip():
                yield line_no, line.split(sep)


def _csv_rows(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, str]]]:
    """``(line_no, row)`` per data row; ``line_no`` is the physical line the row ends on (its
    only line, except for quoted fields spanning lines)."""
    with path.open(encoding=encoding, errors="replace", newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            yield reader.line_num, row


def _movielens_log(
    path: Path, source: str, stats: ReadStats, scale: RatingScale, domain: str
) -> Iterator[Interaction]:
    name = path.name.lower()
    if name.endswith(".csv"):
        rows: Iterable[tuple[int, list]] = (
            (n, [r.get("userId"), r.get("movieId"), r.get("rating"), r.get("timestamp")])
            for n, r in _csv_rows(path)
        )
    elif name.endswith(".dat"):
        rows = _split_rows(path, "::", "latin-1", header=False)
    else:
        rows = _split_rows(path, "\t", "latin-1", header=False)
    for line_no, cols in rows:
        stats.rows += 1
        try:
            if len(cols) != 4 or any(c is None for c in cols):
                raise BadRow(f"expected 4 fields, got {sum(c is not None for c in cols)}")
            user, item, rating, ts = cols
            yield _event(source, line_no, user, item, rating, ts, scale=scale, domain=domain)
            stats.ok += 1
        except BadRow as exc:
            stats.skip(line_no, str(exc))


def _generic_records(path: Path, stats: ReadStats) -> Iterator[tuple[int, Mapping[str, Any]]]:
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                if len(line) > MAX_PAYLOAD_BYTES:  # a wire message's limit, per JSONL record
                    stats.rows += 1
                    stats.skip(line_no, "line too long")
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    stats.rows += 1
                    stats.skip(line_no, "not JSON")
                    continue
                if not isinstance(doc, dict):
                    stats.rows += 1
                    stats.skip(line_no, "not a JSON object")
                    continue
                yield line_no, doc
    else:
        yield from _csv_rows(path)


def _generic_log(
    path: Path,
    source: str,
    stats: ReadStats,
    mapping: Mapping[str, str],
    default_kind: str,
    scale: RatingScale,
    domain: str,
) -> Iterator[Interaction]:
    cols = {name: mapping.get(name, name) for name in MAPPABLE}
    for line_no, rec in _generic_records(path, stats):
        stats.rows += 1
        try:
            kind = rec.get(cols["kind"]) or default_kind
            yield _event(
                source,
                line_no,
                rec.get(cols["user_id"]),
                rec.get(cols["item_id"]),
                _blank_to_none(rec.get(cols["value"])),
                _blank_to_none(rec.get(cols["ts"])),
                kind=str(kind).strip().lower(),
                domain=str(rec.get(cols["domain"]) or domain),
                event_id=_blank_to_none(rec.get(cols["event_id"])),
                scale=scale,
            )
            stats.ok += 1
        except BadRow as exc:
            stats.skip(line_no, str(exc))


def _blank_to_none(value: Any) -> Any:
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _douban_ratings(
    path: Path, source: str, stats: ReadStats, scale: RatingScale, domain: str
) -> Iterator[Interaction]:
    """Douban ``<domain>_ratings.dat``: ``user<TAB>item<TAB>rating``, row order = time order."""
    for line_no, cols in _split_rows(path, "\t", "utf-8", header=False):
        stats.rows += 1
        try:
            if len(cols) != 3:
                raise BadRow(f"expected 3 fields, got {len(cols)}")
            user, item, rating = (c.strip() for c in cols)
            if not item:
                raise BadRow("empty item id")
            yield _event(source, line_no, user, f"{domain}:{item}", rating, None, scale=scale,
                         domain=domain)
            stats.ok += 1
        except BadRow as exc:
            stats.skip(line_no, str(exc))


def douban_domain(path: str | Path) -> str | None:
    """``book`` for ``book_ratings.dat`` (the Douban ratings layout), else ``None``."""
    name = Path(path).name.lower()
    if name.endswith("_ratings.dat") and len(name) > len("_ratings.dat"):
        return name[: -len("_ratings.dat")]
    return None


def log_format(path: str | Path, mapping: Mapping[str, str] | None = None) -> str:
    """The reader :func:`read_log` would use: ``movielens``, ``douban`` or ``generic``."""
    name = Path(path).name.lower()
    if mapping is None and name in ("ratings.csv", "ratings.dat", "u.data"):
        return "movielens"
    if mapping is None and douban_domain(path) is not None:
        return "douban"
    return "generic"


def read_log(
    path: str | Path,
    mapping: Mapping[str, str] | None = None,
    *,
    default_kind: str = "rate",
    source_name: str | None = None,
    domain: str = "default",
    scale: RatingScale = DEFAULT_SCALE,
    sort: bool = True,
) -> LogRead:
    """Read an interaction log, skipping (and counting) bad rows.

    Parameters
    ----------
    path : str or Path
        A MovieLens ``ratings.csv``/``ratings.dat``/``u.data`` or a Douban
        ``<domain>_ratings.dat`` (detected by name), or any CSV / JSONL log read with
        ``mapping``.
    mapping : mapping, optional
        Wire field → column/key, e.g. ``{"user_id": "uid", "item_id": "iid", "value": "r",
        "ts": "t", "kind": "action"}``. Unnamed fields are looked up under their wire name; a
        missing ``ts`` becomes the line number, a missing ``kind`` becomes ``default_kind``.
    default_kind : str
        Kind of events whose row has no kind (MovieLens rows are always ``rate``).
    source_name : str, optional
        Prefix of the deterministic event ids (default: the file name).
    domain : str
        Domain of events whose row names none (a Douban file: its own domain, from the file
        name, unless this is given).
    scale : RatingScale
        Ratings outside it are skipped as bad rows.
    sort : bool
        Sort by timestamp (stable). Leave on for replay.

    Returns
    -------
    LogRead
        ``events`` (time-ordered when ``sort``) and ``stats`` (rows, ok, skipped by reason).
    """
    path = Path(path)
    source = source_name or path.name
    stats = ReadStats(source=str(path))
    if default_kind not in KINDS:
        raise ValueError(f"unknown default kind {default_kind!r}; expected one of {KINDS}")
    fmt = log_format(path, mapping)
    if fmt == "movielens":
        events = list(_movielens_log(path, source, stats, scale, domain))
    elif fmt == "douban":
        own = douban_domain(path) if domain == "default" else domain
        events = list(_douban_ratings(path, source, stats, scale, own or domain))
    else:
        events = list(_generic_log(path, source, stats, mapping or {}, default_kind, scale, domain))
    if sort:
        events.sort(key=lambda e: e.ts)
    _log_summary(stats, "events")
    return LogRead(events, stats)


def _log_summary(stats: ReadStats, what: str) -> None:
    if stats.n_skipped:
        log.warning(
            "%s: %d %s read, %d rows skipped %s",
            stats.source,
            stats.ok,
            what,
            stats.n_skipped,
            dict(stats.skipped),
        )
    else:
        log.info("%s: %d %s read", stats.source, stats.ok, what)


# ------------------------------------------------------------------------------ item catalogs


def items_beside(log_path: str | Path) -> Path | None:
    """The item catalog file next to a log (``movies.csv``, ``movies.dat``, ``u.item``, ...), or
    ``None`` when there is none."""
    folder = Path(log_path)
    folder = folder if folder.is_dir() else folder.parent
    for name in ITEM_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _genres(raw: str) -> list[str]:
    return [g for g in (p.strip() for p in raw.split("|")) if g and g != "(no genres listed)"]


def _movies_csv(path: Path, stats: ReadStats, domain: str) -> Iterator[Item]:
    for line_no, row in _csv_rows(path):
        stats.rows += 1
        try:
            title = (row.get("title") or "").strip()
            if row.get("genres") is None:
                raise BadRow("missing genres column")
            item_id = _ident(row.get("movieId"), "movie id")
            yield Item(item_id, domain, title, "", {"genres": _genres(row["genres"])})
            stats.ok += 1
        except BadRow as exc:
            stats.skip(line_no, str(exc))


def _movies_dat(path: Path, stats: ReadStats, domain: str) -> Iterator[Item]:
    for line_no, cols in _split_rows(path, "::", "latin-1", header=False):
        stats.rows += 1
        try:
            if len(cols) != 3:
                raise BadRow(f"expected 3 fields, got {len(cols)}")
            item_id = _ident(cols[0], "movie id")
            yield Item(item_id, domain, cols[1].strip(), "", {"genres": _genres(cols[2])})
            stats.ok += 1
        except BadRow as exc:
            stats.skip(line_no, str(exc))


def _ml100k_genre_names(folder: Path) -> tuple[str, ...]:
    path = folder / "u.genre"
    if not path.is_file():
        return ML100K_GENRES
    pairs = [c for _, c in _split_rows(path, "|", "latin-1", header=False) if len(c) == 2]
    try:
        return tuple(name for name, _ in sorted(pairs, key=lambda p: int(p[1])))
    except ValueError:
        return ML100K_GENRES


def _u_item(path: Path, stats: ReadStats, domain: str) -> Iterator[Item]:
    names = _ml100k_genre_names(path.parent)
    for line_no, cols in _split_rows(path, "|", "latin-1", header=False):
        stats.rows += 1
        try:
            if len(cols) != 5 + len(names):
                raise BadRow(f"expected {5 + len(names)} fields, got {len(cols)}")
            flags = cols[5:]
            if any(f.strip() not in ("0", "1") for f in flags):
                raise BadRow("genre flags must be 0/1")
            genres = [n for n, f in zip(names, flags, strict=True) if f.strip() == "1"]
            genres = [g for g in genres if g != "unknown"]
            yield Item(_ident(cols[0], "movie id"), domain, cols[1].strip(), "", {"genres": genres})
            stats.ok += 1
        except BadRow as exc:
            stats.skip(line_no, str(exc))


def _generic_items(path: Path, stats: ReadStats, domain: str) -> Iterator[Item]:
    for line_no, rec in _generic_records(path, stats):
        stats.rows += 1
        try:
            attributes = rec.get("attributes") or {}
            if not isinstance(attributes, dict):
                raise BadRow("attributes must be an object")
            if "genres" in rec and isinstance(rec["genres"], str):
                attributes = {**attributes, "genres": _genres(rec["genres"])}
            yield Item(
                _ident(rec.get("item_id"), "item id"),
                str(rec.get("domain") or domain),
                str(rec.get("title") or ""),
                str(rec.get("text") or ""),
                attributes,
            )
            stats.ok += 1
        except BadRow as exc:
            stats.skip(line_no, str(exc))


def read_tags(path: str | Path, max_per_item: int = MAX_TAGS_PER_ITEM) -> dict[str, list[str]]:
    """Distinct tags per item from a MovieLens ``tags.csv`` (first-seen order, lower-cased)."""
    path = Path(path)
    stats = ReadStats(source=str(path))
    tags: dict[str, dict[str, None]] = {}
    for line_no, row in _csv_rows(path):
        stats.rows += 1
        try:
            item_id = _ident(row.get("movieId"), "movie id")
            tag = (row.get("tag") or "").strip().lower()
            if not tag:
                raise BadRow("empty tag")
        except BadRow as exc:
            stats.skip(line_no, str(exc))
            continue
        seen = tags.setdefault(item_id, {})
        if len(seen) < max_per_item:
            seen[tag] = None
        stats.ok += 1
    _log_summary(stats, "tags")
    return {item_id: list(seen) for item_id, seen in tags.items()}


_ITEM_READERS = {"movies.csv": _movies_csv, "movies.dat": _movies_dat, "u.item": _u_item}


def read_items(path_or_dir: str | Path, *, tags: bool = True, domain: str = "default") -> ItemsRead:
    """Read an item catalog (a file, or the first of :data:`ITEM_FILES` in a folder).

    MovieLens titles become ``Item.title`` and genres ``attributes["genres"]`` (a list). With
    ``tags``, distinct tags from a sibling ``tags.csv`` are appended to ``Item.text``. Other files
    are generic CSV/JSONL with ``item_id``, ``title``, ``text``, ``attributes``/``genres``.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        found = items_beside(path)
        if found is None:
            raise FileNotFoundError(f"no item catalog ({', '.join(ITEM_FILES)}) in {path}")
        path = found
    stats = ReadStats(source=str(path))
    reader = _ITEM_READERS.get(path.name.lower(), _generic_items)
    items = list(reader(path, stats, domain))
    tag_file = path.parent / "tags.csv"
    if tags and tag_file.is_file() and tag_file != path:
        by_item = read_tags(tag_file)
        items = [_with_tags(item, by_item.get(item.item_id)) for item in items]
    _log_summary(stats, "items")
    return ItemsRead(items, stats)


def _with_tags(item: Item, tags: list[str] | None) -> Item:
    if not tags:
        return item
    text = f"{item.text} {' '.join(tags)}".strip()
    return Item(item.item_id, item.domain, item.title, text, item.attributes)
