terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }

  # The state (which holds the generated database password) lives in a private Cloud Storage
  # bucket created once by hand (README, "Deploy to Google Cloud"):
  #   terraform init -backend-config="bucket=<project>-tfstate"
  backend "gcs" {
    prefix = "stratus"
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
