# metrics_cleanup every few minutes: metrics retention and the reaper of lapsed task leases.
# Cloud Scheduler signs an OIDC ID token as the `scheduler` service account for the function's
# URL; Cloud Run admits it (roles/run.invoker, functions.tf) and metrics_cleanup verifies it
# again (issuer, audience, SCHEDULER_SERVICE_ACCOUNT_EMAIL).

resource "google_cloud_scheduler_job" "metrics_cleanup" {
  name             = "${var.name_prefix}-metrics-cleanup"
  description      = "Stratus: delete expired metrics, reap lapsed task leases, republish stuck tasks."
  region           = var.region
  schedule         = var.cleanup_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "${local.functions["metrics_cleanup"].timeout_seconds + 20}s"

  retry_config {
    retry_count = 1 # the next scheduled run catches up anyway
  }

  http_target {
    http_method = "POST"
    uri         = "${local.function_urls["metrics_cleanup"]}/"
    headers     = { "Content-Type" = "application/json" }
    body        = base64encode("{}")

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = local.function_urls["metrics_cleanup"]
    }
  }

  depends_on = [
    google_project_service.api,
    google_cloud_run_v2_service_iam_member.scheduler_invokes_cleanup,
  ]
}
