"""Readers for every supported log and catalog format, bad rows included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.sources import items_beside, log_format, read_items, read_log, read_tags

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ml-latest-small"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def test_ratings_csv_sorted_ids_and_bad_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n"
        "1,10,4.0,300\n"
        "2,20,3.5,100\n"
        "3,30,abc,200\n"  # non-numeric rating
        "4,40,9.0,250\n"  # out of range
        "5,,3.0,260\n"  # empty item
        "6,60,2.0\n"  # missing field
        "\n"
        "7,70,5.0,200\n",
    )
    read = read_log(path)
    assert [e.event_id for e in read] == ["ratings.csv:3", "ratings.csv:9", "ratings.csv:2"]
    assert [e.ts for e in read] == [100.0, 200.0, 300.0]
    first = read.events[0]
    assert (first.user_id, first.item_id, first.kind, first.value) == ("2", "20", "rate", 3.5)
    assert read.stats.rows == 7 and read.stats.ok == 3 and read.stats.n_skipped == 4
    assert read.stats.skipped["non-numeric value"] == 1
    assert read.stats.skipped["rating out of range"] == 1
    assert read.stats.skipped["empty item id"] == 1


def test_ratings_dat_and_u_data(tmp_path: Path) -> None:
    dat = write(tmp_path / "ml1m" / "ratings.dat", "1::1193::5::978300760\n1::661\n2::3::4::5\n")
    read = read_log(dat)
    assert [(e.user_id, e.item_id, e.value) for e in read] == [("2", "3", 4.0), ("1", "1193", 5.0)]
    assert read.stats.skipped == {"expected 4 fields, got 2": 1}
    udata = write(tmp_path / "ml100k" / "u.data", "196\t242\t3\t881250949\n186\t302\tx\t1\n")
    read = read_log(udata, source_name="ml100k")
    assert [e.event_id for e in read] == ["ml100k:1"] and read.stats.n_skipped == 1


def test_generic_csv_with_mapping_and_default_kind(tmp_path: Path) -> None:
    path = write(
        tmp_path / "clicks.csv",
        "uid,iid,r,t,action\na,x,,5,click\nb,y,4,3,rate\nc,z,1,4,teleport\nd,w,2,-1,\n",
    )
    mapping = {"user_id": "uid", "item_id": "iid", "value": "r", "ts": "t", "kind": "action"}
    read = read_log(path, mapping)
    assert [(e.user_id, e.kind, e.value) for e in read] == [("b", "rate", 4.0), ("a", "click", 1.0)]
    assert read.stats.skipped == {"unknown kind": 1, "negative timestamp": 1}
    assert log_format(path, mapping) == "generic"


def test_generic_jsonl_defaults(tmp_path: Path) -> None:
    lines = [
        json.dumps({"user_id": "u1", "item_id": "i1", "ts": 2}),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"user_id": "u2", "item_id": "i2"}),  # no ts: the line number
    ]
    path = write(tmp_path / "log.jsonl", "\n".join(lines) + "\n")
    read = read_log(path, default_kind="view")
    assert [(e.user_id, e.kind, e.ts) for e in read] == [("u1", "view", 2.0), ("u2", "view", 4.0)]
    assert read.stats.skipped == {"not JSON": 1, "not a JSON object": 1}


def test_movies_csv_with_tags_and_items_beside(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4,1\n")
    write(
        tmp_path / "movies.csv",
        "movieId,title,genres\n"
        '1,"Toy Story, The (1995)",Adventure|Animation\n'
        "2,Nothing (2000),(no genres listed)\n"
        ",Broken,Drama\n",
    )
    write(
        tmp_path / "tags.csv", "userId,movieId,tag,timestamp\n1,1,Pixar,5\n2,1,pixar,6\n3,1,fun,7\n"
    )
    found = items_beside(tmp_path / "ratings.csv")
    assert found == tmp_path / "movies.csv"
    read = read_items(tmp_path)
    by_id = {i.item_id: i for i in read}
    assert by_id["1"].title == "Toy Story, The (1995)"
    assert by_id["1"].attributes == {"genres": ["Adventure", "Animation"]}
    assert by_id["1"].text == "pixar fun"
    assert by_id["2"].attributes == {"genres": []} and by_id["2"].text == ""
    assert read.stats.ok == 2 and read.stats.skipped == {"empty movie id": 1}
    assert read_items(tmp_path / "movies.csv", tags=False).items[0].text == ""
    assert read_tags(tmp_path / "tags.csv") == {"1": ["pixar", "fun"]}


def test_movies_dat_and_u_item(tmp_path: Path) -> None:
    dat = write(
        tmp_path / "ml1m" / "movies.dat",
        "1::Amélie (2001)::Comedy|Romance\n2::Bad\n",
        encoding="latin-1",
    )
    read = read_items(dat)
    assert read.items[0].title == "Amélie (2001)"
    assert read.items[0].attributes["genres"] == ["Comedy", "Romance"]
    assert read.stats.n_skipped == 1
    flags = ["0"] * 19
    flags[1] = flags[5] = "1"  # Action, Comedy
    write(
        tmp_path / "ml100k" / "u.item",
        "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n2|Short|x\n",
        encoding="latin-1",
    )
    assert items_beside(tmp_path / "ml100k" / "u.data") == tmp_path / "ml100k" / "u.item"
    read = read_items(tmp_path / "ml100k")
    assert [i.attributes["genres"] for i in read] == [["Action", "Comedy"]]
    assert read.stats.n_skipped == 1


def test_missing_catalog(tmp_path: Path) -> None:
    assert items_beside(tmp_path / "ratings.csv") is None
    with pytest.raises(FileNotFoundError):
        read_items(tmp_path)


@pytest.mark.data
def test_ml_latest_small_readers() -> None:
    if not (DATA / "ratings.csv").is_file():
        pytest.skip(f"MovieLens latest-small not found at {DATA} (optional dataset)")
    read = read_log(DATA / "ratings.csv")
    assert len(read) == 100_836 and read.stats.n_skipped == 0
    ts = [e.ts for e in read]
    assert ts == sorted(ts)
    items = read_items(items_beside(DATA / "ratings.csv"))
    assert len(items) == 9_742 and items.stats.n_skipped == 0
    toy = next(i for i in items if i.item_id == "1")
    assert "Animation" in toy.attributes["genres"] and "pixar" in toy.text


def test_douban_ratings_row_order_is_time_and_items_are_per_domain(tmp_path: Path) -> None:
    path = write(
        tmp_path / "music_ratings.dat",
        "2\t3601\t3\n"
        "2\t2171\t5\n"
        "3\t\t4\n"  # empty item
        "3\t17\t9\n"  # out of range
        "3\t17\n"  # missing field
        "1\t3601\t1\n",
    )
    assert log_format(path) == "douban"
    read = read_log(path)
    assert [(e.user_id, e.item_id, e.value) for e in read] == [
        ("2", "music:3601", 3.0), ("2", "music:2171", 5.0), ("1", "music:3601", 1.0)]
    assert [e.ts for e in read] == [1.0, 2.0, 6.0]  # the line number: row order is time order
    assert {e.domain for e in read} == {"music"} and {e.kind for e in read} == {"rate"}
    assert read.stats.ok == 3 and read.stats.n_skipped == 3
    assert read_log(path, domain="albums").events[0].item_id == "albums:3601"


@pytest.mark.data
def test_douban_files_as_published() -> None:
    folder = DATA.parent / "douban-book-music"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    books = read_log(folder / "book_ratings.dat")
    music = read_log(folder / "music_ratings.dat")
    assert (len(books.events), len(music.events)) == (96_041, 69_709)
    assert books.stats.n_skipped == music.stats.n_skipped == 0
    assert len({e.user_id for e in books} & {e.user_id for e in music}) == 1_566
