# One Cloud Function (2nd gen) per function, built from the bundle `stratus bundle` wrote.
# The source object is named by the bundle's content hash, so a changed bundle is a new object
# and a new revision, and an unchanged one redeploys nothing.

locals {
  bundles = jsondecode(file("${var.bundle_dir}/bundles.json"))

  # Settings every function gets (docs/configuration.md); the secrets come in secrets.tf.
  common_environment = {
    STRATUS_ENV          = "production"
    LOG_LEVEL            = var.log_level
    GOOGLE_CLOUD_PROJECT = var.project_id
    CLOUD_SQL_INSTANCE   = google_sql_database_instance.main.connection_name
    DB_USER              = google_sql_user.stratus.name
    DB_NAME              = google_sql_database.stratus.name
    PUBSUB_MODE          = "gcp"
    TASKS_TOPIC          = google_pubsub_topic.tasks.name
    CORS_ORIGINS         = join(",", var.cors_origins)
    # Cloud Run's front end appends the caller's address to X-Forwarded-For: the one entry to
    # trust (sign-in throttling counts by it; a load balancer in front would add a second).
    TRUSTED_PROXY_HOPS = "1"
    # Functions that never call a model say so: production then needs no OpenAI key there.
    LLM_PROVIDER = "offline"
  }

  function_environment = {
    task_runner = { LLM_PROVIDER = "openai", OPENAI_MODEL = var.openai_model }
    health      = { LLM_PROVIDER = "openai", OPENAI_MODEL = var.openai_model }
    billing = {
      STRIPE_PUBLISHABLE_KEY    = var.stripe_publishable_key
      STRIPE_PRICE_PRO          = lookup(var.stripe_prices, "pro", "")
      STRIPE_PRICE_TEAM         = lookup(var.stripe_prices, "team", "")
      BILLING_SUCCESS_URL       = lookup(var.billing_urls, "success", "")
      BILLING_CANCEL_URL        = lookup(var.billing_urls, "cancel", "")
      BILLING_PORTAL_RETURN_URL = lookup(var.billing_urls, "portal_return", "")
    }
    auth = {
      SENDGRID_FROM_EMAIL = lookup(var.sendgrid_from, "email", "")
      SENDGRID_FROM_NAME  = lookup(var.sendgrid_from, "name", "")
    }
    stripe_webhook = {
      SENDGRID_FROM_EMAIL = lookup(var.sendgrid_from, "email", "")
      SENDGRID_FROM_NAME  = lookup(var.sendgrid_from, "name", "")
    }
    sendgrid_webhook = { SENDGRID_WEBHOOK_PUBLIC_KEY = var.sendgrid_webhook_public_key }
    metrics_cleanup = {
      SCHEDULER_SERVICE_ACCOUNT_EMAIL = google_service_account.scheduler.email
      SCHEDULER_OIDC_AUDIENCE         = local.function_urls["metrics_cleanup"]
    }
  }

  # Empty values are left out, so the settings' defaults apply.
  environment = {
    for name, f in local.functions : name => {
      for key, value in merge(
        local.common_environment,
        lookup(local.function_environment, name, {}),
        contains(var.files_bucket_users, name) ? { GCS_BUCKET = google_storage_bucket.files.name } : {},
        {
          DATABASE_POOL_SIZE = tostring(f.db_pool_size)
          THREADS            = tostring(f.concurrency) # gunicorn threads = requests in flight
        },
      ) : key => value if value != ""
    }
  }
}

resource "google_storage_bucket_object" "bundle" {
  for_each = local.functions

  bucket       = google_storage_bucket.sources.name
  name         = "${each.key}-${try(local.bundles.bundles[each.key].sha256, "missing")}.zip"
  source       = "${var.bundle_dir}/${each.key}.zip"
  content_type = "application/zip"

  lifecycle {
    precondition {
      condition     = can(local.bundles.bundles[each.key].sha256) && local.bundles.runtime == "python312"
      error_message = "${var.bundle_dir}/bundles.json has no python312 bundle of ${each.key}: run `stratus bundle` first."
    }
  }
}

resource "google_cloudfunctions2_function" "function" {
  for_each = local.functions

  name        = local.service_names[each.key]
  location    = var.region
  description = "Stratus ${each.key} (${local.access[each.key].trigger})"
  labels      = { app = "stratus", function = replace(each.key, "_", "-") }

  build_config {
    runtime         = "python312"
    entry_point     = each.key
    service_account = google_service_account.builder.id

    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.bundle[each.key].name
      }
    }
  }

  service_config {
    available_memory                 = each.value.memory
    available_cpu                    = each.value.cpu
    timeout_seconds                  = each.value.timeout_seconds
    max_instance_request_concurrency = each.value.concurrency
    min_instance_count               = each.value.min_instances
    max_instance_count               = each.value.max_instances
    # Eventarc's pushes are internal traffic; Cloud Scheduler and the public reach the rest,
    # where IAM (below) decides who may invoke.
    ingress_settings               = local.access[each.key].trigger == "pubsub" ? "ALLOW_INTERNAL_ONLY" : "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.function[each.key].email
    environment_variables          = local.environment[each.key]

    dynamic "secret_environment_variables" {
      for_each = toset(local.wired_secrets[each.key])

      content {
        key        = secret_environment_variables.value
        project_id = var.project_id
        secret     = google_secret_manager_secret.secret[secret_environment_variables.value].secret_id
        version    = local.secret_version[secret_environment_variables.value]
      }
    }
  }

  # task_runner: Eventarc delivers each message of the tasks topic as a CloudEvent and, when
  # the function raises (a transient failure), delivers it again; pubsub.tf adds the limit and
  # the dead-letter topic.
  dynamic "event_trigger" {
    for_each = local.access[each.key].trigger == "pubsub" ? [google_pubsub_topic.tasks.id] : []

    content {
      trigger_region        = var.region
      event_type            = "google.cloud.pubsub.topic.v1.messagePublished"
      pubsub_topic          = event_trigger.value
      retry_policy          = "RETRY_POLICY_RETRY"
      service_account_email = google_service_account.eventarc.email
    }
  }

  depends_on = [
    google_project_service.api,
    google_secret_manager_secret_iam_member.reads,
    google_project_iam_member.builder,
  ]
}

# Who may invoke. Public functions: anyone (they authenticate callers themselves).
resource "google_cloud_run_v2_service_iam_member" "public" {
  for_each = { for name, a in local.access : name => a if a.public }

  location = var.region
  name     = google_cloudfunctions2_function.function[each.key].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloud_run_v2_service_iam_member" "eventarc_invokes_task_runner" {
  location = var.region
  name     = google_cloudfunctions2_function.function["task_runner"].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.eventarc.email}"
}

resource "google_cloud_run_v2_service_iam_member" "scheduler_invokes_cleanup" {
  location = var.region
  name     = google_cloudfunctions2_function.function["metrics_cleanup"].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}
