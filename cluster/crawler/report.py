"""The crawl's report: what was stored, what failed and why, and the politeness record.

Built by :mod:`cluster.crawler.crawl` from what the crawler itself can see: the net's marking at
the end (``stored``, ``fail_log``, ``skipped``, each domain's ``clock`` and ``robots``),
the output file, and the fetch workers' timing logs (when each request was sent). The
politeness record is measured at the client: per domain, the smallest gap between two
consecutive request sends, against the delay the domain was owed (the crawl's delay, or
its robots.txt ``Crawl-delay`` when larger). ``cpn demo`` adds the mock web's own
measurement, taken at the server.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster.crawler.store import read_records


@dataclass(frozen=True, slots=True)
class DomainGap:
    domain: str
    requests: int
    min_gap_ms: int | None  # None with fewer than two requests
    required_ms: int

    @property
    def violated(self) -> bool:
        return self.min_gap_ms is not None and self.min_gap_ms < self.required_ms


@dataclass
class CrawlReport:
    """Everything ``cpn crawl`` prints at the end (and writes with ``--report-json``)."""

    complete: bool = False
    pages: int = 0  # records in the output file
    duplicates: int = 0  # records whose url occurs earlier in the file
    stored_in_net: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # final failures by reason
    retries: int = 0
    retries_by_reason: dict[str, int] = field(default_factory=dict)
    robots_skips: int = 0
    skips: dict[str, int] = field(default_factory=dict)  # other skips by reason
    bad_inputs: list[str] = field(default_factory=list)
    requests_sent: int = 0
    late_refusals: int = 0
    wall_s: float = 0.0
    startup_s: float = 0.0
    gaps: list[DomainGap] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # cpn demo's server-side figures

    @property
    def politeness_violations(self) -> int:
        return sum(1 for gap in self.gaps if gap.violated)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["politeness_violations"] = self.politeness_violations
        return data

    def lines(self) -> Iterator[str]:
        state = "complete" if self.complete else "INCOMPLETE (stopped before the work ran out)"
        yield f"crawl {state} in {self.wall_s:.1f} s (start-up {self.startup_s:.1f} s)"
        yield (
            f"  pages stored:      {self.pages:,} (in the net: {self.stored_in_net:,}; "
            f"duplicates in the file: {self.duplicates})"
        )
        yield (
            f"  requests sent:     {self.requests_sent:,} (and {self.late_refusals:,} late "
            "refusals, re-planned)"
        )
        yield f"  failures:          {_counts(self.failures)}"
        yield f"  retries:           {self.retries:,} {_paren(self.retries_by_reason)}"
        yield f"  robots.txt skips:  {self.robots_skips:,}"
        yield f"  other skips:       {_counts(self.skips)}"
        yield f"  bad input:         {len(self.bad_inputs)}"
        for item in self.bad_inputs[:20]:
            yield f"    {item}"
        if len(self.bad_inputs) > 20:
            yield f"    ... and {len(self.bad_inputs) - 20} more"
        measured = [g for g in self.gaps if g.min_gap_ms is not None]
        yield (
            f"  politeness (client side): {self.politeness_violations} violations over "
            f"{len(self.gaps)} domains"
        )
        for gap in sorted(measured, key=lambda g: (g.min_gap_ms or 0) - g.required_ms)[:10]:
            mark = "VIOLATION" if gap.violated else "ok"
            yield (
                f"    {gap.domain:<24} {gap.requests:>4} requests, min gap {gap.min_gap_ms} ms "
                f"vs delay {gap.required_ms} ms  {mark}"
            )
        if len(measured) > 10:
            yield f"    ... {len(measured) - 10} more domains, all at or above their delay" + (
                "" if not self.politeness_violations else " (see the violations above)"
            )


def _counts(values: Mapping[str, int]) -> str:
    total = sum(values.values())
    return f"{total:,} {_paren(values)}".rstrip()


def _paren(values: Mapping[str, int]) -> str:
    if not values:
        return ""
    return "(" + ", ".join(f"{k}: {v:,}" for k, v in sorted(values.items())) + ")"


def read_timings(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every fetch timing record of the workers' logs (a torn last line is skipped)."""
    found = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def domain_gaps(
    timings: Iterable[Mapping[str, Any]], required_ms: Mapping[str, int], default_ms: int
) -> list[DomainGap]:
    """Per domain: requests sent and the smallest gap between consecutive sends."""
    sends: dict[str, list[int]] = {}
    for record in timings:
        sends.setdefault(str(record["domain"]), []).append(int(record["sent_ms"]))
    gaps = []
    for domain, times in sorted(sends.items()):
        times.sort()
        smallest = min((b - a for a, b in itertools.pairwise(times)), default=None)
        gaps.append(DomainGap(domain, len(times), smallest, required_ms.get(domain, default_ms)))
    return gaps


def file_pages(path: Path) -> tuple[set[str], int]:
    """The distinct urls of a page file and how many records repeat an earlier url."""
    urls: set[str] = set()
    duplicates = 0
    for record in read_records(path):
        url = str(record.get("url", ""))
        if url in urls:
            duplicates += 1
        urls.add(url)
    return urls, duplicates


def tally(tokens: Iterable[tuple[Any, ...]], index: int) -> dict[str, int]:
    """Counts of field ``index`` over tokens."""
    return dict(sorted(Counter(str(t[index]) for t in tokens).items()))
