"""A clean virtual environment per bundle, installed from its requirements.txt alone.

This is how the tests and `bench/coldstart.py --bundles` check a bundle the way Cloud Functions
runs it: a fresh interpreter that sees only what the bundle's `requirements.txt` installs
(`--no-deps`, so a missing pin is a missing package, not one pip quietly adds), then
`pip check`. Wheels come from a local wheelhouse (`STRATUS_WHEELHOUSE`, default
`~/.cache/stratus/wheelhouse`) that is filled from the package index once and then reused, so
installing eight environments takes seconds and no network; and an environment is kept beside
it (`venvs/`), keyed by its requirements.txt and interpreter, and reused only while it still
holds exactly those pins.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename


def default_wheelhouse() -> Path:
    configured = os.environ.get("STRATUS_WHEELHOUSE")
    return Path(configured) if configured else Path.home() / ".cache" / "stratus" / "wheelhouse"


def pinned(requirements_txt: Path) -> list[str]:
    """The `name==version` lines of a bundle's requirements.txt."""
    lines = requirements_txt.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _available(wheelhouse: Path) -> set[tuple[str, str]]:
    """(name, version) of the wheels in the wheelhouse this interpreter can install."""
    supported = set(sys_tags())
    found: set[tuple[str, str]] = set()
    for wheel in wheelhouse.glob("*.whl"):
        name, version, _build, tags = parse_wheel_filename(wheel.name)
        if supported & set(tags):
            found.add((name, str(version)))
    return found


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def _run(command: list[str], *, offline: bool) -> None:
    env = dict(os.environ)
    if offline:
        env["PIP_CONFIG_FILE"] = os.devnull  # no index or extra find-links from pip's config
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[3:6])}... failed ({result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )


def ensure_wheels(requirements: Iterable[str], wheelhouse: Path) -> None:
    """Download the pinned wheels the wheelhouse lacks (only those); no-op when all are there."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    have = _available(wheelhouse)
    missing = sorted(
        {
            line
            for line in requirements
            if (canonicalize_name(Requirement(line).name), _version(line)) not in have
        }
    )
    if not missing:
        return
    _run(
        _pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(wheelhouse))
        + missing,
        offline=False,
    )


def _version(line: str) -> str:
    return next(iter(Requirement(line).specifier)).version


def create_venv(directory: Path, requirements_txt: Path, wheelhouse: Path) -> Path:
    """A new virtual environment with exactly the bundle's pins; its python executable."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(directory)], offline=True)
    python = directory / "bin" / "python"
    install = [
        "--python",
        str(python),
        "install",
        "--quiet",
        "--no-deps",
        "--no-index",
        "--no-compile",
    ]
    _run(_pip(*install, "--find-links", str(wheelhouse), "-r", str(requirements_txt)), offline=True)
    _run(_pip("--python", str(python), "check"), offline=True)
    return python


KEEP_VENVS = 16  # distinct environments kept in the cache, the most recently used
_LIST_INSTALLED = (
    "import importlib.metadata as m; "
    "print('\\n'.join(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions()))"
)


def _installed(python: Path) -> set[str]:
    result = subprocess.run(  # noqa: S603 - our own interpreter and a fixed script
        [str(python), "-I", "-c", _LIST_INSTALLED], capture_output=True, text=True, check=False
    )
    return {_key(line) for line in result.stdout.split()} if result.returncode == 0 else set()


def _key(line: str) -> str:
    requirement = Requirement(line)
    return f"{canonicalize_name(requirement.name)}=={_version(line)}"


def venv_for(requirements_txt: Path, wheelhouse: Path, cache: Path | None = None) -> Path:
    """The python of a virtual environment holding exactly the pins of `requirements_txt`:
    made once (`create_venv`) per distinct file and interpreter, then reused while what is
    installed in it is still exactly those pins."""
    cache = cache or wheelhouse.parent / "venvs"
    cache.mkdir(parents=True, exist_ok=True)
    content = requirements_txt.read_bytes() + sys.version.encode() + sys.executable.encode()
    key = hashlib.sha256(content).hexdigest()[:16]
    directory, python = cache / key, cache / key / "bin" / "python"
    marker = directory / ".stratus-complete"
    with (cache / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run making the same environment waits
        wanted = {_key(line) for line in pinned(requirements_txt)}
        if marker.exists() and _installed(python) == wanted:
            marker.touch()
            return python
        if directory.exists():
            shutil.rmtree(directory)
        create_venv(directory, requirements_txt, wheelhouse)
        marker.touch()
    _prune(cache)
    return python


def _prune(cache: Path) -> None:
    made = sorted(
        (p for p in cache.glob("*/.stratus-complete")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for marker in made[KEEP_VENVS:]:
        shutil.rmtree(marker.parent, ignore_errors=True)
        marker.parent.with_suffix(".lock").unlink(missing_ok=True)
