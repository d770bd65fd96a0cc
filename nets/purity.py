"""A purity lint over a net's inscriptions: guards, output functions and delays.

Guards and outputs must be pure (docs/language.md, "Guards" and "Checking a net"): the
engine caches binding searches until a relevant place changes, a shard replays firings
after a crash, and the simulator and the verifier re-run them; an inscription that reads
a clock, draws a random number, does I/O or mutates a global gives each of them a
different answer. This module reads each inscription's source and reports every call or
reference that reaches outside the binding.

Theory of operation: for each callable the lint finds its AST node in its module's
source (a ``def`` by name and line, a lambda by line and parameter names; several
lambdas on one line are all linted, and the finding says so). Every maximal dotted name
in the body (``t.time``, ``os.environ.get``) is resolved through the function's locals
(skipped: they hold the binding), its closure cells, its module globals and the
builtins, so ``import time as t; t.time()`` and ``from time import time; time()`` both
become ``time.time``. The resolved name is checked against :data:`ALLOWED` first (never
fires), then against :data:`RULES`. A call to a function defined in the same module (a
helper) is linted too, once per helper. Assignments to the items or attributes of
non-local names, mutating methods on them and ``global``/``nonlocal`` are
``global-mutation``. A callable without Python source (a built-in, a C function, a
``functools.partial`` of one) is a ``no-source`` warning: it cannot be checked, which
is not the same as impure.

The lint is pure: it reads source text through :func:`inspect.getsource` and parses it
with :mod:`ast`; it never calls an inscription.
"""

from __future__ import annotations

import ast
import builtins
import functools
import inspect
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from nets.model import Net, OutputArc, Var

# Rule ids, stable: tests, docs and scripts match on them.
CLOCK: Final = "clock"
RANDOM: Final = "random"
IO: Final = "io"
NETWORK: Final = "network"
SUBPROCESS: Final = "subprocess"
ENVIRONMENT: Final = "environment"
GLOBAL_MUTATION: Final = "global-mutation"
NO_SOURCE: Final = "no-source"

# Rules whose findings are warnings: they do not fail `cpn check`.
WARNING_RULES: Final = frozenset({NO_SOURCE})

# Resolved names (prefixes) per rule. A name matches a prefix if it equals it or starts
# with it; "os.exec" covers os.execv, os.execlp and the rest.
RULES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (
        CLOCK,
        (
            "time.",
            "datetime.datetime.now",
            "datetime.datetime.utcnow",
            "datetime.datetime.today",
            "datetime.date.today",
        ),
    ),
    (RANDOM, ("random.", "_random.", "secrets.", "uuid.uuid1", "uuid.uuid4", "os.urandom")),
    (
        IO,
        (
            "builtins.print",
            "builtins.open",
            "builtins.input",
            "io.open",
            "_io.",
            "logging.",
            "sys.stdout",
            "sys.stderr",
            "sys.stdin",
        ),
    ),
    (
        NETWORK,
        (
            "socket.",
            "_socket.",
            "ssl.",
            "urllib.request.",
            "http.client.",
            "requests.",
            "httpx.",
            "aiohttp.",  # the crawler's fetch workers' client (cluster/crawler/fetch.py)
        ),
    ),
    (
        SUBPROCESS,
        (
            "subprocess.",
            "os.system",
            "os.popen",
            "os.exec",
            "os.spawn",
            "os.posix_spawn",
            "os.fork",
        ),
    ),
    (
        ENVIRONMENT,
        ("os.environ", "os._Environ", "os.getenv", "os.putenv", "os.unsetenv"),
    ),
)

# Pure standard-library helpers that never fire, checked before RULES: caching
# decorators (the cache is an optimisation, not state the result depends on), parsers
# and pure computations. `urllib.robotparser` is listed because the crawler parses
# robots.txt text with it; its `read()` (which fetches) goes through urllib.request
# and is caught when called directly.
ALLOWED: Final[tuple[str, ...]] = (
    "functools.lru_cache",
    "functools.cache",
    "functools.partial",
    "functools.reduce",
    "urllib.robotparser.",
    "urllib.parse.",
    "math.",
    "re.",
    "hashlib.",
    "json.loads",
    "json.dumps",
    "itertools.",
    "collections.",
    "operator.",
    "bisect.",
    "heapq.",
    "string.",
    "dataclasses.",
    "typing.",
    "enum.",
    "fractions.",
    "decimal.",
    "statistics.",
    "base64.",
    "copy.",
)

# pathlib methods that touch the file system.
PATH_IO_METHODS: Final = frozenset(
    {
        "read_text",
        "write_text",
        "read_bytes",
        "write_bytes",
        "open",
        "touch",
        "unlink",
        "mkdir",
        "rmdir",
        "rename",
        "replace",
        "exists",
        "stat",
        "iterdir",
        "glob",
        "rglob",
    }
)
# Methods that mutate the object they are called on (lists, dicts, sets, deques).
MUTATING_METHODS: Final = frozenset(
    {
        "append",
        "extend",
        "insert",
        "pop",
        "remove",
        "clear",
        "update",
        "add",
        "discard",
        "setdefault",
        "popitem",
        "sort",
        "reverse",
        "appendleft",
        "extendleft",
        "popleft",
        "rotate",
        "__setitem__",
        "__delitem__",
    }
)
# C modules that stand for their public module in a resolved name.
_MODULE_ALIASES: Final = {"posix": "os", "nt": "os", "_io": "_io", "_datetime": "datetime"}
_UNRESOLVED: Final = object()


@dataclass(frozen=True, slots=True)
class Finding:
    """One impure (or unchecked) spot: ``file:line``, the rule, the transition, what."""

    rule: str
    file: str
    line: int
    transition: str
    what: str

    @property
    def severity(self) -> str:
        """``"warning"`` for rules in :data:`WARNING_RULES`, else ``"error"``."""
        return "warning" if self.rule in WARNING_RULES else "error"


@dataclass(frozen=True, slots=True)
class FunctionSource:
    """Where a function's code is: its file, and its AST nodes (several lambdas may share
    a line and parameter names, and then cannot be told apart)."""

    file: str
    nodes: tuple[ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda, ...]


def lint_net(net: Net) -> tuple[Finding, ...]:
    """Lint every guard, output expression and delay function of ``net``.

    Returns:
        The findings in net order (transitions, then guard before outputs), without
        duplicates. Empty for a pure net.
    """
    linter = _Linter()
    for transition in net.transitions:
        for role, fn in inscriptions(transition.guard, transition.produce):
            linter.lint(fn, transition.name, role)
    return tuple(dict.fromkeys(linter.findings))


def inscriptions(
    guard: Callable[..., Any] | None, outputs: Iterable[OutputArc]
) -> Iterator[tuple[str, Callable[..., Any]]]:
    """The callables of a transition, each with its role (``guard``, ``output to 'p'``)."""
    if guard is not None:
        yield "guard", guard
    for out in outputs:
        if callable(out.expr) and not isinstance(out.expr, Var):
            yield f"output to {out.place.name!r}", out.expr
        if callable(out.delay) and not isinstance(out.delay, Var):
            yield f"delay of output to {out.place.name!r}", out.delay


_Node = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


@dataclass(frozen=True, slots=True)
class ModuleIndex:
    """A module's functions and lambdas by the line their code starts on (a ``def``'s
    own line and its decorators' lines), parsed and walked once per lint: looking each
    inscription up by walking the whole module cost seconds on a large net module."""

    by_line: dict[int, tuple[_Node, ...]]


def _index(tree: ast.Module) -> ModuleIndex:
    by_line: dict[int, list[_Node]] = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Lambda):
            by_line.setdefault(n.lineno, []).append(n)
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
            for line in dict.fromkeys((n.lineno, *(d.lineno for d in n.decorator_list))):
                by_line.setdefault(line, []).append(n)
    return ModuleIndex({line: tuple(nodes) for line, nodes in by_line.items()})


def function_source(fn: types.FunctionType, cache: dict[str, ModuleIndex]) -> FunctionSource | None:
    """The AST node(s) of ``fn`` in its module's source, or ``None`` if there is none.

    ``cache`` holds the indexed modules by name across calls of one lint.
    """
    code = fn.__code__
    module = inspect.getmodule(fn)
    if module is None:
        return None
    index = cache.get(module.__name__)
    if index is None:
        try:
            index = _index(ast.parse(inspect.getsource(module)))
        except (OSError, TypeError, SyntaxError):
            return None
        cache[module.__name__] = index
    first = code.co_firstlineno
    candidates = index.by_line.get(first, ())
    nodes: list[_Node]
    if code.co_name == "<lambda>":
        names = list(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])
        nodes = [n for n in candidates if isinstance(n, ast.Lambda) and _arg_names(n.args) == names]
    else:
        nodes = [
            n
            for n in candidates
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == code.co_name
        ]
    if not nodes:
        return None  # the file changed since the module was imported
    return FunctionSource(code.co_filename, tuple(nodes))


def _arg_names(args: ast.arguments) -> list[str]:
    return [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]


def unwrap(fn: Any) -> types.FunctionType | None:
    """The Python function behind a callable, or ``None`` if it has no Python code.

    Follows ``functools.partial``, bound methods, ``__wrapped__`` (``lru_cache``,
    ``functools.wraps``) and instances with a Python ``__call__``.
    """
    for _ in range(16):  # bounded: wrappers do not nest deeper in practice
        if isinstance(fn, types.FunctionType):
            return fn
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif isinstance(fn, types.MethodType):
            fn = fn.__func__
        elif hasattr(fn, "__wrapped__"):
            fn = fn.__wrapped__
        elif not isinstance(fn, type) and isinstance(
            inspect.getattr_static(type(fn), "__call__", None), types.FunctionType
        ):
            fn = inspect.getattr_static(type(fn), "__call__")
        else:
            return None
    return None


def _origin(obj: Any) -> str | None:
    """The dotted name an object stands for (``time.time``, ``os.environ`` aside)."""
    if isinstance(obj, types.ModuleType):
        return _public(obj.__name__)
    if isinstance(obj, types.MethodType | types.BuiltinMethodType) and not isinstance(
        getattr(obj, "__self__", None), types.ModuleType | type(None)
    ):
        owner = obj.__self__
        base = _origin(owner) if isinstance(owner, type) else _origin(type(owner))
        return f"{base}.{obj.__name__}" if base else None
    if isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType):
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if isinstance(module, str) and isinstance(qualname, str):
            return f"{_public(module)}.{qualname}"
        return None
    return _origin(type(obj))


def _public(module: str) -> str:
    head, _, rest = module.partition(".")
    head = _MODULE_ALIASES.get(head, head)
    return f"{head}.{rest}" if rest else head


def _match(name: str) -> str | None:
    """The rule a resolved name breaks, or ``None`` (allowed, or not a known effect)."""
    if any(name == a or name.startswith(a) for a in ALLOWED):
        return None
    parts = name.split(".")
    if parts[0] == "pathlib" and parts[-1] in PATH_IO_METHODS:
        return IO
    for rule, prefixes in RULES:
        if any(name == p or name.startswith(p) for p in prefixes):
            return rule
    return None


def _chain(node: ast.expr) -> tuple[ast.expr, list[str]]:
    """``a.b.c`` -> (``a``, ["b", "c"])."""
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return node, attrs[::-1]


def _local_names(node: ast.AST) -> set[str]:
    """Names bound inside a function: parameters, assignments, loop and import targets."""
    names: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.arguments):
            all_args = (*n.posonlyargs, *n.args, *n.kwonlyargs, n.vararg, n.kwarg)
            names.update(a.arg for a in all_args if a is not None)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store | ast.Del):
            names.add(n.id)
        elif isinstance(n, ast.alias):
            names.add((n.asname or n.name).split(".")[0])
        elif isinstance(
            n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.ExceptHandler
        ):
            names.add(n.name or "")
    return names


class _Linter:
    """The state of one :func:`lint_net` call: parsed modules, helpers seen, findings."""

    def __init__(self) -> None:
        self.modules: dict[str, ModuleIndex] = {}
        self.seen: set[types.CodeType] = set()
        self.findings: list[Finding] = []

    def lint(self, fn: Callable[..., Any], transition: str, role: str) -> None:
        function = unwrap(fn)
        source = None if function is None else function_source(function, self.modules)
        if function is None or source is None:
            self.findings.append(
                Finding(
                    NO_SOURCE,
                    str(getattr(getattr(fn, "__code__", None), "co_filename", "<unknown>")),
                    int(getattr(getattr(fn, "__code__", None), "co_firstlineno", 0)),
                    transition,
                    f"{role}: no Python source for {fn!r}; it was not checked",
                )
            )
            return
        self.seen.add(function.__code__)
        self._lint_function(function, source, transition, role)

    def _lint_function(
        self, fn: types.FunctionType, source: FunctionSource, transition: str, role: str
    ) -> None:
        note = ""
        if len(source.nodes) > 1:
            note = (
                f" (line {source.nodes[0].lineno} holds {len(source.nodes)} lambdas with these "
                "parameters; all were linted)"
            )
        scope = _Scope(fn)
        for node in source.nodes:
            local = _local_names(node)
            body: list[ast.AST] = [node.body] if isinstance(node, ast.Lambda) else list(node.body)
            for stmt in body:
                for spot, what in self._visit(stmt, scope, local, role, transition):
                    self.findings.append(
                        Finding(spot[0], source.file, spot[1], transition, what + note)
                    )

    def _visit(
        self, root: ast.AST, scope: _Scope, local: set[str], role: str, transition: str
    ) -> Iterator[tuple[tuple[str, int], str]]:
        inner: set[int] = set()  # Attribute nodes that are part of a longer chain
        for node in ast.walk(root):
            if isinstance(node, ast.Global | ast.Nonlocal):
                kind = "global" if isinstance(node, ast.Global) else "nonlocal"
                yield (
                    (GLOBAL_MUTATION, node.lineno),
                    f"{role} declares {kind} {', '.join(node.names)}",
                )
            elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
                targets = (
                    node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
                )
                for target in targets:
                    name = self._shared_target(target, scope, local)
                    if name is not None:
                        yield (
                            (GLOBAL_MUTATION, node.lineno),
                            f"{role} assigns into {name!r}, which outlives the firing",
                        )
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                yield from self._method_call(node, node.func, scope, local, role)
            if id(node) in inner:
                continue
            if isinstance(node, ast.Attribute):
                # ast.walk visits a chain's outermost node first: check `a.b.c` once,
                # not again as `a.b` and `a`.
                base, _ = _chain(node)
                cur: ast.expr = node.value
                while isinstance(cur, ast.Attribute):
                    inner.add(id(cur))
                    cur = cur.value
                inner.add(id(cur))
                yield from self._reference(node, base, scope, local, role, transition)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                yield from self._reference(node, node, scope, local, role, transition)

    def _reference(
        self,
        node: ast.expr,
        base: ast.expr,
        scope: _Scope,
        local: set[str],
        role: str,
        transition: str,
    ) -> Iterator[tuple[tuple[str, int], str]]:
        """Check one maximal dotted name (``a.b.c``) or bare name."""
        _, attrs = _chain(node)
        if isinstance(base, ast.Call):
            # `Path(x).read_text()`: the chain starts at an instance of a resolved class.
            cls = self._resolve_expr(base.func, scope, local)
            if not isinstance(cls, type):
                return
            origin = _origin(cls)
        elif isinstance(base, ast.Name):
            if base.id in local:
                return
            obj = scope.resolve(base.id)
            if obj is _UNRESOLVED:
                return
            self._follow_helper(self._walk(obj, attrs)[0], scope, transition, role)
            for name in self._names(obj, attrs):
                rule = _match(name)
                if rule is not None:
                    yield (rule, node.lineno), f"{role} uses {name}"
                    return
            return
        else:
            return
        if origin is not None:
            name = ".".join([origin, *attrs])
            rule = _match(name)
            if rule is not None:
                yield (rule, node.lineno), f"{role} uses {name}"

    def _names(self, obj: Any, attrs: list[str]) -> list[str]:
        """The names a resolved chain stands for: by the path through modules
        (``os.environ.get``) and by what it resolves to (``os._Environ.get``)."""
        names: list[str] = []
        origin = _origin(obj)
        if origin is not None:
            names.append(".".join([origin, *attrs]))
        end, rest = self._walk(obj, attrs)
        end_origin = _origin(end)
        if end_origin is not None:
            names.append(".".join([end_origin, *rest]))
        return names

    @staticmethod
    def _walk(obj: Any, attrs: list[str]) -> tuple[Any, list[str]]:
        """Follow ``attrs`` through modules and classes (static lookups only)."""
        for i, attr in enumerate(attrs):
            if isinstance(obj, types.ModuleType):
                if not hasattr(obj, attr):
                    return obj, attrs[i:]
                obj = getattr(obj, attr)
            elif isinstance(obj, type):
                try:
                    obj = inspect.getattr_static(obj, attr)
                except AttributeError:
                    return obj, attrs[i:]
            else:
                return obj, attrs[i:]
        return obj, []

    def _resolve_expr(self, expr: ast.expr, scope: _Scope, local: set[str]) -> Any:
        base, attrs = _chain(expr)
        if not isinstance(base, ast.Name) or base.id in local:
            return _UNRESOLVED
        obj = scope.resolve(base.id)
        if obj is _UNRESOLVED:
            return obj
        end, rest = self._walk(obj, attrs)
        return _UNRESOLVED if rest else end

    def _follow_helper(self, obj: Any, scope: _Scope, transition: str, role: str) -> None:
        """Lint a function of the inscription's own module, once per helper."""
        function = unwrap(obj) if callable(obj) else None
        if function is None or function.__code__ in self.seen:
            return
        if function.__module__ != scope.module:
            return
        self.seen.add(function.__code__)
        source = function_source(function, self.modules)
        if source is not None:
            helper = f"helper {function.__qualname__} (reached from the {role})"
            self._lint_function(function, source, transition, helper)

    def _shared_target(self, target: ast.expr, scope: _Scope, local: set[str]) -> str | None:
        """The non-local name an assignment target writes into, if any."""
        if not isinstance(target, ast.Attribute | ast.Subscript):
            return None
        node: ast.expr = target
        while isinstance(node, ast.Attribute | ast.Subscript):
            node = node.value
        if (
            isinstance(node, ast.Name)
            and node.id not in local
            and scope.resolve(node.id) is not _UNRESOLVED
        ):
            return ast.unparse(target)
        return None

    def _method_call(
        self,
        call: ast.Call,
        func: ast.Attribute,
        scope: _Scope,
        local: set[str],
        role: str,
    ) -> Iterator[tuple[tuple[str, int], str]]:
        receiver = func.value
        if func.attr in MUTATING_METHODS:
            obj = self._resolve_expr(receiver, scope, local)
            if obj is not _UNRESOLVED and not isinstance(
                obj, types.ModuleType | type | str | bytes | tuple | frozenset | int | float
            ):
                yield (
                    (GLOBAL_MUTATION, call.lineno),
                    f"{role} calls {ast.unparse(func)}(), mutating state that outlives the firing",
                )


class _Scope:
    """How a function's free names resolve: closure cells, module globals, builtins."""

    def __init__(self, fn: types.FunctionType) -> None:
        self.module = fn.__module__
        self.closure: dict[str, Any] = {}
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
            try:
                self.closure[name] = cell.cell_contents
            except ValueError:  # an empty cell: a name assigned after the function
                continue
        self.globals = fn.__globals__

    def resolve(self, name: str) -> Any:
        if name in self.closure:
            return self.closure[name]
        if name in self.globals:
            return self.globals[name]
        return getattr(builtins, name, _UNRESOLVED)
