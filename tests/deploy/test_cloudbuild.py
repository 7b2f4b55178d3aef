"""cloudbuild.yaml: the steps in order (lint, tests against PostgreSQL, bundles, migrations,
deploy), each failing fast, pinned images, declared substitutions, and every command and file
it calls present in the repository."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml

from stratus.cli import build_parser
from tests.conftest import ROOT

ORDER = ["lint", "test", "build-bundles", "migrate", "deploy"]
BUILT_IN = {"PROJECT_ID", "PROJECT_NUMBER", "BUILD_ID", "LOCATION", "COMMIT_SHA", "SHORT_SHA"}
# `.venv/bin/<command>`s the install step provides (the project's scripts and dev tools).
VENV_COMMANDS = {"pip", "python", "ruff", "mypy", "stratus"}


@pytest.fixture(scope="module")
def build() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    return document


def steps_by_id(build: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in build["steps"]}


def script(step: dict[str, Any]) -> str:
    return str(step["args"][-1])


def test_the_steps_run_in_order_each_waiting_for_the_one_before(build):
    ids = [step["id"] for step in build["steps"]]

    assert [i for i in ids if i in ORDER] == ORDER
    for previous, step in zip(build["steps"], build["steps"][1:], strict=False):
        assert step.get("waitFor") == [previous["id"]], step["id"]
        assert not step.get("allowFailure"), step["id"]


def test_every_script_stops_at_the_first_failure(build):
    for step in build["steps"]:
        first = script(step).lstrip().splitlines()[0]
        assert first in ("set -euo pipefail", "set -eu"), step["id"]


def test_tests_run_against_a_postgresql_container_and_under_ci(build):
    steps = steps_by_id(build)
    run = shlex.split(script(steps["postgres"]).replace("\\\n", " "))
    container = run[run.index("--name") + 1]
    env = dict(e.split("=", 1) for e in steps["test"]["env"])

    assert run[run.index("--network") + 1] == "cloudbuild"  # where the build steps run
    assert env["CI"] == "true"  # a missing PostgreSQL fails the tests instead of skipping them
    assert f"@{container}:5432/" in env["STRATUS_TEST_POSTGRES_URL"]
    assert ".venv/bin/python -m pytest" in script(steps["test"])


def test_migrations_go_through_the_cloud_sql_connector_with_the_secret_password(build):
    step = steps_by_id(build)["migrate"]
    env = dict(e.split("=", 1) for e in step["env"])
    secrets = {s["env"]: s["versionName"] for s in build["availableSecrets"]["secretManager"]}

    # the instance infra/database.tf names "${var.name_prefix}-postgres"
    assert env["CLOUD_SQL_INSTANCE"] == "$PROJECT_ID:${_REGION}:${_NAME_PREFIX}-postgres"
    assert step["secretEnv"] == ["DB_PASSWORD"]
    assert secrets["DB_PASSWORD"].endswith("/secrets/DB_PASSWORD/versions/latest")
    assert ".venv/bin/stratus migrate upgrade" in script(step)


def test_deploy_applies_terraform_on_the_bundles_just_built(build):
    steps = steps_by_id(build)
    out = re.search(r"stratus bundle --out (\S+)", script(steps["build-bundles"]))
    deploy = script(steps["deploy"])

    assert out is not None
    assert steps["deploy"]["dir"] == "infra"
    assert f"bundle_dir=/workspace/{out[1]}" in deploy
    assert "apply -input=false -auto-approve" in deploy
    for variable in ("project_id", "region", "name_prefix"):
        assert f'-var "{variable}=' in deploy


def test_images_are_pinned_to_exact_versions(build):
    images = [step["name"] for step in build["steps"]]
    images += [v for k, v in build["substitutions"].items() if k.endswith("_IMAGE")]
    for image in images:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: build["substitutions"][m[1]], image)
        tag = resolved.rsplit(":", 1)[-1] if "@sha256:" not in resolved else "digest"
        assert tag == "digest" or re.search(r"\d+\.\d+", tag), resolved
        assert "latest" not in tag, resolved


def test_every_substitution_used_is_declared_and_every_declared_one_is_used(build):
    text = (ROOT / "cloudbuild.yaml").read_text()
    body = text.split("\nsteps:", 1)[1] + str(build.get("availableSecrets"))
    used = set(re.findall(r"(?<!\$)\$\{?(_[A-Z0-9_]+|[A-Z][A-Z0-9_]*)\}?", body))
    declared = set(build["substitutions"])

    assert used - BUILT_IN <= declared
    assert declared <= used


def _is_stratus_command(name: str) -> bool:
    try:
        build_parser().parse_args([name, "--help"])
    except SystemExit as stop:
        return stop.code == 0
    return False


def test_every_command_and_file_it_calls_exists(build, capsys):
    for step in build["steps"]:
        text = script(step)
        for command in re.findall(r"\.venv/bin/([\w-]+)", text):
            assert command in VENV_COMMANDS, f"{step['id']}: .venv/bin/{command}"
        for sub in re.findall(r"\.venv/bin/stratus (\w+)", text):
            assert _is_stratus_command(sub), f"{step['id']}: stratus {sub}"
        for path in re.findall(r"(?<![\w/.])((?:\.ci|infra|constraints\.txt)[\w./-]*)", text):
            assert (ROOT / path).exists(), f"{step['id']}: {path}"
        if "dir" in step:
            assert (ROOT / step["dir"]).is_dir()
    assert (ROOT / "infra" / "scripts" / "dead-letter.sh").exists()  # run by terraform apply
