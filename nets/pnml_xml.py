"""A small, safe XML reader for PNML files: elements with their line numbers.

Theory of operation: the bytes go through expat (the parser in Python's standard
library) with handlers that build a tree of :class:`Element` records, each knowing the
line of its start tag, so that every later error can name the element and its line.
The reader refuses what a PNML file never needs and an attacker would use:

* a document type declaration (``<!DOCTYPE``): entity expansion ("billion laughs"),
  external entities and parameter entities are all declared there, so refusing it
  refuses them all; an entity declaration is refused on its own as well, and a
  reference to an undeclared entity is an expat error;
* more than :data:`PNML_BYTES_MAX` bytes, more than :data:`ELEMENTS_MAX` elements or
  elements nested deeper than :data:`DEPTH_MAX`.

Namespaces are dropped: PNML files use one namespace (or none), so ``tag`` is the local
name. Text is kept only for leaf-like content (it is stripped of surrounding space).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NoReturn
from xml.parsers import expat

from nets.errors import CpnError

# The largest PNML file read, in bytes: the Model Checking Contest's models that a
# breadth-first explorer can finish are well below it.
PNML_BYTES_MAX = 64 * 1024 * 1024
ELEMENTS_MAX = 4_000_000
DEPTH_MAX = 200


class PnmlError(CpnError):
    """A PNML file is malformed, unsafe, or uses a construct this reader does not support.

    The message is one line naming the file, the element and its line.
    """


@dataclass(slots=True)
class Element:
    """One XML element: local tag name, attributes, text, children and start line."""

    tag: str
    attrs: dict[str, str]
    line: int
    children: list[Element] = field(default_factory=list)
    text: str = ""

    def child(self, tag: str) -> Element | None:
        """The first child called ``tag``, or ``None``."""
        for c in self.children:
            if c.tag == tag:
                return c
        return None

    def describe(self) -> str:
        """``<arc id="a1">`` style: the tag and its id, for error messages."""
        ident = self.attrs.get("id")
        return f"<{self.tag} id={ident!r}>" if ident is not None else f"<{self.tag}>"


class _Builder:
    def __init__(self, parser: expat.XMLParserType, source: str) -> None:
        self.parser = parser
        self.source = source
        self.stack: list[Element] = []
        self.text: list[list[str]] = []
        self.root: Element | None = None
        self.count = 0

    def fail(self, what: str) -> NoReturn:
        raise PnmlError(f"{self.source}:{self.parser.CurrentLineNumber}: {what}")

    def start(self, name: str, attrs: dict[str, str]) -> None:
        self.count += 1
        if self.count > ELEMENTS_MAX:
            self.fail(f"more than {ELEMENTS_MAX:,} elements; the file is too large to read")
        if len(self.stack) >= DEPTH_MAX:
            self.fail(f"elements nested deeper than {DEPTH_MAX}")
        local = {k.rpartition(" ")[2]: v for k, v in attrs.items()}
        element = Element(name.rpartition(" ")[2], local, self.parser.CurrentLineNumber)
        if self.stack:
            self.stack[-1].children.append(element)
        elif self.root is None:
            self.root = element
        self.stack.append(element)
        self.text.append([])

    def end(self, _name: str) -> None:
        element = self.stack.pop()
        element.text = "".join(self.text.pop()).strip()

    def characters(self, data: str) -> None:
        if self.text:
            self.text[-1].append(data)

    def doctype(self, name: str, *_args: object) -> None:
        self.fail(
            f"document type declaration <!DOCTYPE {name}> refused: PNML needs none, and "
            "DTDs carry entity definitions (expansion bombs, external files)"
        )

    def entity(self, name: str, *_args: object) -> None:
        self.fail(f"entity declaration {name!r} refused")


def parse_xml(data: bytes, *, source: str) -> Element:
    """Parse ``data`` into an :class:`Element` tree.

    Args:
        data: the whole document.
        source: a name for the document in messages (usually its path).

    Raises:
        PnmlError: too large, not well-formed XML (with expat's line), a DTD or an
            entity declaration.
    """
    if len(data) > PNML_BYTES_MAX:
        raise PnmlError(
            f"{source}: {len(data):,} bytes is more than the {PNML_BYTES_MAX:,} a PNML file "
            "may have"
        )
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    builder = _Builder(parser, source)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.characters
    parser.StartDoctypeDeclHandler = builder.doctype
    parser.EntityDeclHandler = builder.entity
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        reason = expat.errors.messages.get(exc.code, str(exc)) if exc.code else str(exc)
        raise PnmlError(
            f"{source}:{exc.lineno}: not well-formed XML ({reason}, column {exc.offset})"
        ) from None
    if builder.root is None:
        raise PnmlError(f"{source}: no root element")
    return builder.root
