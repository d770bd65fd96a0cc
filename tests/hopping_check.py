"""The end-of-run check of a ``tests.nets_for_tests:hopping`` workload (chaos tests).

Every acknowledged hopper landed exactly once, nothing is left hopping, no token sits on
a shard that does not own its slot, every outbox drained, the tickets are conserved and
their ``uses`` add up to exactly the number of hops made (a hop applied twice or lost
would show there too).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from cluster.invariants import ShardSnapshot, check, slot_of_net
from router.table import PartitionTable
from tests.nets_for_tests import TICKETS, hopping, landed


def hopping_problems(
    snapshots: Sequence[ShardSnapshot], table: PartitionTable, injected: Sequence[tuple[int, int]]
) -> str:
    """What is wrong with the drained cluster (``""``: nothing).

    ``injected`` holds ``(hopper id, hops)`` of every acknowledged put; each snapshot's
    marking must hold the places ``hops``, ``arrived`` and ``tickets``.
    """
    report = check(
        snapshots,
        table,
        expected={"arrived": Counter(landed(h) for h, _n in injected), "hops": Counter()},
        conserved={"tickets": TICKETS},
        slot_of=slot_of_net(hopping()),
    )
    problems = [] if report.ok else [str(report)]
    tickets = [fields for s in snapshots for _time, fields in s.marking["tickets"]]
    uses, hops = sum(t[1] for t in tickets), sum(n for _h, n in injected)
    if uses != hops:
        problems.append(f"tickets were used {uses} times for {hops} hops")
    names = sorted(t[0] for t in tickets)
    if names != sorted(f"t{i}" for i in range(TICKETS)):
        problems.append(f"tickets {names}")
    return "\n".join(problems)
