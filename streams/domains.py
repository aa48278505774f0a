"""Multi-domain interaction logs: every event carries its ``domain`` (Interaction.domain).

=========================  ==============================================================
reader                     layout
=========================  ==============================================================
:func:`read_domain_log`    generic CSV/JSONL with a domain column (any column names)
:func:`read_amazon`        Amazon review "ratings only" files, no header:
                           ``user,item,rating,timestamp`` (2014 ``ratings_<Category>.csv``;
                           pass ``order=AMAZON_2018`` for the 2018 ``item,user,...`` files);
                           domain = the category in the file name
:func:`read_douban`        Douban ``bookreviews_cleaned.txt`` / ``moviereviews_cleaned.txt`` /
                           ``musicreviews_cleaned.txt``: tab-separated, quoted header
                           ``"user_id" "<book|movie|music>_id" "rating" ... "time" ...``,
                           ``time`` a date (``YYYY-MM-DD[ HH:MM:SS]``); domain = book/movie/music
:func:`read_movielens_domains`  MovieLens split into two domains by genre family (below)
:func:`read_douban_ratings`  Douban ``<domain>_ratings.dat`` files (GA-DTCDR release: tab-separated
                           ``user item rating``, no header, no time), a folder of them or the
                           files; domain = the file's ``<domain>``, items ``<domain>:<id>``
=========================  ==============================================================

All readers skip and count bad rows (:class:`~streams.sources.ReadStats`) like
:mod:`streams.sources`, give deterministic event ids ``<file>:<line>`` and return logs sorted by
time; :func:`merge` joins several domain logs into one.

MovieLens genre-family split (the evaluation's two domains)
-----------------------------------------------------------
``ml-latest-small`` has one domain, so :func:`genre_domain` assigns every movie to exactly one of
two domains by its ``|``-separated genres: count the genres in :data:`TARGET_GENRES` (action /
genre fiction) and in :data:`SOURCE_GENRES` (drama / comedy / family); the family with more
genres wins, a tie goes to the family of the first listed genre that belongs to either, and a
movie with neither (``(no genres listed)``, only ``IMAX``) is ``source``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from schemas import DEFAULT_SCALE, Interaction, RatingScale
from streams.sources import (
    BadRow,
    LogRead,
    ReadStats,
    _event,
    _log_summary,
    douban_domain,
    read_items,
    read_log,
)

SOURCE_DOMAIN, TARGET_DOMAIN = "source", "target"
TARGET_GENRES = frozenset({"Action", "Adventure", "Sci-Fi", "Thriller", "Crime", "Horror",
                           "Mystery", "War", "Western", "Fantasy", "Film-Noir"})
SOURCE_GENRES = frozenset({"Drama", "Romance", "Comedy", "Musical", "Children", "Animation",
                           "Documentary"})
AMAZON_2014 = ("user", "item", "rating", "timestamp")
AMAZON_2018 = ("item", "user", "rating", "timestamp")
_DOUBAN_FILE = re.compile(r"(book|movie|music)", re.IGNORECASE)
_AMAZON_FILE = re.compile(r"^(?:ratings_)?(.+?)(?:_5)?$")


def genre_domain(genres: Sequence[str]) -> str:
    """The domain of a movie with these genres (rule in the module docstring)."""
    n_t = sum(g in TARGET_GENRES for g in genres)
    n_s = sum(g in SOURCE_GENRES for g in genres)
    if n_t != n_s:
        return TARGET_DOMAIN if n_t > n_s else SOURCE_DOMAIN
    first = next((g for g in genres if g in TARGET_GENRES or g in SOURCE_GENRES), None)
    return TARGET_DOMAIN if first in TARGET_GENRES else SOURCE_DOMAIN


def read_domain_log(
    path: str | Path,
    *,
    domain_column: str = "domain",
    mapping: Mapping[str, str] | None = None,
    default_domain: str = "default",
    scale: RatingScale = DEFAULT_SCALE,
) -> LogRead:
    """A generic CSV/JSONL log whose ``domain_column`` names each event's domain."""
    return read_log(path, {**(mapping or {}), "domain": domain_column}, domain=default_domain,
                    scale=scale)


def _rows_to_log(
    rows: Iterable[tuple[int, list[str]]],
    path: Path,
    stats: ReadStats,
    cols: tuple[int, int, int, int],
    domain: str,
    scale: RatingScale,
    parse_ts,
) -> LogRead:
    events = []
    u, i, r, t = cols
    for line_no, row in rows:
        stats.rows += 1
        try:
            if len(row) <= max(cols):
                raise BadRow("too few fields")
            events.append(_event(path.name, line_no, row[u], row[i], row[r], parse_ts(row[t]),
                                 domain=domain, scale=scale))
            stats.ok += 1
        except BadRow as exc:
            stats.skip(line_no, str(exc))
    events.sort(key=lambda e: e.ts)
    _log_summary(stats, "events")
    return LogRead(events, stats)


def _csv_lines(text: io.TextIOBase, delimiter: str) -> Iterable[tuple[int, list[str]]]:
    reader = csv.reader(text, delimiter=delimiter)
    for row in reader:
        yield reader.line_num, row


def read_amazon(
    path: str | Path,
    *,
    domain: str | None = None,
    order: tuple[str, str, str, str] = AMAZON_2014,
    scale: RatingScale = DEFAULT_SCALE,
) -> LogRead:
    """An Amazon "ratings only" category file (no header); domain from ``ratings_<Cat>.csv``."""
    path = Path(path)
    dom = domain or _AMAZON_FILE.match(path.stem).group(1)  # type: ignore[union-attr]
    cols = tuple(order.index(c) for c in ("user", "item", "rating", "timestamp"))
    stats = ReadStats(source=str(path))
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        return _rows_to_log(_csv_lines(fh, ","), path, stats, cols, dom, scale, _number)  # type: ignore[arg-type]


def read_douban(
    path: str | Path, *, domain: str | None = None, scale: RatingScale = DEFAULT_SCALE
) -> LogRead:
    """A Douban ``*reviews_cleaned.txt`` file; the item column is ``<domain>_id``."""
    path = Path(path)
    found = _DOUBAN_FILE.search(path.name)
    dom = domain or (found.group(1).lower() if found else path.stem)
    stats = ReadStats(source=str(path))
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        lines = _csv_lines(fh, "\t")
        try:
            _, header = next(iter(lines))
        except StopIteration:
            return LogRead([], stats)
        names = [h.strip().strip('"') for h in header]
        item_col = next((c for c in names if c.endswith("_id") and c != "user_id"), None)
        if "user_id" not in names or item_col is None or "rating" not in names:
            raise ValueError(f"{path}: not a Douban reviews file (header {names})")
        cols = (names.index("user_id"), names.index(item_col), names.index("rating"),
                names.index("time"))
        return _rows_to_log(lines, path, stats, cols, dom, scale, _date)


def read_movielens_domains(ratings: str | Path, movies: str | Path | None = None) -> LogRead:
    """MovieLens ratings with ``domain`` = :func:`genre_domain` of the movie (``movies.csv``
    beside the ratings unless given). Movies missing from the catalog are ``source``."""
    ratings = Path(ratings)
    catalog = read_items(movies or ratings.parent / "movies.csv", tags=False)
    domain = {it.item_id: genre_domain(it.attributes.get("genres", [])) for it in catalog}
    log = read_log(ratings)
    events = [_with_domain(e, domain.get(e.item_id, SOURCE_DOMAIN)) for e in log.events]
    return LogRead(events, log.stats)


def douban_rating_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The ``<domain>_ratings.dat`` files among ``paths`` (a folder stands for the ones in it)."""
    found: list[Path] = []
    for raw in [paths] if isinstance(paths, str | Path) else paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if douban_domain(p) is not None)
        elif douban_domain(path) is not None:
            found.append(path)
        else:
            raise ValueError(f"{path}: not a Douban <domain>_ratings.dat file or a folder of them")
    if not found:
        raise ValueError(f"no <domain>_ratings.dat file in {paths}")
    return found


def read_douban_ratings(
    paths: str | Path | Sequence[str | Path],
    *,
    first: str | None = None,
    scale: RatingScale = DEFAULT_SCALE,
) -> LogRead:
    r"""Several Douban ``<domain>_ratings.dat`` files as one multi-domain log.

    Each file is read by :func:`streams.sources.read_log` (domain from the file name, item ids
    ``<domain>:<id>``, ``ts`` = line number: a file's row order is its only clock). The files
    share no clock, so the merged log puts whole files one after the other: an event's ``ts`` is
    its line number plus the lines of every file before it. ``first`` names the domain whose
    file comes first (the others follow in file-name order); for cross-domain cold start pass
    the *source* domain, so that every user's source history precedes their first target event:
    the order a transfer model serves in (support = last source events + first target events).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "book_ratings.dat").write_text("1\t10\t4\n2\t11\t5\n")
    >>> _ = (d / "music_ratings.dat").write_text("1\t7\t3\n")
    >>> [(e.user_id, e.item_id, e.ts) for e in read_douban_ratings(d, first="music")]
    [('1', 'music:7', 1.0), ('1', 'book:10', 2.0), ('2', 'book:11', 3.0)]
    """
    files = douban_rating_files(paths)
    domains = [douban_domain(p) for p in files]
    if first is not None:
        if first not in domains:
            raise ValueError(f"no {first}_ratings.dat among {[str(p) for p in files]}")
        files.insert(0, files.pop(domains.index(first)))
    stats = ReadStats(source=",".join(str(p) for p in files))
    events: list[Interaction] = []
    offset = 0.0
    for path in files:
        part = read_log(path, scale=scale)
        events += [_with_ts(e, e.ts + offset) for e in part.events]
        offset += float(_line_count(path))  # ts are line numbers, blank lines included
        stats.rows += part.stats.rows
        stats.ok += part.stats.ok
        stats.skipped.update(part.stats.skipped)
    return LogRead(events, stats)


def _line_count(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def merge(logs: Iterable[LogRead]) -> list[Interaction]:
    """One time-ordered log from several (stable: ties keep input order)."""
    return sorted((e for log in logs for e in log.events), key=lambda e: e.ts)


def _with_domain(e: Interaction, domain: str) -> Interaction:
    return Interaction(e.event_id, e.user_id, e.item_id, e.kind, e.value, e.ts, domain, e.context)


def _with_ts(e: Interaction, ts: float) -> Interaction:
    return Interaction(e.event_id, e.user_id, e.item_id, e.kind, e.value, ts, e.domain, e.context)


def _number(raw: str) -> str | None:
    return raw.strip() or None


def _date(raw: str) -> float:
    text = raw.strip().strip('"')
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise BadRow("bad date")


__all__ = ["AMAZON_2014", "AMAZON_2018", "SOURCE_DOMAIN", "SOURCE_GENRES", "TARGET_DOMAIN",
           "TARGET_GENRES", "douban_rating_files", "genre_domain", "merge", "read_amazon",
           "read_domain_log", "read_douban", "read_douban_ratings", "read_movielens_domains"]
