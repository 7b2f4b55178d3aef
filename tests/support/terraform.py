"""infra/*.tf read with python-hcl2, for tests that hold the Terraform against the code.

Nothing here runs Terraform (its providers cannot be fetched offline); values come from the
literal parts of the configuration: the `locals` tables, variable defaults and resource
arguments, with a small evaluator for the environment variables the functions get.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
from hcl2.utils import SerializationOptions

INFRA = Path(__file__).resolve().parents[2] / "infra"
OPTIONS = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
TEST_PROJECT = "stratus-test"


@dataclass
class Infra:
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        assert (kind, name) in self.resources, f"infra/ has no {kind}.{name}"
        return self.resources[(kind, name)]

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: body for (k, name), body in self.resources.items() if k == kind}

    def default(self, variable: str) -> Any:
        if variable == "project_id":
            return TEST_PROJECT
        return self.variables[variable].get("default")

    def functions(self) -> dict[str, dict[str, Any]]:
        """function_defaults with the default (empty) function_overrides applied."""
        merged = {name: dict(values) for name, values in self.default("function_defaults").items()}
        for name, changes in (self.default("function_overrides") or {}).items():
            merged[name].update({k: v for k, v in changes.items() if v is not None})
        return merged

    def evaluate(self, value: Any) -> Any:
        """A value as Terraform would see it with the variables' defaults; references to
        resources become placeholders such as `<google_pubsub_topic.tasks.name>`."""
        if not isinstance(value, str) or not (value.startswith("${") and value.endswith("}")):
            return value
        inner = value[2:-1]
        if match := re.fullmatch(r"var\.(\w+)", inner):
            return self.default(match[1])
        if match := re.fullmatch(r'lookup\(var\.(\w+), "(\w+)", "(.*)"\)', inner):
            return (self.default(match[1]) or {}).get(match[2], match[3])
        if match := re.fullmatch(r'join\(",", var\.(\w+)\)', inner):
            return ",".join(self.default(match[1]))
        if match := re.fullmatch(r'local\.function_urls\["(\w+)"\]', inner):
            service = f"{self.default('name_prefix')}-{match[1].replace('_', '-')}"
            return f"https://{service}-123456789.{self.default('region')}.run.app"
        return f"<{inner}>"

    def environment(self, function: str) -> dict[str, str]:
        """The environment_variables infra/functions.tf gives a function (secrets aside)."""
        settings = self.functions()[function]
        merged = {
            **self.locals["common_environment"],
            **self.locals["function_environment"].get(function, {}),
            "DATABASE_POOL_SIZE": str(settings["db_pool_size"]),
            "THREADS": str(settings["concurrency"]),
        }
        evaluated = {key: self.evaluate(value) for key, value in merged.items()}
        return {key: str(value) for key, value in evaluated.items() if value != ""}


def _blocks(document: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return list(document.get(key, []))


def load_infra(directory: Path = INFRA) -> Infra:
    infra = Infra()
    for path in sorted(directory.glob("*.tf")):
        with path.open(encoding="utf-8") as handle:
            document = hcl2.load(handle, serialization_options=OPTIONS)
        infra.files[path.name] = document
        for block in _blocks(document, "resource"):
            for kind, named in block.items():
                for name, body in named.items():
                    assert (kind, name) not in infra.resources, f"{kind}.{name} twice"
                    infra.resources[(kind, name)] = body
        for block in _blocks(document, "locals"):
            for name, value in block.items():
                assert name not in infra.locals, f"local.{name} twice"
                infra.locals[name] = value
        for block in _blocks(document, "variable"):
            infra.variables.update(block)
        for block in _blocks(document, "output"):
            infra.outputs.update(block)
    return infra


def one(blocks: Any) -> dict[str, Any]:
    """The single nested block hcl2 gives as a one-element list."""
    assert isinstance(blocks, list), blocks
    assert len(blocks) == 1, blocks
    block: dict[str, Any] = blocks[0]
    return block


def dynamic(body: dict[str, Any], name: str) -> dict[str, Any]:
    for block in body.get("dynamic", []):
        if name in block:
            found: dict[str, Any] = block[name]
            return found
    raise AssertionError(f"no dynamic {name!r} block")
