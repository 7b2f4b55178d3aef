"""`stratus bundle`: reproducible bytes, complete pinned requirements, and refusals of a bundle
that would miss a library or reach outside itself. (tests/deploy/test_bundles.py runs them.)"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from stratus.bundle import (
    MANIFEST,
    Bundle,
    BundleError,
    build_bundles,
    content_hash,
    discover,
    read_constraints,
)
from stratus.cli import main
from tests.conftest import ROOT


def _tree(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _copy_sources(target: Path) -> Path:
    """The inputs of a build (functions/, shared_layer/, constraints.txt) in another place."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "functions", target / "functions", ignore=ignore)
    shutil.copytree(ROOT / "shared_layer", target / "shared_layer", ignore=ignore)
    shutil.copy(ROOT / "constraints.txt", target / "constraints.txt")
    return target


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Bundle]]:
    out = tmp_path_factory.mktemp("build")
    return out, build_bundles(out=out, root=ROOT)


def test_building_twice_from_different_checkouts_gives_byte_identical_bundles(built, tmp_path):
    out, first = built
    elsewhere = _copy_sources(tmp_path / "checkout")
    for path in elsewhere.rglob("*"):  # other mtimes and modes: none of it may show
        os.utime(path, (1_900_000_000, 1_900_000_000))
        if path.is_file():
            path.chmod(0o600)
    second = build_bundles(out=tmp_path / "two", root=elsewhere)

    assert [b.name for b in first] == [b.name for b in second] == discover(ROOT)
    for a, b in zip(first, second, strict=True):
        assert a.archive.read_bytes() == b.archive.read_bytes(), a.name
        assert _tree(a.directory) == _tree(b.directory), a.name
        assert a.sha256 == b.sha256
    assert (out / MANIFEST).read_bytes() == (tmp_path / "two" / MANIFEST).read_bytes()


def test_a_bundle_holds_main_the_vendored_shared_layer_and_requirements_nothing_else(tmp_path):
    bundles = {b.name: b for b in build_bundles(["auth", "health"], out=tmp_path, root=ROOT)}

    files = set(_tree(bundles["auth"].directory))
    assert {"main.py", "requirements.txt", "shared_layer/__init__.py"} <= files
    assert "shared_layer/migrations/script.py.mako" in files
    assert any(f.startswith("shared_layer/migrations/versions/0001") for f in files)
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".in"))]
    assert not [f for f in files if f.startswith(("functions/", "stratus/", "tests/"))]
    assert {f.split("/")[0] for f in files} == {"main.py", "requirements.txt", "shared_layer"}
    # a function's own assets travel with it (health's dashboard)
    assert any(f.startswith("static/") for f in _tree(bundles["health"].directory))
    with zipfile.ZipFile(bundles["auth"].archive) as archive:
        names = archive.namelist()
        assert names == sorted(names) == sorted(files)
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_requirements_txt_pins_every_dependency_to_the_lock(built):
    pins = read_constraints(ROOT / "constraints.txt")
    for bundle in built[1]:
        lines = [
            line
            for line in (bundle.directory / "requirements.txt").read_text().splitlines()
            if line and not line.lstrip().startswith("#")
        ]
        listed = {canonicalize_name(Requirement(line).name): line for line in lines}
        for key, line in listed.items():
            name, version = pins[key]
            assert line == f"{name}=={version}", bundle.name
        # the direct requirements, and what they need, are all there
        assert set(bundle.direct) <= set(listed), bundle.name
        assert {"functions-framework", "flask", "werkzeug", "pg8000", "scramp"} <= set(listed)


def test_the_manifest_names_each_bundle_by_the_hash_of_its_files(built):
    out, bundles = built
    manifest = json.loads((out / MANIFEST).read_text())

    assert manifest["runtime"] == "python312"
    assert sorted(manifest["bundles"]) == discover(ROOT)
    for bundle in bundles:
        entry = manifest["bundles"][bundle.name]
        assert entry["sha256"] == content_hash(sorted(_tree(bundle.directory).items()))
        assert entry["archive_bytes"] == bundle.archive.stat().st_size
        assert entry["archive"] == f"{bundle.name}.zip"


def test_a_changed_source_file_changes_only_the_hash_of_bundles_that_hold_it(tmp_path):
    root = _copy_sources(tmp_path / "checkout")
    some = ["agents", "auth", "health"]
    before = {b.name: b.sha256 for b in build_bundles(some, out=tmp_path / "a", root=root)}
    main_py = root / "functions" / "auth" / "main.py"
    main_py.write_text(main_py.read_text() + "\n# changed\n")
    after = {b.name: b.sha256 for b in build_bundles(some, out=tmp_path / "b", root=root)}
    (root / "shared_layer" / "errors.py").write_text("# changed\n", encoding="utf-8")
    shared = {b.name: b.sha256 for b in build_bundles(some, out=tmp_path / "c", root=root)}

    assert [n for n in some if before[n] != after[n]] == ["auth"]
    assert [n for n in some if after[n] != shared[n]] == some


def _function(root: Path, name: str, body: str, requirements: str) -> None:
    folder = root / "functions" / name
    folder.mkdir()
    (folder / "main.py").write_text(body)
    (folder / "requirements.in").write_text(requirements)


BASE_REQUIREMENTS = "functions-framework\n"


def test_a_lazily_imported_library_missing_from_requirements_is_refused(tmp_path):
    root = _copy_sources(tmp_path / "checkout")
    _function(
        root,
        "sneaky",
        "import functions_framework\n\n"
        "@functions_framework.http\n"
        "def sneaky(request):\n"
        "    import stripe  # only on some requests\n"
        "    return str(stripe)\n",
        BASE_REQUIREMENTS,
    )

    with pytest.raises(
        BundleError, match=r"functions/sneaky can import .*stripe.*requirements\.in"
    ):
        build_bundles(["sneaky"], out=tmp_path / "out", root=root)
    _function(root, "fine", "import functions_framework\n", BASE_REQUIREMENTS)
    assert build_bundles(["fine"], out=tmp_path / "out", root=root)


def test_a_library_reached_through_shared_layer_counts_too(tmp_path):
    root = _copy_sources(tmp_path / "checkout")
    _function(
        root,
        "llm_user",
        "import functions_framework\n"
        "from shared_layer.openai_config import create_chat_completion\n\n"
        "@functions_framework.http\n"
        "def llm_user(request):\n"
        "    return str(create_chat_completion)\n",
        BASE_REQUIREMENTS + "sqlalchemy\npydantic\npydantic-settings\n",
    )

    with pytest.raises(BundleError, match=r"tenacity \(tenacity in shared_layer\.llm_http\)"):
        build_bundles(["llm_user"], out=tmp_path / "out", root=root)


def test_code_that_reaches_into_another_function_is_refused(tmp_path):
    root = _copy_sources(tmp_path / "checkout")
    _function(
        root,
        "borrower",
        "import functions_framework\nfrom functions.auth.main import router\n",
        BASE_REQUIREMENTS,
    )

    with pytest.raises(BundleError, match=r"reaches outside its bundle: functions\.auth\.main"):
        build_bundles(["borrower"], out=tmp_path / "out", root=root)


def test_a_requirement_without_a_pin_in_the_lock_is_refused(tmp_path):
    root = _copy_sources(tmp_path / "checkout")
    _function(root, "unpinned", "import functions_framework\n", BASE_REQUIREMENTS + "leftpad\n")

    with pytest.raises(BundleError, match=r"leftpad .*has no pin in constraints\.txt"):
        build_bundles(["unpinned"], out=tmp_path / "out", root=root)


def test_stratus_bundle_prints_a_row_per_function_and_fails_with_a_message(tmp_path, capsys):
    assert main(["bundle", "--out", str(tmp_path), "--markdown", "auth", "health"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| function | files | zip KiB |")
    assert [row.split("|")[1].strip() for row in table[2:]] == ["auth", "health"]

    assert main(["bundle", "--out", str(tmp_path), "nonesuch"]) == 1
    assert "no such function: nonesuch" in capsys.readouterr().err
