# Tasks: agents publishes a task id to the tasks topic; Eventarc (functions.tf, task_runner's
# event_trigger) pushes each message to task_runner as a CloudEvent and pushes it again while
# task_runner raises. After task_max_delivery_attempts deliveries a message goes to the
# dead-letter topic, whose subscription keeps it 7 days for inspection (and metrics_cleanup
# republishes a task still queued, so a dead-lettered id is not a lost task).

resource "google_pubsub_topic" "tasks" {
  name                       = "${var.name_prefix}-tasks"
  labels                     = { app = "stratus" }
  message_retention_duration = "86400s"

  depends_on = [google_project_service.api]
}

resource "google_pubsub_topic" "tasks_dead_letter" {
  name   = "${var.name_prefix}-tasks-dead-letter"
  labels = { app = "stratus" }

  depends_on = [google_project_service.api]
}

resource "google_pubsub_subscription" "tasks_dead_letter" {
  name                       = "${var.name_prefix}-tasks-dead-letter"
  topic                      = google_pubsub_topic.tasks_dead_letter.id
  labels                     = { app = "stratus" }
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = "" # never expires, however long nothing reads it
  }
}

locals {
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

# The Pub/Sub service agent forwards undeliverable messages: it must publish to the dead-letter
# topic (and subscribe to the source subscription: granted below with it).
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  topic  = google_pubsub_topic.tasks_dead_letter.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

# It also signs the OIDC token of each push to task_runner as the Eventarc identity.
resource "google_service_account_iam_member" "pubsub_signs_for_eventarc" {
  service_account_id = google_service_account.eventarc.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

resource "google_pubsub_topic_iam_member" "publishers" {
  for_each = toset(local.publishers)

  topic  = google_pubsub_topic.tasks.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.function[each.key].email}"
}

# Eventarc creates the push subscription of task_runner's trigger itself, and neither Eventarc
# nor Terraform can set its dead-letter policy; infra/scripts/dead-letter.sh does, with gcloud
# (needed where terraform runs), and grants the service agent roles/pubsub.subscriber on that
# subscription alone. It runs again whenever the trigger, the topic or the limit changes.
resource "terraform_data" "task_runner_dead_letter" {
  triggers_replace = [
    google_cloudfunctions2_function.function["task_runner"].event_trigger[0].trigger,
    google_pubsub_topic.tasks_dead_letter.id,
    var.task_max_delivery_attempts,
  ]

  provisioner "local-exec" {
    command = "${path.module}/scripts/dead-letter.sh"
    environment = {
      PROJECT               = var.project_id
      TRIGGER               = google_cloudfunctions2_function.function["task_runner"].event_trigger[0].trigger
      DEAD_LETTER_TOPIC     = google_pubsub_topic.tasks_dead_letter.id
      MAX_DELIVERY_ATTEMPTS = tostring(var.task_max_delivery_attempts)
      PUBSUB_SERVICE_AGENT  = local.pubsub_service_agent
    }
  }

  depends_on = [google_pubsub_topic_iam_member.dead_letter_publisher]
}
