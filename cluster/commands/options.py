"""The ``cpn`` command line's own parameter types, shared by its command modules."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click

from cluster.layout import parse_net_param
from nets.errors import CpnError

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
