"""The page store: every record once, whoever writes it and whatever was killed."""

from __future__ import annotations

import json
from pathlib import Path

from cluster.crawler.report import file_pages
from cluster.crawler.store import PageStore, iso_ms, page_record, read_records


def _record(n: int) -> dict[str, object]:
    return {"url": f"http://h.example/p/{n}.html", "title": f"page {n}"}


def test_a_record_is_written_once(tmp_path: Path) -> None:
    path = tmp_path / "pages.jsonl"
    with PageStore(path) as store:
        assert store.write([_record(1), _record(2), _record(1)]).written == 2
        summary = store.write([_record(2), _record(3)])
    assert (summary.written, summary.present) == (1, 1)
    assert [r["url"] for r in read_records(path)] == [
        f"http://h.example/p/{n}.html" for n in (1, 2, 3)
    ]


def test_two_stores_on_one_file_see_each_others_records(tmp_path: Path) -> None:
    path = tmp_path / "pages.jsonl"
    # Two open files: flock and the catch-up work exactly as between two processes.
    with PageStore(path, durable=False) as first, PageStore(path, durable=False) as second:
        for n in range(200):
            writer, other = (first, second) if n % 3 else (second, first)
            writer.write([_record(n), _record(n // 2)])
            other.write([_record(n)])  # a repeat by another worker (an expired lease)
    urls, duplicates = file_pages(path)
    assert (len(urls), duplicates) == (200, 0)


def test_a_restarted_store_knows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pages.jsonl"
    with PageStore(path) as store:
        store.write([_record(n) for n in range(10)])
    # A worker killed after writing but before completing: its successor gets the same
    # records again and must not repeat them.
    with PageStore(path) as store:
        summary = store.write([_record(n) for n in range(5, 15)])
    assert (summary.written, summary.present) == (5, 5)
    assert file_pages(path) == ({f"http://h.example/p/{n}.html" for n in range(15)}, 0)


def test_a_torn_last_line_is_cut_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "pages.jsonl"
    with PageStore(path) as store:
        store.write([_record(1)])
    with path.open("ab") as file:  # a writer killed in the middle of its write
        file.write(b'{"url": "http://h.example/p/2.ht')
    assert [r["url"] for r in read_records(path)] == ["http://h.example/p/1.html"]
    with PageStore(path) as store:
        assert store.write([_record(2)]).written == 1
    lines = path.read_text().splitlines()
    assert [json.loads(line)["url"] for line in lines] == [
        "http://h.example/p/1.html",
        "http://h.example/p/2.html",
    ]


def test_page_record_fields() -> None:
    parsed = ("h.example", "http://h.example/", 1, 2, "direct003", 200, "http://h.example/",
              "text/html", 1_700_000_000_123, "Title", 7)  # fmt: skip
    record = page_record(parsed)
    assert record == {
        "url": "http://h.example/",
        "final_url": "http://h.example/",
        "status": 200,
        "fetched_at": "2023-11-14T22:13:20.123+00:00",
        "fetched_at_ms": 1_700_000_000_123,
        "title": "Title",
        "links_count": 7,
        "depth": 1,
        "attempt": 2,
        "proxy": "direct003",
    }
    assert iso_ms(0) == "1970-01-01T00:00:00.000+00:00"
