output "function_urls" {
  description = "HTTPS address of each function (the public ones are the API the front end calls)."
  value       = { for name, f in google_cloudfunctions2_function.function : name => f.service_config[0].uri }
}

output "service_accounts" {
  description = "Service account e-mail of each function."
  value       = { for name, sa in google_service_account.function : name => sa.email }
}

output "cloud_sql_instance" {
  description = "CLOUD_SQL_INSTANCE (project:region:instance), for `stratus migrate` and Cloud Build's _DB_INSTANCE."
  value       = google_sql_database_instance.main.connection_name
}

output "secrets" {
  description = "Secret Manager secrets: add a version to each (DB_PASSWORD has one already)."
  value       = sort(keys(google_secret_manager_secret.secret))
}

output "tasks_topic" {
  description = "Pub/Sub topic of task ids."
  value       = google_pubsub_topic.tasks.id
}

output "dead_letter_subscription" {
  description = "Where task messages that could not be delivered wait (7 days): pull them to inspect."
  value       = google_pubsub_subscription.tasks_dead_letter.id
}

output "files_bucket" {
  description = "Bucket for files (GCS_BUCKET)."
  value       = google_storage_bucket.files.name
}

output "sources_bucket" {
  description = "Bucket of the function bundles."
  value       = google_storage_bucket.sources.name
}

output "db_connections" {
  description = "Connections the functions can open at full scale-out, and the budget they must stay within."
  value       = { needed = local.db_connections_needed, budget = local.db_connections_budget }
}
