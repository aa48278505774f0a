"""Multi-domain loaders on small fixture files written here (layouts as documented upstream)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.domains import (
    AMAZON_2018,
    douban_rating_files,
    genre_domain,
    merge,
    read_amazon,
    read_domain_log,
    read_douban,
    read_douban_ratings,
    read_movielens_domains,
)

ML = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-latest-small"
DOUBAN = ML.parent / "douban-book-music"


def test_generic_csv_and_jsonl_with_a_domain_column(tmp_path: Path) -> None:
    csv_path = tmp_path / "log.csv"
    csv_path.write_text("uid,iid,r,t,cat\nu1,a,4,10,books\nu1,b,5,5,movies\nu2,a,x,1,books\n")
    log = read_domain_log(csv_path, domain_column="cat",
                          mapping={"user_id": "uid", "item_id": "iid", "value": "r", "ts": "t"})
    got = [(e.item_id, e.domain, e.ts) for e in log]
    assert got == [("b", "movies", 5.0), ("a", "books", 10.0)]
    assert log.stats.skipped == {"non-numeric value": 1}
    jl = tmp_path / "log.jsonl"
    jl.write_text('{"user_id":"u","item_id":"i","value":3,"ts":1,"domain":"music"}\n'
                  '{"user_id":"u","item_id":"j","value":3,"ts":2}\n')
    got = read_domain_log(jl, default_domain="other")
    assert [e.domain for e in got] == ["music", "other"]


def test_amazon_ratings_domain_from_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "ratings_Digital_Music.csv"
    path.write_text("A1,B001,5.0,1400000000\nA2,B002,3.0,1300000000\nA3,B003,9.0,1\nbroken\n")
    log = read_amazon(path)
    assert [(e.user_id, e.item_id, e.value, e.domain) for e in log] == [
        ("A2", "B002", 3.0, "Digital_Music"), ("A1", "B001", 5.0, "Digital_Music")]
    assert log.stats.skipped == {"rating out of range": 1, "too few fields": 1}
    other = tmp_path / "Books.csv"  # 2018 "ratings only": item,user,rating,timestamp
    other.write_text("0001,U9,4.0,1500000000\n")
    (e,) = read_amazon(other, order=AMAZON_2018).events
    assert (e.user_id, e.item_id, e.domain) == ("U9", "0001", "Books")


def test_douban_reviews_with_quoted_header_and_multiline_comment(tmp_path: Path) -> None:
    path = tmp_path / "bookreviews_cleaned.txt"
    path.write_text(
        '"user_id"\t"book_id"\t"rating"\t"labels"\t"comment"\t"time"\t"ID"\n'
        '"u1"\t"101"\t"4"\t"novel"\t"good\tbut\nlong"\t"2015-03-01"\t"1"\n'
        '"u2"\t"102"\t"5"\t""\t"ok"\t"2014-01-02 10:00:00"\t"2"\n'
        '"u3"\t"103"\t"-1"\t""\t""\t"2014-01-01"\t"3"\n'
        '"u4"\t"104"\t"3"\t""\t""\t"yesterday"\t"4"\n'
    )
    log = read_douban(path)
    assert [(e.user_id, e.item_id, e.value, e.domain) for e in log] == [
        ("u2", "102", 5.0, "book"), ("u1", "101", 4.0, "book")]
    assert log.stats.skipped == {"rating out of range": 1, "bad date": 1}
    movie = tmp_path / "moviereviews_cleaned.txt"
    movie.write_text('"user_id"\t"movie_id"\t"rating"\t"time"\n"u1"\t"m"\t"3"\t"2016-01-01"\n')
    joined = merge([log, read_douban(movie)])
    assert [e.domain for e in joined] == ["book", "book", "movie"]
    bad = tmp_path / "music.txt"
    bad.write_text("a\tb\n")
    with pytest.raises(ValueError, match="not a Douban"):
        read_douban(bad)


@pytest.mark.parametrize(
    ("genres", "domain"),
    [
        (["Action", "Sci-Fi", "Drama"], "target"),
        (["Comedy", "Romance", "Thriller"], "source"),
        (["Drama", "Thriller"], "source"),  # tie: first listed family genre decides
        (["IMAX", "Thriller", "Drama"], "target"),
        (["(no genres listed)"], "source"),
    ],
)
def test_genre_rule_assigns_exactly_one_domain(genres: list[str], domain: str) -> None:
    assert genre_domain(genres) == domain


def test_movielens_split_uses_the_catalog(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n1,Heat (1995),Action|Crime|Thriller\n2,Emma (1996),Comedy|Drama\n")
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.0,20\n2,3,5.0,5\n")
    log = read_movielens_domains(tmp_path / "ratings.csv")
    assert {e.item_id: e.domain for e in log} == {"1": "target", "2": "source", "3": "source"}


@pytest.mark.skipif(not (ML / "ratings.csv").is_file(), reason="ml-latest-small not present")
def test_movielens_small_split_is_roughly_balanced() -> None:
    log = read_movielens_domains(ML / "ratings.csv")
    n_target = sum(e.domain == "target" for e in log)
    assert 0.3 < n_target / len(log) < 0.7


def test_douban_ratings_files_merge_whole_files_in_order(tmp_path: Path) -> None:
    (tmp_path / "book_ratings.dat").write_text("1\t10\t4\n\n2\t11\t5\n1\t12\t9\n")
    (tmp_path / "music_ratings.dat").write_text("2\t7\t3\n1\t7\t5\n")
    (tmp_path / "README.txt").write_text("not a ratings file")
    assert [p.name for p in douban_rating_files(tmp_path)] == ["book_ratings.dat",
                                                               "music_ratings.dat"]
    log = read_douban_ratings(tmp_path, first="music")
    got = [(e.user_id, e.item_id, e.domain, e.ts) for e in log]
    # music lines 1-2, then the 4 physical lines of books (a blank line and a bad rating skipped)
    assert got == [("2", "music:7", "music", 1.0), ("1", "music:7", "music", 2.0),
                   ("1", "book:10", "book", 3.0), ("2", "book:11", "book", 5.0)]
    assert log.stats.ok == 4 and log.stats.skipped == {"rating out of range": 1}
    # the default order is by file name; single files can be passed too
    books_first = read_douban_ratings([tmp_path / "music_ratings.dat",
                                       tmp_path / "book_ratings.dat"], first="book")
    assert [e.domain for e in books_first] == ["book", "book", "music", "music"]
    assert len({e.event_id for e in books_first}) == 4
    with pytest.raises(ValueError, match="no movie_ratings.dat"):
        read_douban_ratings(tmp_path, first="movie")
    with pytest.raises(ValueError, match="not a Douban"):
        read_douban_ratings(tmp_path / "README.txt")


@pytest.mark.data
@pytest.mark.skipif(not DOUBAN.is_dir(), reason="douban-book-music not present")
def test_douban_book_music_as_published() -> None:
    log = read_douban_ratings(DOUBAN, first="book")
    assert len(log) == 96_041 + 69_709 and log.stats.n_skipped == 0
    first_music = next(i for i, e in enumerate(log.events) if e.domain == "music")
    assert first_music == 96_041  # every book event precedes every music event
    assert [e.ts for e in log.events] == sorted(e.ts for e in log.events)
