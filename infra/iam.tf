# Identities. Each function runs as its own service account holding only what it uses:
#   every function    roles/cloudsql.client (the connector) and, in secrets.tf, read access to
#                     its own secrets
#   agents,           roles/pubsub.publisher on the tasks topic (pubsub.tf)
#   metrics_cleanup
#   files_bucket_users  roles/storage.objectUser on the files bucket (storage.tf)
# Eventarc pushes to task_runner as `eventarc`, Cloud Scheduler calls metrics_cleanup as
# `scheduler`, and Cloud Build builds the functions' images as `builder`.

resource "google_service_account" "function" {
  for_each = local.functions

  account_id   = local.service_names[each.key]
  display_name = "Stratus ${each.key}"
  description  = "Runs the ${each.key} function; holds only the roles it needs (infra/iam.tf)."
}

resource "google_project_iam_member" "cloudsql_client" {
  for_each = local.functions

  project = var.project_id
  role    = "roles/cloudsql.client"
  member  = "serviceAccount:${google_service_account.function[each.key].email}"
}

resource "google_service_account" "eventarc" {
  account_id   = "${var.name_prefix}-eventarc"
  display_name = "Stratus Eventarc trigger"
  description  = "Pushes tasks topic messages to task_runner."
}

resource "google_project_iam_member" "eventarc_receiver" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = "serviceAccount:${google_service_account.eventarc.email}"
}

resource "google_service_account" "scheduler" {
  account_id   = "${var.name_prefix}-scheduler"
  display_name = "Stratus Cloud Scheduler"
  description  = "Calls metrics_cleanup with an OIDC token; metrics_cleanup accepts no other Google identity."
}

resource "google_service_account" "builder" {
  account_id   = "${var.name_prefix}-builder"
  display_name = "Stratus function builds"
  description  = "Cloud Build identity that turns the bundles into the functions' container images."
}

resource "google_project_iam_member" "builder" {
  for_each = toset([
    "roles/artifactregistry.writer",
    "roles/logging.logWriter",
    "roles/storage.objectViewer",
  ])

  project = var.project_id
  role    = each.key
  member  = "serviceAccount:${google_service_account.builder.email}"
}
