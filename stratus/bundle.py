"""Self-contained function bundles: what Cloud Functions deploys, built reproducibly.

    build/<function>/       main.py (and the function's other files), shared_layer/ (vendored:
                            its .py files and migrations), requirements.txt (pinned, complete)
    build/<function>.zip    the same files with fixed metadata, sorted: byte-identical builds
    build/bundles.json      per function: content hash, sizes, counts (Terraform reads it)

`requirements.txt` holds what `functions/<name>/requirements.in` asks for and everything that
needs, pinned by `constraints.txt` (`stratus.pins`): `pip install --no-deps -r` is enough.

A build also refuses a bundle whose code can import a library its requirements do not bring
(lazy imports included, found by `stratus.import_graph`) or reaches outside the bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from stratus.import_graph import Import, reach
from stratus.pins import (
    BundleError,
    Pin,
    distribution_of,
    installed_bytes,
    read_constraints,
    read_requirements_in,
    requirements_txt,
    resolve,
)

__all__ = [
    "MANIFEST",
    "Bundle",
    "BundleError",
    "Pin",
    "build_bundle",
    "build_bundles",
    "bundle_files",
    "content_hash",
    "discover",
    "read_constraints",
    "summary",
]

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = "python312"  # the Cloud Functions runtime (infra/functions.tf)
NOT_DEPLOYED = {
    "shared_layer.secret_manager": "read only with SECRET_MANAGER_PROJECT set; deployed functions "
    "get their secrets as environment variables instead (docs/configuration.md)",
}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: no build time in the archive
MANIFEST = "bundles.json"


@dataclass(frozen=True)
class Bundle:
    name: str
    directory: Path
    archive: Path
    sha256: str  # of the files (paths and bytes), independent of how they are zipped
    archive_bytes: int
    files: int
    direct: tuple[str, ...]  # what requirements.in names
    pins: tuple[Pin, ...]  # requirements.txt: direct and transitive
    not_bundled: tuple[Import, ...]  # imports left out on purpose (NOT_DEPLOYED)


def discover(root: Path = ROOT) -> list[str]:
    """Every function: a directory under functions/ with a main.py."""
    return sorted(p.parent.name for p in (root / "functions").glob("*/main.py"))


def check_imports(root: Path, function: str, pins: Sequence[Pin]) -> list[Import]:
    """Refuse what the bundle would miss; return the imports left out on purpose."""
    found = reach(root, function)
    if found.outside:
        where = ", ".join(sorted(f"{i.module} (in {i.importer})" for i in found.outside))
        raise BundleError(f"functions/{function} reaches outside its bundle: {where}")
    bundled = {pin.key for pin in pins}
    missing: dict[str, set[str]] = {}
    skipped: list[Import] = []
    for imported in sorted(found.third_party, key=lambda i: (i.module, i.importer)):
        dist = distribution_of(imported.module)
        if dist is None or dist in bundled:
            continue  # not installed anywhere: only a deployment that never runs it can import
        if imported.importer in NOT_DEPLOYED:
            skipped.append(imported)
        else:
            missing.setdefault(dist, set()).add(f"{imported.module} in {imported.importer}")
    if missing:
        detail = "; ".join(f"{d} ({', '.join(sorted(w))})" for d, w in sorted(missing.items()))
        raise BundleError(
            f"functions/{function} can import what its requirements do not bring: {detail}. "
            f"Add them to functions/{function}/requirements.in"
        )
    return skipped


def _wanted(path: Path) -> bool:
    parts = path.parts
    return not any(p == "__pycache__" or p.startswith(".") for p in parts) and path.suffix not in (
        ".pyc",
        ".pyo",
    )


def bundle_files(root: Path, function: str, requirements: str) -> list[tuple[str, bytes]]:
    """(path in the bundle, bytes), sorted. The function's own files (its requirements.in
    aside), shared_layer's .py files and migrations (what the wheel would install), and the
    generated requirements.txt."""
    files: dict[str, bytes] = {"requirements.txt": requirements.encode()}
    source = root / "functions" / function
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_file() and _wanted(relative) and relative.name != "requirements.in":
            files[relative.as_posix()] = path.read_bytes()
    shared = root / "shared_layer"
    for path in shared.rglob("*"):
        relative = path.relative_to(root)
        in_migrations = relative.parts[1:2] == ("migrations",)
        if path.is_file() and _wanted(relative) and (path.suffix == ".py" or in_migrations):
            files[relative.as_posix()] = path.read_bytes()
    return sorted(files.items())


def content_hash(files: Iterable[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def zip_bytes(files: Iterable[tuple[str, bytes]]) -> bytes:
    """A zip that depends only on the files: fixed dates and modes, sorted entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.create_system = 3  # unix, so that the mode below is read
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


def build_bundle(function: str, *, out: Path, root: Path = ROOT) -> Bundle:
    direct = read_requirements_in(root / "functions" / function / "requirements.in")
    pins = resolve(direct, read_constraints(root / "constraints.txt"))
    skipped = check_imports(root, function, pins)
    files = bundle_files(root, function, requirements_txt(function, pins))
    directory, archive = out / function, out / f"{function}.zip"
    if directory.exists():
        shutil.rmtree(directory)
    for name, data in files:
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    packed = zip_bytes(files)
    archive.write_bytes(packed)
    return Bundle(
        name=function,
        directory=directory,
        archive=archive,
        sha256=content_hash(files),
        archive_bytes=len(packed),
        files=len(files),
        direct=tuple(sorted(canonicalize_name(r.name) for r in direct)),
        pins=tuple(pins),
        not_bundled=tuple(skipped),
    )


def build_bundles(
    names: Sequence[str] | None = None, *, out: Path, root: Path = ROOT
) -> list[Bundle]:
    """Build the named functions (default: all) and update the manifest."""
    existing = discover(root)
    unknown = sorted(set(names or []) - set(existing))
    if unknown:
        raise BundleError(f"no such function: {', '.join(unknown)} (functions: {existing})")
    out.mkdir(parents=True, exist_ok=True)
    bundles, problems = [], []
    for name in names or existing:  # every function's problem at once, not only the first
        try:
            bundles.append(build_bundle(name, out=out, root=root))
        except BundleError as exc:
            problems.append(str(exc))
    if problems:
        raise BundleError("\n".join(problems))
    write_manifest(out, bundles, keep=existing)
    return bundles


def write_manifest(out: Path, bundles: Sequence[Bundle], *, keep: Sequence[str]) -> Path:
    """build/bundles.json: entries of earlier builds stay for functions still present."""
    path = out / MANIFEST
    entries: dict[str, object] = {}
    if path.is_file():
        entries = dict(json.loads(path.read_text(encoding="utf-8")).get("bundles", {}))
    entries = {k: v for k, v in entries.items() if k in keep}
    for bundle in bundles:
        entries[bundle.name] = {
            "archive": bundle.archive.name,
            "archive_bytes": bundle.archive_bytes,
            "files": bundle.files,
            "requirements": {"direct": len(bundle.direct), "total": len(bundle.pins)},
            "sha256": bundle.sha256,
        }
    document = {"runtime": RUNTIME, "bundles": dict(sorted(entries.items()))}
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def summary(bundles: Sequence[Bundle], *, markdown: bool = False) -> str:
    """One row per bundle: files, zip size, dependency counts, installed size, content hash."""
    header = ("function", "files", "zip KiB", "direct deps", "all deps", "installed MiB", "sha256")
    rows = [
        (
            b.name,
            str(b.files),
            f"{b.archive_bytes / 1024:.0f}",
            str(len(b.direct)),
            str(len(b.pins)),
            f"{installed_bytes(b.pins) / 2**20:.1f}",
            b.sha256[:12],
        )
        for b in bundles
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    )
