# Stratus on Google Cloud.
#
#   functions.tf   one Cloud Function (2nd gen, python312) per function, from the bundles that
#                  `stratus bundle` built; who may invoke each
#   iam.tf         one service account per function with only the roles it needs; the
#                  identities of Eventarc, Cloud Scheduler and the function builds
#   secrets.tf     Secret Manager: every secret the code reads, granted to the functions that
#                  read it and injected as environment variables (docs/configuration.md)
#   database.tf    Cloud SQL for PostgreSQL, its database and user (password generated here)
#   pubsub.tf      the tasks topic (Eventarc -> task_runner, retried), its dead-letter topic
#   scheduler.tf   Cloud Scheduler -> metrics_cleanup with an OIDC token
#   storage.tf     the bucket of function sources and the bucket for files
#
# The tables below are the one place that says how each function is reached and what it
# reads; tests/deploy/test_terraform.py checks them against the code.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  # How each function is triggered (DESIGN.md) and whether anyone on the internet may call it.
  # auth, agents, billing and health are called by the SaaS front end from browsers with
  # Stratus's own bearer tokens, so they cannot sit behind Google IAM (which wants a Google ID
  # token in the same Authorization header): they are public at the IAM level and every route
  # but the public ones checks the Stratus token itself. The webhooks are called by Stripe and
  # SendGrid and verify signatures. task_runner (Eventarc) and metrics_cleanup (Cloud
  # Scheduler, OIDC) are private: only their service accounts may invoke them.
  access = {
    auth             = { trigger = "http", public = true }
    agents           = { trigger = "http", public = true }
    task_runner      = { trigger = "pubsub", public = false }
    billing          = { trigger = "http", public = true }
    stripe_webhook   = { trigger = "http", public = true }
    sendgrid_webhook = { trigger = "http", public = true }
    health           = { trigger = "http", public = true }
    metrics_cleanup  = { trigger = "scheduler", public = false }
  }

  # Secrets each function reads. JWT_SECRET goes to all of them: production refuses to start
  # any function without it (shared_layer/config.py, production_problems).
  function_secrets = {
    auth             = ["JWT_SECRET", "DB_PASSWORD", "SENDGRID_API_KEY"]
    agents           = ["JWT_SECRET", "DB_PASSWORD"]
    task_runner      = ["JWT_SECRET", "DB_PASSWORD", "OPENAI_API_KEY"]
    billing          = ["JWT_SECRET", "DB_PASSWORD", "STRIPE_SECRET_KEY"]
    stripe_webhook   = ["JWT_SECRET", "DB_PASSWORD", "STRIPE_WEBHOOK_SECRET", "SENDGRID_API_KEY"]
    sendgrid_webhook = ["JWT_SECRET", "DB_PASSWORD"]
    health           = ["JWT_SECRET", "DB_PASSWORD", "OPENAI_API_KEY"]
    metrics_cleanup  = ["JWT_SECRET", "DB_PASSWORD"]
  }

  # Functions that publish task ids to the tasks topic (agents on submit, metrics_cleanup when
  # it republishes a task left queued).
  publishers = ["agents", "metrics_cleanup"]

  # function_defaults with function_overrides applied, field by field.
  functions = {
    for name, defaults in var.function_defaults : name => merge(
      defaults,
      { for field, value in lookup(var.function_overrides, name, {}) : field => value if value != null },
    )
  }

  # Cloud Run service names are lowercase with hyphens; the Python entry point keeps its name.
  service_names = { for name in keys(local.functions) : name => "${var.name_prefix}-${replace(name, "_", "-")}" }

  # Cloud Run's deterministic URL of a function, known before it exists (metrics_cleanup is
  # told its own URL: the audience of the OIDC tokens it accepts).
  function_urls = {
    for name, service in local.service_names :
    name => "https://${service}-${data.google_project.this.number}.${var.region}.run.app"
  }

  # Connections the functions can open at most, and what Cloud SQL allows them.
  db_connections_needed = sum([for f in values(local.functions) : f.max_instances * f.db_pool_size])
  db_connections_budget = var.db_max_connections - var.db_reserved_connections

  apis = [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "eventarc.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "sqladmin.googleapis.com",
    "storage.googleapis.com",
  ]
}

resource "google_project_service" "api" {
  for_each = toset(local.apis)

  service            = each.key
  disable_on_destroy = false
}
