"""stratus.import_graph: what a function can import, read from the source by following code."""

from __future__ import annotations

import textwrap
from pathlib import Path

from stratus.import_graph import reach


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    (root / "shared_layer").mkdir(exist_ok=True)
    (root / "shared_layer" / "__init__.py").touch()
    return root


def third_party(root: Path) -> set[str]:
    return {i.module for i in reach(root, "fn").third_party}


def test_a_lazy_import_counts_only_when_its_function_is_called(tmp_path):
    root = tree(
        tmp_path,
        {
            "shared_layer/lib.py": """
                def used():
                    import used_lib
                def unused():
                    import unused_lib
            """,
            "functions/fn/main.py": """
                from shared_layer.lib import used
                used()
            """,
        },
    )

    assert third_party(root) == {"used_lib"}


def test_a_renamed_import_and_a_module_attribute_are_calls(tmp_path):
    root = tree(
        tmp_path,
        {
            "shared_layer/lib.py": """
                def renamed():
                    import renamed_lib
                def through_module():
                    import module_lib
            """,
            "functions/fn/main.py": """
                from shared_layer import lib
                from shared_layer.lib import renamed as other_name
                other_name()
                lib.through_module()
            """,
        },
    )

    assert third_party(root) == {"renamed_lib", "module_lib"}


def test_a_settings_field_or_a_private_name_elsewhere_calls_no_function(tmp_path):
    root = tree(
        tmp_path,
        {
            "shared_layer/lib.py": """
                def email_backend():
                    import backend_lib
                def _client():
                    import client_lib
            """,
            "functions/fn/main.py": """
                import shared_layer.lib
                class Settings:
                    email_backend: str = "auto"
                def handler(settings, publisher):
                    return settings.email_backend, publisher._client
                handler(Settings(), None)
            """,
        },
    )

    assert third_party(root) == set()


def test_registered_functions_run_and_wrapped_ones_only_when_called(tmp_path):
    root = tree(
        tmp_path,
        {
            "shared_layer/lib.py": """
                import functools
                import functions_framework
                @functions_framework.http
                def entry(request):
                    import registered_lib
                @functools.lru_cache
                def cached():
                    import cached_lib
                class Model:
                    @classmethod
                    def hook(cls):
                        import hook_lib
            """,
            "functions/fn/main.py": "import shared_layer.lib\n",
        },
    )

    assert third_party(root) == {"functions_framework", "registered_lib", "hook_lib"}


def test_type_checking_imports_never_run_and_outside_reaches_are_reported(tmp_path):
    root = tree(
        tmp_path,
        {
            "functions/fn/main.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    import typing_only_lib
                from functions.other.main import handler
                from pydantic import BaseModel, EmailStr
                class Signup(BaseModel):
                    email: EmailStr
            """,
        },
    )
    found = reach(root, "fn")

    assert {i.module for i in found.third_party} == {"pydantic", "email_validator"}
    assert {i.module for i in found.outside} == {"functions.other.main"}
