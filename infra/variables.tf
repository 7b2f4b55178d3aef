variable "project_id" {
  description = "Google Cloud project that hosts Stratus."
  type        = string
}

variable "region" {
  description = "Region for the functions, Cloud SQL and Pub/Sub."
  type        = string
  default     = "europe-west1"
}
