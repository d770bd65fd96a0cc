"""Loading a net by import path: ``package.module:attr``.

``attr`` names a :class:`Net`, or a function returning one, called with no arguments
(so a module can build its net from defaults) or, if it has a ``seed`` parameter, with
the run's seed (so ``cpn run --seed`` reaches the net's own seeded choices). Every way
this can fail raises :class:`LoadError` with one line saying what was wrong and how to
fix it. Importing a
module is not I/O in the sense of the functional core: it is how Python code is
found, and nets are Python code.
"""

from __future__ import annotations

import importlib
import inspect

from nets.errors import LoadError, NetDefinitionError
from nets.model import Net


def load_net(path: str, *, seed: int = 0) -> Net:
    """Import and return the net named by ``path`` (``package.module:attr``).

    ``seed`` is passed to a net-building function that has a ``seed`` parameter.

    Raises:
        LoadError: malformed path, module not importable, attribute missing, or the
            attribute is not a net (nor a function returning one).
        NetDefinitionError: the net was found but does not validate.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise LoadError(
            f"net path {path!r} must look like package.module:attr (e.g. nets.scraper:net)"
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
    if callable(value) and not isinstance(value, Net):
        try:
            takes_seed = "seed" in inspect.signature(value).parameters
        except (TypeError, ValueError):
            takes_seed = False
        try:
            value = value(seed=seed) if takes_seed else value()
        except NetDefinitionError:
            raise
        except TypeError as exc:
            raise LoadError(f"{path} is a function that needs arguments: {exc}") from exc
    if not isinstance(value, Net):
        raise LoadError(f"{path} is a {type(value).__name__}, not a Net")
    return value
