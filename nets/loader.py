"""Loading a net by import path: ``package.module:attr``.

``attr`` names a :class:`Net`, or a function returning one, called with no arguments
(so a module can build its net from defaults) or, if it has a ``seed`` parameter, with
the run's seed (so ``cpn run --seed`` reaches the net's own seeded choices). Net
parameters (``cpn up --net-param KEY=VALUE``) are passed to the function as keyword
arguments; it must name them as parameters or take ``**params``. Every way this can
fail raises :class:`LoadError` with one line saying what was wrong and how to fix it. Importing a
module is not I/O in the sense of the functional core: it is how Python code is
found, and nets are Python code.

A process may build its net before it needs it (:func:`prepare_net`): a warm standby
(cluster/standby.py) does, so that a shard restarted in it skips building a net whose
initial marking holds, say, 300,000 targets. The next :func:`load_net` with the same
arguments takes that net (once); any other builds its own.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path

from nets.errors import LoadError, NetDefinitionError
from nets.model import Net

# Nets built ahead of their use by prepare_net, by _load_key.
_prepared: dict[str, Net] = {}


def _load_key(path: str, seed: int, params: Mapping[str, object] | None) -> str:
    return json.dumps([path, seed, sorted((params or {}).items())], default=repr)


def prepare_net(path: str, *, seed: int = 0, params: Mapping[str, object] | None = None) -> None:
    """Build the net now; the next :func:`load_net` with these arguments returns it.

    Raises:
        LoadError, NetDefinitionError: as :func:`load_net` (nothing is kept then).
    """
    _prepared[_load_key(path, seed, params)] = load_net(path, seed=seed, params=params)


def load_net(path: str, *, seed: int = 0, params: Mapping[str, object] | None = None) -> Net:
    """Import and return the net named by ``path`` (``package.module:attr``).

    ``seed`` is passed to a net-building function that has a ``seed`` parameter;
    ``params`` (net parameters, by name) are passed to it as keyword arguments.

    Raises:
        LoadError: malformed path, module not importable, attribute missing, the
            attribute is not a net (nor a function returning one), or it does not take
            the parameters given.
        NetDefinitionError: the net was found but does not validate.
    """
    prepared = _prepared.pop(_load_key(path, seed, params), None)
    if prepared is not None:
        return prepared
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise LoadError(
            f"net path {path!r} must look like package.module:attr (e.g. nets.scraper_sim:net)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise LoadError(f"cannot import module {module_name!r} for net {path!r}: {exc}") from exc
    except NetDefinitionError:
        raise
    except Exception as exc:  # the module's own code failed while importing
        raise LoadError(
            f"importing {module_name!r} for net {path!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise LoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    given = dict(params or {})
    if callable(value) and not isinstance(value, Net):
        signature: Mapping[str, inspect.Parameter]
        try:
            signature = inspect.signature(value).parameters
        except (TypeError, ValueError):
            signature = {}
        _check_params(path, signature, given)
        arguments: dict[str, object] = dict(given)
        if "seed" in signature:
            arguments["seed"] = seed
        try:
            value = value(**arguments)
        except NetDefinitionError:
            raise
        except TypeError as exc:
            raise LoadError(f"{path} is a function that needs arguments: {exc}") from exc
    elif given:
        raise LoadError(
            f"{path} is a net, not a function that builds one: it takes no parameters "
            f"(got {', '.join(sorted(given))})"
        )
    if not isinstance(value, Net):
        raise LoadError(f"{path} is a {type(value).__name__}, not a Net")
    return value


def _check_params(
    path: str, signature: Mapping[str, inspect.Parameter], given: Mapping[str, object]
) -> None:
    """Raise :class:`LoadError` unless the builder takes every parameter in ``given``."""
    if "seed" in given:
        raise LoadError(f"net {path}: pass the seed with --seed, not as a net parameter")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
        return  # it takes any keyword (and checks the names itself)
    named = {
        name
        for name, p in signature.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and name != "seed"
    }
    unknown = sorted(set(given) - named)
    if unknown:
        takes = f"it takes: {', '.join(sorted(named))}" if named else "it takes none"
        raise LoadError(f"net {path} has no parameter {unknown[0]!r} ({takes})")


def load_net_or_pnml(
    path: str, *, seed: int = 0, params: Mapping[str, object] | None = None
) -> Net:
    """A net by import path (``package.module:attr``) or from a ``.pnml`` file.

    PNML files are read by ``nets.pnml.load(path)`` when that module exists.

    Raises:
        LoadError: the path names nothing loadable, or PNML is not available.
    """
    if path.endswith(".pnml"):
        try:
            pnml = importlib.import_module("nets.pnml")
        except ModuleNotFoundError as exc:
            raise LoadError(f"{path}: PNML import is not available (no module nets.pnml)") from exc
        if params:
            raise LoadError(f"{path}: a PNML net takes no --net-param")
        net = pnml.load(Path(path))  # the file is read here, as nets.pnml reads it
        if not isinstance(net, Net):
            raise LoadError(f"{path}: nets.pnml.load returned {type(net).__name__}, not a Net")
        return net
    return load_net(path, seed=seed, params=params)
