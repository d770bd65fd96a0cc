"""The exception hierarchy shared by every layer.

Operating errors (bad input, a net that does not validate, a frame that does not
decode, an unreachable shard) are typed exceptions under one root, :class:`CpnError`,
so that the CLI can turn each into a one-line message and an exit code in one place.
Programmer errors are ``assert`` statements and are not caught.
"""


class CpnError(Exception):
    """Root of every operating error raised by cpn-cluster."""


class NetDefinitionError(CpnError):
    """A net, place, transition or arc is not well formed.

    Raised when the net is defined, never while it runs. The message names the
    net, the transition, the arc and the variable at fault.
    """


class TokenError(CpnError):
    """A token does not belong to the colour set of the place it is put into."""


class LoadError(CpnError):
    """An import path ``package.module:attr`` does not name a net."""
