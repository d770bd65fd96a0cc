"""PNML in and out: the ISO/IEC 15909-2 interchange format for Petri nets.

``parse(data, source=...)`` reads a place-transition net (``ptnet``) or a symmetric net
(``symmetricnet``, the coloured subset of the Model Checking Contest) into an ordinary
:class:`~nets.model.Net`; ``dumps(net)`` writes a net back. ``load(path)`` reads a file
and parses it: it is the one function of this package that touches a file, kept here so
that ``cpn verify model.pnml`` and ``cpn run model.pnml`` share it.

The pieces: ``nets.pnml_xml`` (a safe XML reader that keeps line numbers),
``nets.pnml_terms`` (sorts, terms, colour classes), ``nets.pnml_read`` (document to net)
and ``nets.pnml_write`` (net to document). ``docs/pnml.md`` describes the supported
subset and the mapping.
"""

from __future__ import annotations

from pathlib import Path

from nets.model import Net
from nets.pnml_read import read_net
from nets.pnml_terms import DOT, Dot
from nets.pnml_write import ExportError, dumps, is_place_transition
from nets.pnml_xml import PNML_BYTES_MAX, PnmlError, parse_xml

__all__ = [
    "DOT",
    "PNML_BYTES_MAX",
    "Dot",
    "ExportError",
    "PnmlError",
    "dumps",
    "is_place_transition",
    "load",
    "parse",
]


def parse(data: bytes, *, source: str = "<pnml>") -> Net:
    """The net a PNML document describes.

    Args:
        data: the document's bytes (at most :data:`PNML_BYTES_MAX`).
        source: how messages name the document (a path, usually).

    Raises:
        PnmlError: one line naming ``source``, the element and its line.
    """
    return read_net(parse_xml(data, source=source), source=source)


def load(path: Path) -> Net:
    """Read and parse the PNML file at ``path``.

    Raises:
        PnmlError: the file cannot be read, is larger than :data:`PNML_BYTES_MAX`, or
            does not parse (see :func:`parse`).
    """
    try:
        with path.open("rb") as f:
            data = f.read(PNML_BYTES_MAX + 1)
    except OSError as exc:
        raise PnmlError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse(data, source=str(path))
