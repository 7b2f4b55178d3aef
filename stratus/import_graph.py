"""What a function's code can import and read, found in the source (nothing is executed).

A bundle must carry every library its function can import, including those imported lazily
inside a function body (the Cloud SQL connector, `openai`, `stripe`, the Pub/Sub client): a
cold start never imports them, so a missing one shows only in production, on the first request
that needs it. Starting a bundle proves its eager imports; this walk finds the lazy ones.

Following every import of every module reached would drag in the whole shared layer (a few
facades lazily import everything), so the walk follows code, by name, from
`functions/<name>/main.py`:

- a module's top-level code runs when the module is imported;
- a module-level function runs when reachable code names it, bare (`f()`, `handlers = [f]`,
  `g()` after `from m import f as g`) or through an imported module (`service.f()`); a
  method when any attribute of that name is read (`obj.f`), since objects have no types here;
  a private `_f` only when its own module names it;
- a function registered by a decorator that is an attribute of something (`@router.route`,
  `@functions_framework.http`, `@event.listens_for`) runs, and so does every decorated method
  (pydantic validators, settings hooks); a bare-name decorator (`@lru_cache`) only wraps;
- the imports and attribute reads of what runs count; `if TYPE_CHECKING:` imports never run.

Names are matched without types, so the result errs on the side of too much, short of
`getattr` with a computed name.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

SHARED = "shared_layer"
# Imports from these never resolve inside a deployed bundle.
OUTSIDE_BUNDLE = frozenset({"functions", "stratus", "tests", "bench"})
_Def = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class Import:
    module: str  # the dotted name imported
    importer: str  # the module whose code says so


@dataclass
class Reach:
    """What a function can run: shared_layer modules, imports beyond them, names it reads."""

    function: str
    modules: set[str] = field(default_factory=set)  # shared_layer modules imported
    third_party: set[Import] = field(default_factory=set)
    outside: set[Import] = field(default_factory=set)  # beyond the bundle: never allowed
    names: dict[str, set[str]] = field(default_factory=dict)  # module -> names its code uses


@dataclass
class _Unit:
    """Code that runs together: a module's top level, or one function's body."""

    module: str
    name: str | None  # None: the module's top level
    decorated: bool
    method: bool = False  # defined in a class: reached through any attribute of that name
    imports: list[ast.Import | ast.ImportFrom] = field(default_factory=list)
    names: set[str] = field(default_factory=set)  # every name and attribute the code uses
    # What can call a module-level function: a bare name, or an attribute of an imported
    # module (`agent_service.create_agent`); `settings.email_backend` calls no function.
    calls: set[str] = field(default_factory=set)
    attributes: list[tuple[str, str]] = field(default_factory=list)  # (base name, attribute)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


# Names whose use makes a library import another, optional one: pydantic imports
# email-validator when a model with an EmailStr field is built.
IMPLIED_IMPORTS = {"EmailStr": "email_validator", "NameEmail": "email_validator"}
# Decorators that only wrap: the function still runs only where its name is used.
WRAPPERS = frozenset({"cache", "lru_cache", "contextmanager", "wraps", "overload", "override"})


def _hands_over(node: _Def, in_class: bool) -> bool:
    """Whether a decorator gives the function to something that calls it. Registrars are
    attributes of an object (`@router.route(...)`, `@functions_framework.http`,
    `@event.listens_for(...)`); a bare name (`@lru_cache`, `@monitor_task_execution`) wraps.
    In a class any decorator counts: `@classmethod` hooks (pydantic-settings') and validators
    are called by the framework, not by name from our code."""
    if not node.decorator_list:
        return False
    if in_class:
        return True
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr not in WRAPPERS:
            return True
    return False


def _aliases(tree: ast.Module) -> tuple[set[str], dict[str, str]]:
    """The names imports bind anywhere in the module, and the renamed ones' original names
    (`from m import f as g`: a call of g is a call of f)."""
    found: set[str] = set()
    renamed: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.update(a.asname or a.name for a in node.names)
            renamed.update({a.asname: a.name for a in node.names if a.asname})
    return found, renamed


def _units(module: str, tree: ast.Module) -> list[_Unit]:
    top = _Unit(module, None, False)
    units = [top]

    def visit(node: ast.AST, unit: _Unit, in_class: bool = False) -> None:
        for child in ast.iter_child_nodes(node):
            visit_one(child, unit, in_class)

    def visit_one(node: ast.AST, unit: _Unit, in_class: bool = False) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for other in node.orelse:
                visit_one(other, unit, in_class)
            return
        if isinstance(node, _Def):
            for decorator in node.decorator_list:  # decorators run where the def is
                visit_one(decorator, unit)
            inner = _Unit(module, node.name, _hands_over(node, in_class), method=in_class)
            units.append(inner)
            visit(node.args, inner)
            for statement in node.body:
                visit_one(statement, inner)
            return
        if isinstance(node, ast.ClassDef):
            for part in [*node.decorator_list, *node.bases, *node.keywords]:
                visit_one(part, unit)
            for statement in node.body:
                visit_one(statement, unit, in_class=True)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            unit.imports.append(node)  # importing a name calls nothing: its uses count
        elif isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Load):
            if isinstance(node, ast.Name):
                name = node.id
                unit.calls.add(name)
            else:
                name = node.attr
                if isinstance(node.value, ast.Name):
                    unit.attributes.append((node.value.id, name))
            unit.names.add(name)
            if name in IMPLIED_IMPORTS:
                unit.imports.append(ast.Import(names=[ast.alias(name=IMPLIED_IMPORTS[name])]))
        visit(node, unit)

    for statement in tree.body:
        visit_one(statement, top)
    aliases, renamed = _aliases(tree)
    for unit in units:
        unit.calls.update(attr for base, attr in unit.attributes if base in aliases)
        unit.calls.update(renamed[name] for name in list(unit.calls) if name in renamed)
    return units


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _parsed(path: Path, module: str, mtime_ns: int) -> tuple[_Unit, ...]:
    del mtime_ns  # part of the cache key only
    return tuple(_units(module, ast.parse(path.read_text(encoding="utf-8"), str(path))))


def _targets(
    root: Path, node: ast.Import | ast.ImportFrom, importer: str, package: bool
) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        parts = importer.split(".") if package else importer.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, node.module] if node.module else parts)
    else:
        base = node.module or ""
    submodules = [  # `from shared_layer.services import agents`: a module, where one exists
        f"{base}.{alias.name}"
        for alias in node.names
        if base.split(".")[0] == SHARED and _module_file(root, f"{base}.{alias.name}")
    ]
    return [base, *submodules]


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _runs(unit: _Unit, entry: str, used: set[str], called: set[str], here: set[str]) -> bool:
    """Whether the unit's code can run. A private name (`_client`) counts only where its own
    module uses it: `self._client` in one module does not call `_client()` in another."""
    if unit.name is None or unit.module == entry or unit.decorated:
        return True
    name = unit.name
    if name.startswith("__") and name.endswith("__"):
        return True
    if name.startswith("_"):
        return name in here
    return name in (used if unit.method else called)


def reach(root: Path, function: str) -> Reach:
    """Everything `functions/<function>/main.py` under `root` can import and read."""
    result = Reach(function)
    entry = f"functions.{function}.main"
    units: list[_Unit] = []
    packages: dict[str, bool] = {}
    loaded: set[str] = set()

    def load(module: str, path: Path) -> None:
        if module in loaded:
            return
        loaded.add(module)
        packages[module] = path.name == "__init__.py"
        units.extend(_parsed(path, module, path.stat().st_mtime_ns))

    load(entry, root / "functions" / function / "main.py")
    done: set[int] = set()
    used: set[str] = set()
    called: set[str] = set()
    progress = True
    while progress:
        progress = False
        for index, unit in enumerate(list(units)):
            if index in done:
                continue
            if not _runs(unit, entry, used, called, result.names.get(unit.module, set())):
                continue
            done.add(index)
            progress = True
            used |= unit.names
            called |= unit.calls
            result.names.setdefault(unit.module, set()).update(unit.names)
            for node in unit.imports:
                if isinstance(node, ast.ImportFrom) and node.module:  # `from m import _f`
                    imported = {alias.name for alias in node.names}
                    result.names.setdefault(node.module, set()).update(imported)
                for target in _targets(root, node, unit.module, packages[unit.module]):
                    top = target.split(".")[0]
                    if top == SHARED:
                        for module in _with_parents(target):
                            path = _module_file(root, module)
                            if path is not None:
                                result.modules.add(module)
                                load(module, path)
                    elif top in OUTSIDE_BUNDLE:
                        result.outside.add(Import(target, unit.module))
                    elif top not in sys.stdlib_module_names and top != "__future__":
                        result.third_party.add(Import(target, unit.module))
    return result
