"""Reading PNML documents (P/T nets and the MCC's symmetric nets) into a :class:`Net`.

Theory of operation:

* The document is one ``<net>`` whose nodes sit on pages, possibly nested. A
  ``referencePlace`` or ``referenceTransition`` stands for the node it refers to
  (following chains of references); arcs may start or end at a reference. Graphics,
  names and ``toolspecific`` sections are ignored; any other unknown element is an
  error naming it and its line.
* A place-transition net (``ptnet``) becomes a net whose places hold :data:`DOT`
  tokens. An arc of weight ``w`` from a place is ``place.many(w)`` (or ``place()``);
  an arc of weight ``w`` to a place is ``w`` outputs producing ``DOT``.
* A symmetric net (``symmetricnet``) becomes a net whose places hold tokens of their
  sort's ``NamedTuple`` class (see ``nets.pnml_terms``). Each input arc inscription is
  expanded into one pattern per token it takes: a variable in a component binds (or
  joins on) that field, a constant requires it, and any other component (``x--1``)
  binds a fresh variable that the guard checks against the component's value. So a
  binding of the resulting transition is exactly a binding of the symmetric net's
  transition (the fresh variables are functions of the others) and the state space is
  the same as that of the unfolded net. Output arcs become one output per token, whose
  function evaluates the term. Every variable of a transition must occur plainly in an
  input arc (as in all MCC models); otherwise the transition would range over values no
  token supplies, and the reader says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from nets.errors import NetDefinitionError
from nets.model import Net, OutputArc, Pattern, Place, Transition
from nets.model import Var as ModelVar
from nets.pnml_terms import (
    COMPARISONS,
    DOT,
    Add,
    All,
    BaseSort,
    Bool,
    Compare,
    Const,
    DotSort,
    EnumSort,
    NumberOf,
    ProductSort,
    RangeSort,
    Sort,
    Succ,
    Term,
    TermFunction,
    Tuple,
    Var,
    all_values,
    colour_class,
    components,
    evaluate,
    multiset,
    python_name,
    sort_size,
    term_sort,
    token_of,
    variables_of,
)
from nets.pnml_xml import Element, PnmlError

# Bounds on what one document may ask for, so that a small file cannot make the
# reader build an enormous net (a weight of 10^12 is a few bytes of XML).
TOKENS_MAX = 10_000_000  # initial tokens, summed over places
ARCS_MAX = 100_000  # patterns and outputs of one transition
REFERENCE_DEPTH_MAX = 100

PTNET = "ptnet"
SYMMETRICNET = "symmetricnet"
_IGNORED = frozenset({"name", "graphics", "toolspecific"})
_NODE_CHILDREN = {
    "place": frozenset({"initialMarking", "hlinitialMarking", "type"}),
    "transition": frozenset({"condition"}),
    "arc": frozenset({"inscription", "hlinscription", "type"}),
    "referencePlace": frozenset(),
    "referenceTransition": frozenset(),
}


@dataclass
class _Document:
    source: str
    kind: str = PTNET
    sorts: dict[str, Sort] = field(default_factory=dict)
    constants: dict[str, Const] = field(default_factory=dict)
    variables: dict[str, Var] = field(default_factory=dict)
    nodes: dict[str, Element] = field(default_factory=dict)
    arcs: list[Element] = field(default_factory=list)

    def error(self, element: Element, what: str) -> PnmlError:
        return PnmlError(f"{self.source}:{element.line}: {element.describe()}: {what}")

    def fail(self, element: Element, what: str) -> NoReturn:
        raise self.error(element, what)


def read_net(root: Element, *, source: str) -> Net:
    """Build the :class:`Net` a parsed PNML document describes.

    Raises:
        PnmlError: naming the element and line of the first problem: an unknown or
            unsupported element, a dangling reference, a malformed number, a term of
            the wrong sort, or a transition the net language cannot express.
    """
    doc = _Document(source)
    if root.tag != "pnml":
        doc.fail(root, "the root element must be <pnml>")
    nets = [c for c in root.children if c.tag == "net"]
    if len(nets) != 1:
        doc.fail(root, f"expected exactly one <net>, found {len(nets)}")
    net_el = nets[0]
    kind = net_el.attrs.get("type", "").rstrip("/").rpartition("/")[2]
    # The core model is a P/T net whose arcs have no weights: read as a ptnet.
    kind = PTNET if kind == "pnmlcoremodel" else kind
    if kind not in (PTNET, SYMMETRICNET):
        doc.fail(
            net_el,
            f"net type {kind or 'missing'!r} is not supported (ptnet, pnmlcoremodel, symmetricnet)",
        )
    doc.kind = kind
    for el in _walk_declarations(net_el):
        _read_declarations(doc, el)
    _collect(doc, net_el, top=True)
    for ident, el in list(doc.nodes.items()):
        if el.tag in ("referencePlace", "referenceTransition"):
            _resolve(doc, ident, el, "reference")
    places = _places(doc)
    transitions = _transitions(doc, places)
    name = net_el.attrs.get("id", "net")
    try:
        return Net(name, places=[i.place for i in places.values()], transitions=transitions)
    except NetDefinitionError as exc:
        raise PnmlError(f"{source}: {exc}") from exc


# -- structure ---------------------------------------------------------------------------


def _walk_declarations(el: Element) -> Iterator[Element]:
    for child in el.children:
        if child.tag == "declaration":
            structure = child.child("structure")
            decls = structure.child("declarations") if structure is not None else None
            if decls is not None:
                yield decls
        elif child.tag == "page":
            yield from _walk_declarations(child)


def _collect(doc: _Document, container: Element, *, top: bool = False) -> None:
    """Gather nodes and arcs from a net or page element, recursively."""
    for el in container.children:
        if el.tag in _IGNORED or el.tag == "declaration":
            continue
        if el.tag == "page":
            _collect(doc, el)
        elif el.tag in _NODE_CHILDREN:
            ident = el.attrs.get("id")
            if not ident:
                doc.fail(el, "has no id")
            for child in el.children:
                if child.tag not in _IGNORED and child.tag not in _NODE_CHILDREN[el.tag]:
                    doc.fail(child, f"unknown element inside {el.describe()}")
            if el.tag == "arc":
                doc.arcs.append(el)
                continue
            if ident in doc.nodes:
                doc.fail(el, f"duplicate id (first at line {doc.nodes[ident].line})")
            doc.nodes[ident] = el
        else:
            where = "net" if top else "page"
            doc.fail(el, f"unknown element in a {where}")


def _resolve(doc: _Document, ident: str, el: Element, what: str) -> Element:
    """The place or transition that ``ident`` names, following references."""
    for _ in range(REFERENCE_DEPTH_MAX):
        node = doc.nodes.get(ident)
        if node is None:
            doc.fail(el, f"{what} {ident!r} is not a place, transition or reference in the net")
        if node.tag not in ("referencePlace", "referenceTransition"):
            return node
        ref = node.attrs.get("ref")
        if not ref:
            doc.fail(node, "reference has no ref attribute")
        target = doc.nodes.get(ref)
        expected = "place" if node.tag == "referencePlace" else "transition"
        if target is None:
            doc.fail(node, f"refers to {ref!r}, which is not in the net")
        if target.tag not in (expected, node.tag):
            doc.fail(node, f"refers to {target.describe()}, which is not a {expected}")
        ident, el = ref, node
    raise doc.error(el, f"references nested deeper than {REFERENCE_DEPTH_MAX} (a cycle?)")


def _node_name(el: Element) -> str:
    return python_name(el.attrs["id"])


# -- declarations ------------------------------------------------------------------------


def _read_declarations(doc: _Document, decls: Element) -> None:
    pending: list[Element] = []
    for el in decls.children:
        if el.tag == "namedsort":
            pending.append(el)
        elif el.tag == "variabledecl" or el.tag in _IGNORED:
            continue
        else:
            doc.fail(el, "unsupported declaration (namedsort and variabledecl are)")
    # Base sorts first, so that products may name sorts declared after them.
    products = []
    for el in pending:
        ident, name = el.attrs.get("id", ""), el.attrs.get("name") or el.attrs.get("id", "")
        if not ident or len(el.children) != 1:
            doc.fail(el, "a namedsort needs an id and exactly one sort")
        body = el.children[0]
        if body.tag == "productsort":
            products.append((ident, name, body))
        else:
            doc.sorts[ident] = _base_sort(doc, ident, name, body)
    for ident, name, body in products:
        parts = []
        for ref in body.children:
            part = _sort_ref(doc, ref)
            if isinstance(part, ProductSort):
                doc.fail(ref, "a product of products is not supported")
            parts.append(part)
        if not parts:
            doc.fail(body, "an empty product sort")
        doc.sorts[ident] = ProductSort(ident, name, tuple(parts))
    for el in decls.children:
        if el.tag == "variabledecl":
            ident = el.attrs.get("id", "")
            if not ident or len(el.children) != 1:
                doc.fail(el, "a variabledecl needs an id and one sort")
            sort = _sort_ref(doc, el.children[0])
            if isinstance(sort, ProductSort):
                doc.fail(el, "variables of a product sort are not supported")
            name = python_name(el.attrs.get("name") or ident)
            if name == "now" or any(v.name == name for v in doc.variables.values()):
                name = python_name(ident)
            doc.variables[ident] = Var(ident, name, sort)


def _base_sort(doc: _Document, ident: str, name: str, body: Element) -> BaseSort:
    if body.tag in ("cyclicenumeration", "finiteenumeration"):
        constants = []
        for c in body.children:
            if c.tag != "feconstant" or not c.attrs.get("id"):
                doc.fail(c, "an enumeration holds only <feconstant id=...> elements")
            constants.append((c.attrs["id"], c.attrs.get("name") or c.attrs["id"]))
        names = [n for _, n in constants]
        if not constants or len(set(names)) != len(names):
            doc.fail(body, "an enumeration needs constants with distinct names")
        sort: BaseSort = EnumSort(ident, name, tuple(constants), body.tag == "cyclicenumeration")
        for cid, cname in constants:
            doc.constants[cid] = Const(sort, cname)
        return sort
    if body.tag == "finiteintrange":
        start, end = _int(doc, body, "start"), _int(doc, body, "end")
        if end < start:
            doc.fail(body, f"empty range {start}..{end}")
        return RangeSort(ident, name, start, end)
    if body.tag == "dot":
        return DotSort(ident, name)
    raise doc.error(
        body, "unsupported sort (cyclic or finite enumerations, finite int ranges, dot)"
    )


def _sort_ref(doc: _Document, el: Element) -> Sort:
    if el.tag == "usersort":
        ref = el.attrs.get("declaration", "")
        sort = doc.sorts.get(ref)
        if sort is None:
            doc.fail(el, f"sort {ref!r} is not declared")
        return sort
    if el.tag == "dot":
        return DotSort()
    raise doc.error(el, "unsupported sort reference (usersort or dot)")


def _int(doc: _Document, el: Element, attr: str | None = None) -> int:
    text = el.attrs.get(attr, "") if attr else el.text
    try:
        return int(text.strip())
    except ValueError:
        what = f"attribute {attr}" if attr else "text"
        doc.fail(el, f"{what} {text!r} is not an integer")


# -- terms -------------------------------------------------------------------------------


def _subterms(doc: _Document, el: Element) -> list[Term]:
    items = []
    for sub in el.children:
        if sub.tag != "subterm" or len(sub.children) != 1:
            doc.fail(sub, f"expected <subterm> with one term inside {el.describe()}")
        items.append(_term(doc, sub.children[0]))
    return items


def _term(doc: _Document, el: Element) -> Term:
    tag = el.tag
    if tag == "variable":
        ref = el.attrs.get("refvariable", "")
        var = doc.variables.get(ref)
        if var is None:
            doc.fail(el, f"variable {ref!r} is not declared")
        return var
    if tag == "useroperator":
        ref = el.attrs.get("declaration", "")
        const = doc.constants.get(ref)
        if const is None:
            doc.fail(el, f"constant {ref!r} is not declared")
        return const
    if tag == "dotconstant":
        return Const(DotSort(), 0)
    if tag == "finiteintrangeconstant":
        rng = el.child("finiteintrange")
        if rng is None:
            doc.fail(el, "needs a <finiteintrange> sort")
        sort = RangeSort("", "", _int(doc, rng, "start"), _int(doc, rng, "end"))
        return Const(sort, _int(doc, el, "value"))
    if tag in ("successor", "predecessor"):
        (inner,) = _exactly(doc, el, _subterms(doc, el), 1)
        if not isinstance(term_sort(inner), EnumSort | RangeSort):
            doc.fail(el, "successor/predecessor of a term that is not an enumeration or range")
        return Succ(inner, 1 if tag == "successor" else -1)
    if tag == "tuple":
        return Tuple(tuple(_subterms(doc, el)))
    if tag == "all":
        if len(el.children) != 1:
            doc.fail(el, "<all> needs one sort")
        return All(_sort_ref(doc, el.children[0]))
    if tag == "numberof":
        subs = [s.children[0] for s in el.children if s.tag == "subterm" and s.children]
        if len(subs) != 2 or subs[0].tag != "numberconstant":
            doc.fail(el, "<numberof> needs a number constant and a term")
        count = _int(doc, subs[0], "value")
        if count < 0:
            doc.fail(subs[0], "a negative multiplicity")
        return NumberOf(count, _term(doc, subs[1]))
    if tag == "add":
        return Add(tuple(_subterms(doc, el)))
    if tag in COMPARISONS:
        left, right = _exactly(doc, el, _subterms(doc, el), 2)
        return Compare(COMPARISONS[tag], left, right)
    if tag in ("and", "or"):
        return Bool(tag, tuple(_subterms(doc, el)))
    if tag == "not":
        return Bool("not", tuple(_exactly(doc, el, _subterms(doc, el), 1)))
    if tag == "booleanconstant":
        return Bool("true" if el.attrs.get("value") == "true" else "false")
    raise doc.error(el, "unsupported term in this PNML subset")


def _exactly(doc: _Document, el: Element, items: list[Term], n: int) -> list[Term]:
    if len(items) != n:
        doc.fail(el, f"expects {n} subterm(s), found {len(items)}")
    return items


def _structure(doc: _Document, el: Element) -> Term:
    structure = el.child("structure")
    if structure is None or len(structure.children) != 1:
        doc.fail(el, "needs a <structure> holding one term")
    return _term(doc, structure.children[0])


# -- places ------------------------------------------------------------------------------


@dataclass
class _PlaceInfo:
    place: Place
    sort: Sort
    element: Element


def _places(doc: _Document) -> dict[str, _PlaceInfo]:
    places: dict[str, _PlaceInfo] = {}
    total = 0
    for ident, el in doc.nodes.items():
        if el.tag != "place":
            continue
        sort: Sort = DotSort()
        initial: list[tuple[Any, ...]] = []
        if doc.kind == PTNET:
            marking = el.child("initialMarking")
            if el.child("hlinitialMarking") is not None or el.child("type") is not None:
                doc.fail(el, "a place of a ptnet has no type or hlinitialMarking")
            count = 0
            if marking is not None:
                text = marking.child("text")
                count = _int(doc, text) if text is not None else 0
            if count < 0:
                doc.fail(el, f"negative initial marking {count}")
            total += count
            if total > TOKENS_MAX:
                doc.fail(el, f"more than {TOKENS_MAX:,} initial tokens in the net")
            initial = [DOT] * count
        else:
            type_el = el.child("type")
            if type_el is not None:
                structure = type_el.child("structure")
                if structure is None or len(structure.children) != 1:
                    doc.fail(type_el, "needs a <structure> holding one sort")
                sort = _sort_ref(doc, structure.children[0])
            colour = colour_class(sort)
            marking = el.child("hlinitialMarking")
            if marking is not None:
                for count, term in multiset(_structure(doc, marking)):
                    values = _ground_values(doc, marking, sort, term)
                    total += count * len(values)
                    if total > TOKENS_MAX:
                        doc.fail(el, f"more than {TOKENS_MAX:,} initial tokens in the net")
                    initial += [token_of(colour, v) for v in values] * count
        name = _node_name(el)
        try:
            place = Place(name, colour_class(sort), initial=sorted(initial))
        except NetDefinitionError as exc:
            doc.fail(el, str(exc))
        places[ident] = _PlaceInfo(place, sort, el)
    return places


def _ground_values(doc: _Document, el: Element, sort: Sort, term: Term) -> list[object]:
    """The values of a variable-free single term (or ``all``) of ``sort``."""
    if isinstance(term, All):
        if term.sort != sort and not (isinstance(term.sort, DotSort) and isinstance(sort, DotSort)):
            doc.fail(el, f"<all> of sort {term.sort.name!r} in a place of sort {sort.name!r}")
        if sort_size(sort) > TOKENS_MAX:
            doc.fail(el, f"<all> of sort {sort.name!r} has more than {TOKENS_MAX:,} values")
        return all_values(sort)
    if variables_of(term):
        doc.fail(el, "an initial marking cannot use variables")
    _check_sort(doc, el, sort, term)
    return [evaluate(term, {})]


def _check_sort(doc: _Document, el: Element, sort: Sort, term: Term) -> list[Term]:
    """The components of ``term`` for a place of ``sort``, checking their sorts."""
    parts = components(sort)
    items: list[Term] = list(term.items) if isinstance(term, Tuple) else [term]
    if len(items) != len(parts):
        doc.fail(el, f"a term with {len(items)} component(s) for sort {sort.name!r}")
    for item, part in zip(items, parts, strict=True):
        got = term_sort(item)
        if got is None:
            doc.fail(el, f"a component of sort {part.name!r} is not a value term")
        if got != part and not _same_values(got, part):
            doc.fail(el, f"a {got.name!r} value where sort {part.name!r} is expected")
    return items


def _same_values(a: BaseSort, b: BaseSort) -> bool:
    if isinstance(a, DotSort) and isinstance(b, DotSort):
        return True
    if isinstance(a, RangeSort) and isinstance(b, RangeSort):
        return (a.start, a.end) == (b.start, b.end)
    return False


# -- transitions -------------------------------------------------------------------------


def _weight(doc: _Document, arc: Element) -> int:
    inscription = arc.child("inscription")
    if inscription is None:
        return 1
    text = inscription.child("text")
    weight = _int(doc, text) if text is not None else 1
    if weight < 1:
        doc.fail(arc, f"arc weight {weight} is not positive")
    return weight


def _arcs_by_transition(
    doc: _Document, places: dict[str, _PlaceInfo]
) -> dict[str, list[tuple[Element, _PlaceInfo, bool]]]:
    """Each transition's arcs: ``(arc element, place, is_input)``, in document order."""
    result: dict[str, list[tuple[Element, _PlaceInfo, bool]]] = {
        ident: [] for ident, el in doc.nodes.items() if el.tag == "transition"
    }
    for arc in doc.arcs:
        type_el = arc.child("type")
        if type_el is not None and type_el.attrs.get("value", "normal") != "normal":
            doc.fail(arc, f"arc type {type_el.attrs.get('value')!r} is not supported")
        ends = []
        for attr in ("source", "target"):
            ref = arc.attrs.get(attr)
            if not ref:
                doc.fail(arc, f"has no {attr}")
            ends.append(_resolve(doc, ref, arc, attr))
        source, target = ends
        if source.tag == "place" and target.tag == "transition":
            result[target.attrs["id"]].append((arc, places[source.attrs["id"]], True))
        elif source.tag == "transition" and target.tag == "place":
            result[source.attrs["id"]].append((arc, places[target.attrs["id"]], False))
        else:
            doc.fail(arc, f"connects a {source.tag} to a {target.tag}")
    return result


def _transitions(doc: _Document, places: dict[str, _PlaceInfo]) -> list[Transition]:
    arcs = _arcs_by_transition(doc, places)
    result = []
    for ident, el in doc.nodes.items():
        if el.tag != "transition":
            continue
        if doc.kind == PTNET:
            if el.child("condition") is not None:
                doc.fail(el, "a ptnet transition has no condition")
            transition = _pt_transition(doc, el, arcs[ident])
        else:
            transition = _symmetric_transition(doc, el, arcs[ident])
        if not transition.consume:
            doc.fail(el, "has no input arc; the net language needs one for every transition")
        result.append(transition)
    return result


def _pt_transition(
    doc: _Document, el: Element, arcs: list[tuple[Element, _PlaceInfo, bool]]
) -> Transition:
    weights: dict[tuple[str, bool], int] = {}
    infos: dict[str, _PlaceInfo] = {}
    for arc, info, is_input in arcs:
        if arc.child("hlinscription") is not None:
            doc.fail(arc, "a ptnet arc has an <inscription>, not an <hlinscription>")
        key = (info.place.name, is_input)
        weights[key] = weights.get(key, 0) + _weight(doc, arc)
        infos[info.place.name] = info
        if weights[key] > ARCS_MAX:
            doc.fail(arc, f"arc weight above {ARCS_MAX:,}")
    consume: list[Pattern] = []
    produce: list[OutputArc] = []
    for (name, is_input), w in weights.items():
        place = infos[name].place
        if is_input:
            consume.append(place.many(w) if w > 1 else place())
        else:
            produce += [place.produce(DOT)] * w
    return Transition(_node_name(el), consume=consume, produce=produce)


def _symmetric_transition(
    doc: _Document, el: Element, arcs: list[tuple[Element, _PlaceInfo, bool]]
) -> Transition:
    tname = _node_name(el)
    taken = {v.name for v in doc.variables.values()}
    equations: list[tuple[str, Term]] = []
    plain: set[str] = set()
    consume: list[Pattern] = []
    produce: list[OutputArc] = []
    outputs: list[tuple[Element, _PlaceInfo, Term]] = []
    fresh = 0
    for arc, info, is_input in arcs:
        if arc.child("inscription") is not None:
            doc.fail(arc, "a symmetricnet arc has an <hlinscription>, not an <inscription>")
        inscription = arc.child("hlinscription")
        term: Term = (
            _structure(doc, inscription)
            if inscription is not None
            else NumberOf(1, Const(DotSort(), 0))
        )
        for count, item in multiset(term):
            if not is_input:
                outputs.append((arc, info, NumberOf(count, item)))
                continue
            if isinstance(item, All):
                values = _ground_values(doc, arc, info.sort, item)
                tokens = [token_of(info.place.colour, v) for v in values]
                fields = info.place.colour_set.fields
                for token in tokens:
                    consume += [info.place(**dict(zip(fields, token, strict=True)))] * count
                continue
            pattern: dict[str, object] = {}
            parts = _check_sort(doc, arc, info.sort, item)
            for fname, part in zip(info.place.colour_set.fields, parts, strict=True):
                if isinstance(part, Var):
                    pattern[fname] = ModelVar(part.name)
                    plain.add(part.name)
                elif not variables_of(part):
                    pattern[fname] = evaluate(part, {})
                else:
                    while f"e{fresh}" in taken:
                        fresh += 1
                    name = f"e{fresh}"
                    taken.add(name)
                    equations.append((name, part))
                    pattern[fname] = ModelVar(name)
            consume += [info.place(**pattern)] * count
        if len(consume) > ARCS_MAX:
            doc.fail(arc, f"more than {ARCS_MAX:,} tokens taken by one firing")
    condition_el = el.child("condition")
    condition = _structure(doc, condition_el) if condition_el is not None else None
    used: dict[str, Var] = {}
    for _, term in equations:
        used.update(variables_of(term))
    if condition is not None:
        used.update(variables_of(condition))
    for arc, info, term in outputs:
        used.update(variables_of(term))
        for count, item in multiset(term):
            if isinstance(item, All):
                for value in _ground_values(doc, arc, info.sort, item):
                    produce += [info.place.produce(token_of(info.place.colour, value))] * count
                continue
            _check_sort(doc, arc, info.sort, item)
            params = tuple(sorted(variables_of(item)))
            if params:
                fn = TermFunction("token", item, params, colour=info.place.colour)
                produce += [info.place.produce(fn)] * count
            else:
                token = token_of(info.place.colour, evaluate(item, {}))
                produce += [info.place.produce(token)] * count
            if len(produce) > ARCS_MAX:
                doc.fail(arc, f"more than {ARCS_MAX:,} tokens produced by one firing")
    free = sorted(set(used) - plain)
    if free:
        doc.fail(
            el,
            f"variable {free[0]!r} is not bound by a plain variable of an input arc; "
            "a transition whose variables range over values no token supplies is not "
            "supported",
        )
    guard = None
    if equations or condition is not None:
        names = set(variables_of(condition)) if condition is not None else set()
        for name, term in equations:
            names.add(name)
            names.update(variables_of(term))
        guard = TermFunction("guard", condition, tuple(sorted(names)), equations=tuple(equations))
    return Transition(tname, consume=consume, produce=produce, guard=guard)
