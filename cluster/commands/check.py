"""``cpn check NET``: validate a net, lint its inscriptions for purity, and say how it
partitions (docs/language.md, "Checking a net: cpn check").

The analyses are pure (nets/purity.py, nets/handoffs.py); this module loads the net,
renders the report and picks the exit code: 0 no error findings (``no-source``
warnings allowed), 1 error findings, 2 a net that does not load (raised as
:class:`~nets.errors.CpnError` and turned into one line by cluster/cli.py).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Final

import click

from cluster.commands.options import net_params_option
from nets.handoffs import Handoff, Partitioning, handoffs, partitions
from nets.loader import load_net
from nets.model import Net
from nets.purity import Finding, lint_net

EXIT_CLEAN: Final = 0
EXIT_FINDINGS: Final = 1  # like cluster/cli.py's EXIT_CHECK_FAILED: the check ran and failed


@dataclass(frozen=True, slots=True)
class CheckReport:
    """Everything ``cpn check`` found about one net."""

    net: str
    findings: tuple[Finding, ...]
    partitions: tuple[Partitioning, ...]
    handoffs: tuple[Handoff, ...]

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "warning")


def check_net(net: Net) -> CheckReport:
    """Run every check on an already validated net."""
    return CheckReport(net.name, lint_net(net), partitions(net), handoffs(net))


def render_text(report: CheckReport, *, relative_to: str | None = None) -> str:
    """The readable report: findings (``file:line: rule: transition: what``), the
    partitioning of each place, then the outputs that may hand off."""

    def where(f: Finding) -> str:
        path = f.file
        if relative_to is not None and path.startswith(relative_to + os.sep):
            path = os.path.relpath(path, relative_to)
        return f"{path}:{f.line}"

    lines = [
        f"net {report.net!r}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)"
    ]
    lines.append("purity:" if report.findings else "purity: no findings")
    lines += [
        f"  {where(f)}: {f.severity}: {f.rule}: transition {f.transition!r}: {f.what}"
        for f in report.findings
    ]
    lines.append("partitions:")
    width = max((len(p.place) for p in report.partitions), default=0)
    lines += [f"  {p.place:<{width}}  {p.kind}" for p in report.partitions]
    if report.handoffs:
        lines.append("may hand off (output into another partition than the firing's):")
        lines += [f"  {h.transition} -> {h.place}: {h.reason}" for h in report.handoffs]
    else:
        lines.append("may hand off: none (every output stays in its firing's partition)")
    return "\n".join(lines)


def as_json(report: CheckReport) -> dict[str, Any]:
    return {
        "net": report.net,
        "errors": len(report.errors),
        "warnings": len(report.warnings),
        "findings": [
            {
                "rule": f.rule,
                "severity": f.severity,
                "file": f.file,
                "line": f.line,
                "transition": f.transition,
                "what": f.what,
            }
            for f in report.findings
        ],
        "partitions": {p.place: p.kind for p in report.partitions},
        "handoffs": [
            {"transition": h.transition, "place": h.place, "reason": h.reason}
            for h in report.handoffs
        ],
    }


@click.command()
@click.argument("net_path", metavar="NET")
@net_params_option
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed passed to the net's builder."
)
@click.option("--json", "as_json_output", is_flag=True, help="Print the report as JSON.")
def check(
    net_path: str, net_params: tuple[tuple[str, Any], ...], seed: int, as_json_output: bool
) -> None:
    """Validate NET (package.module:attr), lint its guards and outputs for purity, and
    show its partition keys and the transitions that may hand off tokens.

    Exit codes: 0 no errors (warnings allowed), 1 impure inscriptions found, 2 the net
    does not load.
    """
    net = load_net(net_path, seed=seed, params=dict(net_params))
    report = check_net(net)
    if as_json_output:
        click.echo(json.dumps(as_json(report), indent=2))
    else:
        click.echo(render_text(report, relative_to=os.getcwd()))
    sys.exit(EXIT_FINDINGS if report.errors else EXIT_CLEAN)
