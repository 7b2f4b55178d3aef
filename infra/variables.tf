# Inputs. Only project_id is required; every other default is a small production setup
# (README, "Deploy to Google Cloud", says what each piece costs at idle).

variable "project_id" {
  description = "Google Cloud project that hosts Stratus (one project per environment: secret names are fixed)."
  type        = string
}

variable "region" {
  description = "Region of the functions, Cloud SQL, the buckets, Pub/Sub triggers and Cloud Scheduler."
  type        = string
  default     = "europe-west1"
}

variable "name_prefix" {
  description = "Prefix of every resource name (functions are <prefix>-<function>, e.g. stratus-task-runner)."
  type        = string
  default     = "stratus"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,11}$", var.name_prefix))
    error_message = "name_prefix: 2-12 characters, lowercase letters, digits and hyphens, starting with a letter (service account ids allow 30 characters in all)."
  }
}

variable "bundle_dir" {
  description = "Directory `stratus bundle` wrote: <function>.zip per function and bundles.json (content hashes)."
  type        = string
  default     = "../build"
}

# -- functions --------------------------------------------------------------------------------

variable "function_defaults" {
  description = <<-EOT
    Per function: memory, cpu, timeout_seconds, concurrency (requests per instance, also the
    gunicorn threads), min_instances / max_instances, and db_pool_size (database connections per
    instance: DATABASE_POOL_SIZE). The sum of max_instances x db_pool_size must stay below
    db_max_connections - db_reserved_connections (checked at plan time). Change single values
    with function_overrides rather than copying this map.
  EOT
  type = map(object({
    memory          = string
    cpu             = string
    timeout_seconds = number
    concurrency     = number
    min_instances   = number
    max_instances   = number
    db_pool_size    = number
  }))
  default = {
    auth             = { memory = "512Mi", cpu = "1", timeout_seconds = 60, concurrency = 4, min_instances = 0, max_instances = 4, db_pool_size = 4 }
    agents           = { memory = "512Mi", cpu = "1", timeout_seconds = 60, concurrency = 4, min_instances = 0, max_instances = 4, db_pool_size = 4 }
    task_runner      = { memory = "512Mi", cpu = "1", timeout_seconds = 300, concurrency = 1, min_instances = 0, max_instances = 8, db_pool_size = 2 }
    billing          = { memory = "512Mi", cpu = "1", timeout_seconds = 60, concurrency = 4, min_instances = 0, max_instances = 2, db_pool_size = 4 }
    stripe_webhook   = { memory = "512Mi", cpu = "1", timeout_seconds = 60, concurrency = 4, min_instances = 0, max_instances = 2, db_pool_size = 4 }
    sendgrid_webhook = { memory = "512Mi", cpu = "1", timeout_seconds = 120, concurrency = 4, min_instances = 0, max_instances = 2, db_pool_size = 4 }
    health           = { memory = "512Mi", cpu = "1", timeout_seconds = 30, concurrency = 4, min_instances = 0, max_instances = 2, db_pool_size = 2 }
    metrics_cleanup  = { memory = "512Mi", cpu = "1", timeout_seconds = 300, concurrency = 1, min_instances = 0, max_instances = 1, db_pool_size = 2 }
  }

  validation {
    condition = alltrue([
      for f in values(var.function_defaults) :
      f.min_instances <= f.max_instances && f.db_pool_size >= 1 && (f.concurrency == 1 || tonumber(f.cpu) >= 1)
    ])
    error_message = "function_defaults: min_instances <= max_instances, db_pool_size >= 1, and a concurrency above 1 needs cpu >= 1."
  }
}

variable "function_overrides" {
  description = "Changes to function_defaults, by function and field, e.g. { task_runner = { max_instances = 20 } }."
  type = map(object({
    memory          = optional(string)
    cpu             = optional(string)
    timeout_seconds = optional(number)
    concurrency     = optional(number)
    min_instances   = optional(number)
    max_instances   = optional(number)
    db_pool_size    = optional(number)
  }))
  default = {}
}

variable "log_level" {
  description = "LOG_LEVEL of every function."
  type        = string
  default     = "INFO"
}

variable "cors_origins" {
  description = "Origins of the SaaS front end allowed to call the HTTP API from a browser (CORS_ORIGINS)."
  type        = list(string)
  default     = []
}

variable "openai_model" {
  description = "OPENAI_MODEL: the default model of task_runner (an agent can name its own)."
  type        = string
  default     = "gpt-4o-mini"
}

# -- billing and email --------------------------------------------------------------------------

variable "stripe_publishable_key" {
  description = "STRIPE_PUBLISHABLE_KEY handed to the front end (not a secret)."
  type        = string
  default     = ""
}

variable "stripe_prices" {
  description = "Stripe price ids of the paid plans: { pro = \"price_...\", team = \"price_...\" } (STRIPE_PRICE_PRO/TEAM)."
  type        = map(string)
  default     = {}
}

variable "billing_urls" {
  description = "Where Stripe sends the user back: { success = ..., cancel = ..., portal_return = ... } (BILLING_*_URL)."
  type        = map(string)
  default     = {}
}

variable "sendgrid_from" {
  description = "Sender of Stratus's email: { email = \"no-reply@your.domain\", name = \"Your product\" }."
  type        = map(string)
  default     = {}
}

variable "sendgrid_webhook_public_key" {
  description = "SENDGRID_WEBHOOK_PUBLIC_KEY: the Signed Event Webhook's verification key (base64, as SendGrid shows it)."
  type        = string
  default     = ""
}

# -- secrets ----------------------------------------------------------------------------------

variable "secret_versions" {
  description = "Secret Manager version each function reads, by secret name (default \"latest\"). Pin numbers so that a rollback of the functions rolls the secrets back too. DB_PASSWORD is always the version Terraform wrote."
  type        = map(string)
  default     = {}
}

variable "unset_secrets" {
  description = "Optional secrets not wired to any function yet (the feature stays off: no SendGrid means the email outbox, no Stripe means billing answers 503). Only SENDGRID_API_KEY, STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET may be left out."
  type        = set(string)
  default     = []

  validation {
    condition     = length(setsubtract(var.unset_secrets, ["SENDGRID_API_KEY", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"])) == 0
    error_message = "unset_secrets may name only SENDGRID_API_KEY, STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET: production refuses to start without the others."
  }
}

# -- Cloud SQL ----------------------------------------------------------------------------------

variable "db_tier" {
  description = "Cloud SQL machine type (db-custom-<vCPUs>-<MiB>; db-g1-small is cheaper but shared-core, without SLA)."
  type        = string
  default     = "db-custom-1-3840"
}

variable "db_version" {
  description = "Cloud SQL PostgreSQL version."
  type        = string
  default     = "POSTGRES_16"
}

variable "db_max_connections" {
  description = "PostgreSQL max_connections flag (Cloud SQL's default for 3.75 GB of memory is 100)."
  type        = number
  default     = 100
}

variable "db_reserved_connections" {
  description = "Connections kept out of the functions' budget: superuser_reserved_connections (3), Cloud SQL's own, migrations and the CLI."
  type        = number
  default     = 15
}

variable "db_availability_type" {
  description = "ZONAL (one zone) or REGIONAL (a standby in another zone: about twice the price)."
  type        = string
  default     = "ZONAL"
}

variable "db_disk_size_gb" {
  description = "Initial SSD size; it grows on its own (disk_autoresize)."
  type        = number
  default     = 10
}

variable "db_deletion_protection" {
  description = "Refuse to destroy the database instance (set false deliberately before a teardown)."
  type        = bool
  default     = true
}

# -- queue, schedule, files ------------------------------------------------------------------

variable "task_max_delivery_attempts" {
  description = "Deliveries of one task message before Pub/Sub moves it to the dead-letter topic (5-100; above TASK_MAX_ATTEMPTS, since a busy or restarting instance also costs a delivery)."
  type        = number
  default     = 10

  validation {
    condition     = var.task_max_delivery_attempts >= 5 && var.task_max_delivery_attempts <= 100
    error_message = "Pub/Sub allows 5 to 100 delivery attempts."
  }
}

variable "cleanup_schedule" {
  description = "Cron schedule (UTC) of metrics_cleanup: metrics retention and the lease reaper."
  type        = string
  default     = "*/5 * * * *"
}

variable "files_bucket_users" {
  description = "Functions that may read and write the files bucket (GCS_BUCKET); none needs it yet."
  type        = set(string)
  default     = []
}
