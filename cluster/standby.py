"""A warm interpreter that becomes a ``cpn`` process on demand (SHELL).

Restarting a killed shard is dominated by starting Python and importing the runtime
(about 0.6 s of a 1.1 s recovery on two cores). The supervisor therefore keeps one
*standby* per shard: ``python -m cluster.cli standby shard --data DIR``, which imports
everything a ``cpn`` process needs and then waits on its stdin. To start the child, the
supervisor writes one JSON line ``{"args": [...], "output": PATH}``: the standby sends
its stdout and stderr to PATH (the child's ``stderr.log``) and runs ``cpn ARGS`` as that
child, under its own pid. An empty stdin (the supervisor stopped or died) makes it exit
quietly. Given ``--prepare-net JSON`` (``{"net": PATH, "seed": N, "params": {...}}``,
as the child's ``--net``, ``--seed`` and ``--net-param`` will say), it also builds the
net while it waits (``nets.loader.prepare_net``): for a net with a large initial
marking that is most of a restart. A net that fails to build is left for the child to
report. Its environment is the supervisor's, as a directly started child's would be.
Its command line names ``cluster.cli``, the role and the data directory, as the child's
will: tools check a pid's command line before they signal it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Final

from nets.loader import prepare_net

STANDBY: Final = "standby"  # argv[1] of a standby: `python -m cluster.cli standby ROLE ...`
PREPARE_NET: Final = "--prepare-net"


def _prepare(argv: list[str]) -> None:
    """Build the net named after ``--prepare-net`` in ``argv``, if any."""
    if PREPARE_NET not in argv[:-1]:
        return
    # Whatever fails here fails again in the child, which reports it: a net that does
    # not build, a builder that raises, a malformed spec.
    with contextlib.suppress(Exception):
        spec = json.loads(argv[argv.index(PREPARE_NET) + 1])
        prepare_net(spec["net"], seed=int(spec["seed"]), params=dict(spec["params"]))


def await_order() -> bool:
    """In a standby (``sys.argv[1] == STANDBY``): wait for the order, then become it.

    Returns False if there is no order (exit), True once ``sys.argv`` and the standard
    streams are the ordered process's; the caller then runs the command line as usual.
    """
    _prepare(sys.argv)
    line = sys.stdin.readline()
    if not line:
        return False  # the supervisor is gone or stopped
    order = json.loads(line)
    output = os.open(order["output"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(output)
    nothing = os.open(os.devnull, os.O_RDONLY)
    os.dup2(nothing, 0)  # as a directly started child: nothing to read
    os.close(nothing)
    sys.argv = [sys.argv[0], *order["args"]]
    return True
