# Secret Manager: one secret per secret setting (the SecretStr fields of shared_layer/config.py),
# named like the variable it fills, so the opt-in Secret Manager settings source
# (SECRET_MANAGER_PROJECT, for the CLI and migrations) finds the same ones.
#
# Values are not in Terraform, DB_PASSWORD aside (generated in database.tf): add each version
# with gcloud (README, "Deploy to Google Cloud"). The functions get them as environment
# variables resolved by the platform before the process starts (no Secret Manager call, no
# google-cloud import at cold start), each function only the ones it reads, each granted
# roles/secretmanager.secretAccessor on those secrets alone.

locals {
  secret_names = sort(distinct(flatten(values(local.function_secrets))))

  wired_secrets = {
    for name, secrets in local.function_secrets :
    name => [for secret in secrets : secret if !contains(var.unset_secrets, secret)]
  }

  secret_version = {
    for secret in local.secret_names : secret => (
      secret == "DB_PASSWORD"
      ? google_secret_manager_secret_version.db_password.version
      : lookup(var.secret_versions, secret, "latest")
    )
  }

  secret_grants = merge([
    for name, secrets in local.wired_secrets : {
      for secret in secrets : "${name}/${secret}" => { function = name, secret = secret }
    }
  ]...)
}

resource "google_secret_manager_secret" "secret" {
  for_each = toset(local.secret_names)

  secret_id = each.key
  labels    = { app = "stratus" }

  replication {
    auto {}
  }

  depends_on = [google_project_service.api]
}

resource "google_secret_manager_secret_iam_member" "reads" {
  for_each = local.secret_grants

  secret_id = google_secret_manager_secret.secret[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.function[each.value.function].email}"
}
