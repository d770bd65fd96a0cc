"""bench/crawl.py's stable parts: the line counter and the keys of its last line.

Timings never decide a test: these check only what the benchmark counts and prints.
"""

from __future__ import annotations

import textwrap

from bench.crawl import (
    HANDWRITTEN_FILE,
    JSON_KEYS,
    NET_FILE,
    RunResult,
    logic_lines,
    shared_names,
    summary,
)

SOURCE = textwrap.dedent(
    '''\
    """Module docstring,
    over two lines."""

    # a comment
    import os  # a trailing comment does not hide code


    class Thing:
        """Class docstring."""

        value = (
            1,
            2,
        )

        def method(self) -> str:
            """Method docstring."""
            text = """a string that is
            not a docstring"""
            return text
    '''
)


def test_logic_lines_counts_code_not_blanks_comments_or_docstrings() -> None:
    # import, class, value = ( 1, 2, ) [4 lines], def, text = """...""" [2], return
    assert logic_lines(SOURCE) == 10


def test_logic_lines_of_the_two_crawlers_are_positive_and_below_their_line_counts() -> None:
    for path in (NET_FILE, HANDWRITTEN_FILE):
        text = path.read_text(encoding="utf-8")
        assert 0 < logic_lines(text) < len(text.splitlines())


def test_the_last_line_has_exactly_the_issues_keys() -> None:
    assert JSON_KEYS == (
        "pages",
        "wall_over_bound",
        "violations",
        "duplicates",
        "decisions_per_s",
        "cpu_s_per_1k_pages",
        "net_lines",
        "handwritten_lines",
        "startup_s",
    )
    result = RunResult(
        name="x", pages=800, expected=800, missing=0, unexpected=0, duplicates=0,
        requests=900, violations=0, max_concurrency=1, wall_ms=12_000, startup_ms=500,
        bound_ms=10_000, decisions=24_000, cpu_s=4.0,
    )  # fmt: skip
    figures = summary(result, 600, 270)
    assert tuple(figures) == JSON_KEYS
    assert figures["wall_over_bound"] == 1.2
    assert figures["decisions_per_s"] == 2_000
    assert figures["cpu_s_per_1k_pages"] == 5.0
    assert figures["startup_s"] == 0.5


def test_code_both_crawlers_share_counts_for_neither() -> None:
    handwritten = "from nets.scraper import CrawlPolicy, robots_allows\nx = 1\n"
    assert shared_names(handwritten) == {"CrawlPolicy", "robots_allows"}
    net = textwrap.dedent(
        """
        @decorated
        def robots_allows(text):
            return text

        def verdict(r):
            return r
        """
    )
    assert logic_lines(net, without=frozenset({"robots_allows"})) == 2
    assert logic_lines(net) == 5
