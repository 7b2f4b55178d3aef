"""Complete, pinned requirements for a function, from the lock and the installed metadata.

`functions/<name>/requirements.in` names what the function imports; `resolve` adds everything
those need, each pinned by `constraints.txt` (the project's lock). The dependency graph comes
from the installed packages' metadata (their versions must be the pinned ones), with
environment markers evaluated for the Cloud Functions runtime (Python 3.12 on Linux), so the
result does not depend on the machine that builds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Markers are evaluated as on the runtime, not as on the machine that builds.
TARGET_ENVIRONMENT: dict[str, str] = {
    **{key: str(value) for key, value in default_environment().items()},
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "implementation_version": "3.12.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
}


# shared_layer modules a deployed function never reaches: their imports need not be bundled.
class BundleError(RuntimeError):
    """A bundle that cannot be built as asked; the message says what to change."""


@dataclass(frozen=True)
class Pin:
    name: str  # as constraints.txt spells it
    version: str
    via: tuple[str, ...]  # who asks for it: "requirements.in" or a package

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)


def read_constraints(path: Path) -> dict[str, tuple[str, str]]:
    """`name==version` lines -> {canonical name: (name, version)}."""
    pins: dict[str, tuple[str, str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        versions = [s.version for s in requirement.specifier if s.operator == "=="]
        if len(versions) != 1:
            raise BundleError(f"{path.name}: {raw!r} is not an exact pin (name==version)")
        pins[canonicalize_name(requirement.name)] = (requirement.name, versions[0])
    return pins


def read_requirements_in(path: Path) -> list[Requirement]:
    if not path.is_file():
        raise BundleError(f"{path} is missing: list what the function imports, one per line")
    lines = (raw.split("#", 1)[0].strip() for raw in path.read_text(encoding="utf-8").splitlines())
    return [Requirement(line) for line in lines if line]


def _requires(name: str) -> tuple[str, list[str]]:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise BundleError(
            f"{name} is not installed here, so its dependencies cannot be read; "
            "install the project with `pip install -c constraints.txt -e '.[dev]'`"
        ) from None
    return dist.version, list(dist.requires or [])


def resolve(requirements: Sequence[Requirement], pins: dict[str, tuple[str, str]]) -> list[Pin]:
    """The requirements and all they need, pinned; sorted by name."""
    via: dict[str, set[str]] = {}
    extras: dict[str, set[str]] = {}
    todo: list[tuple[Requirement, str]] = [(r, "requirements.in") for r in requirements]
    while todo:
        requirement, asker = todo.pop()
        key = canonicalize_name(requirement.name)
        if key not in pins:
            raise BundleError(
                f"{requirement.name} (needed by {asker}) has no pin in constraints.txt"
            )
        name, version = pins[key]
        if not requirement.specifier.contains(version, prereleases=True):
            raise BundleError(
                f"{asker} needs {requirement}, but constraints.txt pins {name}=={version}"
            )
        new_extras = set(requirement.extras) - extras.get(key, set())
        seen = key in via
        via.setdefault(key, set()).add(asker)
        extras.setdefault(key, set()).update(requirement.extras)
        if seen and not new_extras:
            continue
        installed, requires = _requires(name)
        if installed != version:
            raise BundleError(
                f"{name} {installed} is installed but constraints.txt pins {version}: "
                "reinstall with `pip install -c constraints.txt -e '.[dev]'`"
            )
        wanted = {""} | set(requirement.extras) if not seen else new_extras
        for line in requires:
            child = Requirement(line)
            if child.marker is None:
                if "" in wanted:
                    todo.append((child, name))
                continue
            if any(child.marker.evaluate({**TARGET_ENVIRONMENT, "extra": e}) for e in wanted):
                todo.append((child, name))
    return sorted(
        (Pin(pins[k][0], pins[k][1], tuple(sorted(v))) for k, v in via.items()),
        key=lambda p: p.key,
    )


def requirements_txt(function: str, pins: Iterable[Pin]) -> str:
    lines = [
        f"# functions/{function}: written by `stratus bundle` from its requirements.in, pinned",
        "# by constraints.txt, with every dependency, so `pip install --no-deps -r` is enough.",
    ]
    for pin in pins:
        lines.append(f"{pin.name}=={pin.version}")
        lines.append(f"    # via {', '.join(pin.via)}")
    return "\n".join(lines) + "\n"


@cache
def _module_index() -> dict[str, str]:
    """Importable module name -> the installed distribution that provides it."""
    index: dict[str, str] = {}
    for dist in metadata.distributions():
        for file in dist.files or []:
            parts = file.parts
            if not parts or parts[0].endswith((".dist-info", ".data")) or parts[0] == "..":
                continue
            stem = parts[-1].split(".", 1)[0]
            module = [*parts[:-1]] if stem == "__init__" else [*parts[:-1], stem]
            if module and all(p.isidentifier() for p in module):
                index.setdefault(".".join(module), canonicalize_name(dist.metadata["Name"]))
    return index


def distribution_of(module: str) -> str | None:
    index = _module_index()
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        found = index.get(".".join(parts[:end]))
        if found:
            return found
    return None


def installed_bytes(pins: Iterable[Pin]) -> int:
    """What the pinned packages take once installed (from their RECORD files, here)."""
    total = 0
    for pin in pins:
        for file in metadata.distribution(pin.name).files or []:
            total += file.size or 0
    return total
