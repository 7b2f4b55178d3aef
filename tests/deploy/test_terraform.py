"""infra/ (Terraform) against the code: every function deployed with the right trigger and
access, every secret the code reads created and granted to the functions that read it (and to
no other, unless production refuses to start without it), every topic the code publishes to
created, and the database connections of a full scale-out within Cloud SQL's limit."""

from __future__ import annotations

import os
import shutil
import subprocess
import typing
from collections.abc import Callable

import pytest
from pydantic import SecretStr

from shared_layer import config
from shared_layer.config import Settings
from shared_layer.config_checks import production_problems
from stratus.bundle import MANIFEST, build_bundles, discover
from stratus.import_graph import reach
from tests.conftest import BASE_ENV, ROOT
from tests.support.terraform import INFRA, Infra, dynamic, load_infra, one

# DESIGN.md's table of capabilities: all of them are deployed, whether or not their code exists.
DESIGN_FUNCTIONS = {
    "auth": "http",
    "agents": "http",
    "task_runner": "pubsub",
    "billing": "http",
    "stripe_webhook": "http",
    "sendgrid_webhook": "http",
    "health": "http",
    "metrics_cleanup": "scheduler",
}
# Config accessors whose dataclasses carry secrets under other names (shared_layer/config.py).
ACCESSOR_SECRETS = {
    "get_stripe_config": {
        "secret_key": "stripe_secret_key",
        "webhook_secret": "stripe_webhook_secret",
    },
    "get_openai_config": {"api_key": "openai_api_key"},
    "get_sendgrid_config": {"api_key": "sendgrid_api_key"},
}


@pytest.fixture(scope="module")
def infra() -> Infra:
    return load_infra()


def secret_fields() -> dict[str, str]:
    """Every SecretStr setting -> its environment variable."""
    found = {}
    for name, info in Settings.model_fields.items():
        if info.annotation is SecretStr or SecretStr in typing.get_args(info.annotation):
            found[name] = (info.alias or name).upper()
    return found


def secrets_read_by(function: str) -> set[str]:
    """Environment names of the secrets the function's code can read (the settings and their
    production checks aside: they read every setting)."""
    fields = secret_fields()
    read: set[str] = set()
    for module, names in reach(ROOT, function).names.items():
        if module in ("shared_layer.config", "shared_layer.config_checks"):
            continue
        read |= {env for field, env in fields.items() if field in names}
        for accessor, attributes in ACCESSOR_SECRETS.items():
            if accessor in names:
                read |= {fields[f] for attr, f in attributes.items() if attr in names}
    return read


def test_the_accessor_table_names_every_secret_the_config_dataclasses_carry():
    for accessor, attributes in ACCESSOR_SECRETS.items():
        dataclass_type = typing.get_type_hints(getattr(config, accessor))["return"]
        hints = typing.get_type_hints(dataclass_type)
        carried = {n for n, t in hints.items() if SecretStr in (t, *typing.get_args(t))}
        assert carried == set(attributes), accessor


def test_every_function_in_the_design_and_in_functions_has_a_cloud_function(infra):
    deployed = set(infra.functions())

    assert deployed == set(DESIGN_FUNCTIONS)
    assert set(discover(ROOT)) <= deployed
    assert set(infra.locals["access"]) == set(infra.locals["function_secrets"]) == deployed
    function = infra.resource("google_cloudfunctions2_function", "function")
    assert function["for_each"] == "${local.functions}"
    build = one(function["build_config"])
    assert build["runtime"] == "python312"
    assert build["entry_point"] == "${each.key}"  # the Python function is named like the folder
    source = one(one(build["source"])["storage_source"])
    assert source["object"] == "${google_storage_bucket_object.bundle[each.key].name}"


def test_every_function_gets_a_service_account_and_its_scaling_settings(infra):
    service = one(infra.resource("google_cloudfunctions2_function", "function")["service_config"])

    assert service["service_account_email"] == "${google_service_account.function[each.key].email}"
    assert service["max_instance_count"] == "${each.value.max_instances}"
    assert service["min_instance_count"] == "${each.value.min_instances}"
    assert service["max_instance_request_concurrency"] == "${each.value.concurrency}"
    assert infra.resource("google_service_account", "function")["for_each"] == "${local.functions}"
    for name, settings in infra.functions().items():
        assert settings["min_instances"] == 0, f"{name} would cost money while idle"
        assert infra.environment(name)["DATABASE_POOL_SIZE"] == str(settings["db_pool_size"])


def test_each_trigger_and_access_matches_the_design(infra):
    access = infra.locals["access"]
    function = infra.resource("google_cloudfunctions2_function", "function")

    assert {name: a["trigger"] for name, a in access.items()} == DESIGN_FUNCTIONS
    assert access["stripe_webhook"]["public"]
    assert access["sendgrid_webhook"]["public"]
    assert not access["task_runner"]["public"]
    assert not access["metrics_cleanup"]["public"]
    public = infra.resource("google_cloud_run_v2_service_iam_member", "public")
    assert public["member"] == "allUsers"
    assert "if a.public" in public["for_each"]

    trigger = dynamic(function, "event_trigger")
    assert '.trigger == "pubsub"' in trigger["for_each"]
    assert "google_pubsub_topic.tasks.id" in trigger["for_each"]
    content = one(trigger["content"])
    assert content["event_type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert content["retry_policy"] == "RETRY_POLICY_RETRY"
    assert content["service_account_email"] == "${google_service_account.eventarc.email}"
    invoker = infra.resource(
        "google_cloud_run_v2_service_iam_member", "eventarc_invokes_task_runner"
    )
    assert '["task_runner"]' in invoker["name"]
    assert "eventarc" in invoker["member"]


def test_cloud_scheduler_calls_metrics_cleanup_with_a_token_it_accepts(infra):
    job = infra.resource("google_cloud_scheduler_job", "metrics_cleanup")
    target = one(job["http_target"])
    token = one(target["oidc_token"])
    environment = infra.locals["function_environment"]["metrics_cleanup"]

    assert target["http_method"] == "POST"
    assert target["uri"].startswith('${local.function_urls["metrics_cleanup"]}')
    assert token["service_account_email"] == "${google_service_account.scheduler.email}"
    # the audience the token is minted for is the one metrics_cleanup verifies, for that identity
    assert token["audience"] == environment["SCHEDULER_OIDC_AUDIENCE"]
    assert environment["SCHEDULER_SERVICE_ACCOUNT_EMAIL"] == token["service_account_email"]
    invoker = infra.resource("google_cloud_run_v2_service_iam_member", "scheduler_invokes_cleanup")
    assert '["metrics_cleanup"]' in invoker["name"]
    assert "scheduler" in invoker["member"]


def test_every_secret_the_code_reads_exists_and_is_granted_to_the_functions_that_read_it(infra):
    granted = infra.locals["function_secrets"]
    created = {s for secrets in granted.values() for s in secrets}

    assert created == set(secret_fields().values())  # every SecretStr setting has a secret
    assert set(config.SECRET_FIELDS) == set(secret_fields())
    for function in discover(ROOT):
        missing = secrets_read_by(function) - set(granted[function])
        assert not missing, f"{function} reads {sorted(missing)} but is not given them"
    grants = infra.resource("google_secret_manager_secret_iam_member", "reads")
    assert grants["for_each"] == "${local.secret_grants}"
    assert grants["role"] == "roles/secretmanager.secretAccessor"
    assert "google_service_account.function[each.value.function]" in grants["member"]
    service = one(infra.resource("google_cloudfunctions2_function", "function")["service_config"])
    wired = dynamic(service, "secret_environment_variables")
    assert wired["for_each"] == "${toset(local.wired_secrets[each.key])}"


def _production_env(
    infra: Infra, function: str, settings_env: Callable[..., None], *, without: str | None = None
) -> list[str]:
    secrets = {
        "JWT_SECRET": "j" * 64,
        "DB_PASSWORD": "generated-by-terraform-0123456789",
        "OPENAI_API_KEY": "sk-proj-" + "o" * 40,
        "STRIPE_SECRET_KEY": "sk_live_" + "s" * 40,
        "STRIPE_WEBHOOK_SECRET": "whsec_" + "w" * 32,
        "SENDGRID_API_KEY": "SG." + "g" * 40,
    }
    environment = infra.environment(function)
    environment |= {
        s: secrets[s] for s in infra.locals["function_secrets"][function] if s != without
    }
    unset = {key: None for key in [*BASE_ENV, "DATABASE_URL", *secrets] if key not in environment}
    settings_env(**unset, **environment)
    return production_problems(Settings())


@pytest.mark.parametrize("function", sorted(DESIGN_FUNCTIONS))
def test_each_function_starts_in_production_with_what_terraform_gives_it(
    function, infra, settings_env
):
    assert _production_env(infra, function, settings_env) == []


@pytest.mark.parametrize("function", sorted(DESIGN_FUNCTIONS))
def test_a_secret_granted_but_not_read_is_one_production_cannot_start_without(
    function, infra, settings_env
):
    if function not in discover(ROOT):
        pytest.skip(f"functions/{function} does not exist yet")
    for secret in sorted(
        set(infra.locals["function_secrets"][function]) - secrets_read_by(function)
    ):
        problems = _production_env(infra, function, settings_env, without=secret)
        assert any(secret in p for p in problems), f"{function} need not be given {secret}"


def test_every_topic_the_code_publishes_to_exists_and_the_publishers_may_publish(infra):
    topic = infra.resource("google_pubsub_topic", "tasks")
    publishers = set(infra.locals["publishers"])

    assert Settings().tasks_topic == topic["name"].replace("${var.name_prefix}", "stratus")
    for function in discover(ROOT):
        publishes = any("publish_task" in n for n in reach(ROOT, function).names.values())
        assert publishes == (function in publishers), function
        if publishes:
            assert infra.environment(function)["TASKS_TOPIC"] == "<google_pubsub_topic.tasks.name>"
    grant = infra.resource("google_pubsub_topic_iam_member", "publishers")
    assert grant["for_each"] == "${toset(local.publishers)}"
    assert grant["topic"] == "${google_pubsub_topic.tasks.id}"
    assert grant["role"] == "roles/pubsub.publisher"


def test_undeliverable_tasks_go_to_a_dead_letter_topic_the_service_agent_can_use(infra):
    dead_letter = infra.resource("terraform_data", "task_runner_dead_letter")
    provisioner = one(dead_letter["provisioner"])["local-exec"]
    script = INFRA / provisioner["command"].replace("${path.module}/", "")
    subscription = infra.resource("google_pubsub_subscription", "tasks_dead_letter")
    publisher = infra.resource("google_pubsub_topic_iam_member", "dead_letter_publisher")

    assert script.is_file()
    assert os.access(script, os.X_OK)
    assert "--dead-letter-topic" in script.read_text()
    assert "roles/pubsub.subscriber" in script.read_text()
    assert (
        provisioner["environment"]["MAX_DELIVERY_ATTEMPTS"]
        == "${tostring(var.task_max_delivery_attempts)}"
    )
    assert subscription["topic"] == "${google_pubsub_topic.tasks_dead_letter.id}"
    assert publisher["role"] == "roles/pubsub.publisher"
    assert publisher["member"] == "${local.pubsub_service_agent}"
    assert "gcp-sa-pubsub" in infra.locals["pubsub_service_agent"]
    # a task fails for good after TASK_MAX_ATTEMPTS runs: Pub/Sub must allow at least those
    assert infra.default("task_max_delivery_attempts") > Settings().task_max_attempts


def test_connections_at_full_scale_out_stay_within_cloud_sql_max_connections(infra):
    instance = infra.resource("google_sql_database_instance", "main")
    flags = one(instance["settings"])["database_flags"]
    max_connections = [f for f in flags if f["name"] == "max_connections"]
    needed = sum(f["max_instances"] * f["db_pool_size"] for f in infra.functions().values())

    assert [f["value"] for f in max_connections] == ["${tostring(var.db_max_connections)}"]
    assert needed <= infra.default("db_max_connections") - infra.default("db_reserved_connections")
    assert infra.default("db_reserved_connections") >= 3  # superuser_reserved_connections
    check = one(one(instance["lifecycle"])["precondition"])
    assert "local.db_connections_needed <= local.db_connections_budget" in check["condition"]
    for name, settings in infra.functions().items():  # a pool no larger than the threads
        assert (
            settings["db_pool_size"] <= settings["concurrency"] or settings["db_pool_size"] <= 2
        ), name


def test_functions_hold_no_project_role_but_the_cloud_sql_client(infra):
    for (kind, name), body in infra.resources.items():
        if kind == "google_project_iam_member" and "google_service_account.function" in str(body):
            assert body["role"] == "roles/cloudsql.client", name
        assert body.get("role") not in ("roles/owner", "roles/editor"), f"{kind}.{name}"


def test_the_source_object_is_named_by_the_content_hash_stratus_bundle_writes(infra, tmp_path):
    obj = infra.resource("google_storage_bucket_object", "bundle")
    build_bundles(["health"], out=tmp_path, root=ROOT)
    manifest = __import__("json").loads((tmp_path / MANIFEST).read_text())

    assert "local.bundles.bundles[each.key].sha256" in obj["name"]
    assert obj["source"] == "${var.bundle_dir}/${each.key}.zip"
    assert infra.locals["bundles"] == '${jsondecode(file("${var.bundle_dir}/bundles.json"))}'
    assert len(manifest["bundles"]["health"]["sha256"]) == 64
    assert manifest["runtime"] == "python312"


def test_every_variable_and_output_is_documented(infra):
    for kind, entries in (("variable", infra.variables), ("output", infra.outputs)):
        for name, body in entries.items():
            assert str(body.get("description", "")).strip(), f"{kind} {name} has no description"


def test_terraform_fmt_finds_nothing_to_change():
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not installed here; the HCL parsed above with python-hcl2")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-list=true", str(INFRA)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
