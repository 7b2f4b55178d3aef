# Cloud SQL for PostgreSQL. The functions reach it through the Cloud SQL Python Connector
# (CLOUD_SQL_INSTANCE): an IAM-authorised, mutually authenticated TLS tunnel to the instance's
# public address, with no authorised networks, so nothing else can connect. That needs no VPC
# connector (which would cost money while idle); roles/cloudsql.client is the key.

resource "google_sql_database_instance" "main" {
  name                = "${var.name_prefix}-postgres"
  database_version    = var.db_version
  region              = var.region
  deletion_protection = var.db_deletion_protection

  settings {
    tier              = var.db_tier
    edition           = "ENTERPRISE"
    availability_type = var.db_availability_type
    disk_type         = "PD_SSD"
    disk_size         = var.db_disk_size_gb
    disk_autoresize   = true
    user_labels       = { app = "stratus" }

    ip_configuration {
      ipv4_enabled = true
      ssl_mode     = "TRUSTED_CLIENT_CERTIFICATE_REQUIRED" # only the connector's certificates
    }

    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
      start_time                     = "02:00"
      transaction_log_retention_days = 7

      backup_retention_settings {
        retained_backups = 14
      }
    }

    maintenance_window {
      day          = 7
      hour         = 3
      update_track = "stable"
    }

    database_flags {
      name  = "max_connections"
      value = tostring(var.db_max_connections)
    }
  }

  lifecycle {
    # Each instance of a function holds up to db_pool_size connections: at full scale-out the
    # functions must not be able to exhaust the server.
    precondition {
      condition     = local.db_connections_needed <= local.db_connections_budget
      error_message = "The functions could open ${local.db_connections_needed} connections (max_instances x db_pool_size) but only ${local.db_connections_budget} are available (db_max_connections - db_reserved_connections)."
    }
  }

  depends_on = [google_project_service.api]
}

resource "google_sql_database" "stratus" {
  name     = "stratus"
  instance = google_sql_database_instance.main.name
}

# The password lives in the Terraform state (keep the state bucket private) and in Secret
# Manager, whence the functions and the migration step read it.
resource "random_password" "db" {
  length  = 32
  special = false
}

resource "google_sql_user" "stratus" {
  name     = "stratus"
  instance = google_sql_database_instance.main.name
  password = random_password.db.result
}

resource "google_secret_manager_secret_version" "db_password" {
  secret      = google_secret_manager_secret.secret["DB_PASSWORD"].id
  secret_data = random_password.db.result
}
