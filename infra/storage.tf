# The functions' sources (the bundles' zips, named by content hash) and the files bucket.

resource "google_storage_bucket" "sources" {
  name                        = "${var.project_id}-${var.name_prefix}-sources"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true # build artifacts: `stratus bundle` makes them again
  labels                      = { app = "stratus" }

  depends_on = [google_project_service.api]
}

resource "google_storage_bucket" "files" {
  name                        = "${var.project_id}-${var.name_prefix}-files"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = { app = "stratus" }

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.api]
}

resource "google_storage_bucket_iam_member" "files_users" {
  for_each = var.files_bucket_users

  bucket = google_storage_bucket.files.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.function[each.key].email}"
}
