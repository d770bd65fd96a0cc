"""The ``cpn`` command line's own parameter types, shared by its command modules."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import click

from cluster.layout import parse_net_param
from nets.errors import CpnError
from nets.model import Net
from router.shell.metrics import METRICS_DEFAULT

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1}


class Duration(click.ParamType[int]):
    """A duration such as ``500ms``, ``1.5s``, ``10m``, ``2h`` (a bare number is ms)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _DURATION.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not a duration such as 500ms, 30s, 10m or 2h", param, ctx)
        return round(float(match.group(1)) * _UNIT_MS[match.group(2)])


DURATION = Duration()


class NetParam(click.ParamType[tuple[str, Any]]):
    """``KEY=VALUE``: a net parameter; VALUE is parsed as JSON, else taken as a string."""

    name = "key=value"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_net_param(str(value))
        except CpnError as exc:
            self.fail(str(exc), param, ctx)


def net_params_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--net-param KEY=VALUE`` (repeatable), passed to the net's builder as ``params``."""
    return click.option(
        "--net-param",
        "net_params",
        type=NetParam(),
        multiple=True,
        help="A parameter of the net's builder, KEY=VALUE (VALUE is JSON, else a string); "
        "repeatable.",
    )(command)


ALLOW_IMPURE_FLAG: Final = "--allow-impure"


def allow_impure_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--allow-impure``: run a net whose inscriptions `cpn check` finds impure."""
    return click.option(
        ALLOW_IMPURE_FLAG,
        "allow_impure",
        is_flag=True,
        help="Run the net even if `cpn check` finds an impure guard or output (a clock, "
        "randomness, I/O...); a warning instead of an error.",
    )(command)


def refuse_impure(net: Net, *, allow_impure: bool) -> None:
    """The purity part of `cpn check` (nets/purity.py), before a command runs ``net``.

    An impure inscription gives a replayed firing, a simulated seed or an explored
    state another answer than the first run (docs/language.md, "Checking a net"), so
    `cpn up`, `cpn run`, `cpn sim` and `cpn verify` refuse it unless told otherwise.
    Warnings (``no-source``: an inscription without Python source) do not refuse.

    Raises:
        CpnError: an error finding and no ``allow_impure``; one line naming the first
            finding, how many more there are, and the flag.
    """
    # Imported here: a shard or router process starts without the lint (see LAZY_COMMANDS).
    from nets.purity import lint_net  # noqa: PLC0415

    errors = [f for f in lint_net(net) if f.severity == "error"]
    if not errors:
        return
    first = errors[0]
    # As `cpn check` prints it: relative to the working directory when it is below it.
    path = first.file
    if path.startswith(os.getcwd() + os.sep):
        path = os.path.relpath(path)
    more = f" (and {len(errors) - 1} more; `cpn check` lists them)" if len(errors) > 1 else ""
    finding = f"{path}:{first.line}: {first.rule}: transition {first.transition!r}: {first.what}"
    if not allow_impure:
        raise CpnError(
            f"net {net.name!r} is impure: {finding}{more}; pass {ALLOW_IMPURE_FLAG} to run it "
            "anyway"
        )
    click.echo(
        f"cpn: warning: net {net.name!r} is impure: {finding}{more}; running it anyway "
        f"({ALLOW_IMPURE_FLAG})",
        err=True,
    )


LOG_JSON_FLAG: Final = "--log-json"


def log_json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--log-json``: the process logs one JSON object per line (router/shell/logsetup.py)."""
    return click.option(
        LOG_JSON_FLAG,
        "log_json",
        is_flag=True,
        help="Log one JSON object per line (time, level, logger, message, fields) instead of "
        "text; `cpn up` passes it on to the router and the shards.",
    )(command)


CLUSTER_DATA_HELP: Final = "The cluster's data directory (as given to `cpn up`)."


def cluster_data_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--data DIR``: a running cluster's data directory (required)."""
    return click.option(
        "--data",
        "data_dir",
        type=click.Path(file_okay=False, path_type=Path),
        required=True,
        help=CLUSTER_DATA_HELP,
    )(command)


def worker_metrics_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--metrics``, ``--metrics-file`` and ``--allow-remote`` of a worker process
    (cluster/sdk/metrics.py): where it serves /metrics and publishes their URL."""
    file_type = click.Path(dir_okay=False, path_type=Path)
    for option in reversed(
        (
            click.option(
                "--metrics",
                default=METRICS_DEFAULT,
                show_default=True,
                help="HOST:PORT of its Prometheus /metrics (port 0: a free one), or off.",
            ),
            click.option(
                "--metrics-file", type=file_type, help="Write the /metrics URL (and pid) here."
            ),
            click.option(
                "--allow-remote", is_flag=True, help="Allow a non-loopback --metrics address."
            ),
        )
    ):
        command = option(command)
    return command
