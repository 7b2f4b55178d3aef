# Stratus on Google Cloud — SKELETON.
#
# Only the provider and its inputs exist so far; `terraform plan` creates nothing. Issue 5
# adds, in this directory:
#   - Cloud SQL for PostgreSQL (private IP) and its database and user
#   - Secret Manager secrets (JWT_SECRET, DB_PASSWORD, OPENAI_API_KEY, Stripe, SendGrid)
#   - the Pub/Sub tasks topic, its dead-letter topic and the Eventarc trigger for task_runner
#   - one service account per function with only the roles it needs
#   - the Cloud Functions (2nd gen) from the bundles cloudbuild.yaml builds
#   - Cloud Scheduler (OIDC) for metrics_cleanup, and the storage bucket for files

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
