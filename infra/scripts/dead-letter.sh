#!/usr/bin/env bash
# Give the Pub/Sub subscription behind task_runner's Eventarc trigger a dead-letter topic and a
# delivery limit, and let the Pub/Sub service agent pull from it (it must, to forward a message).
# Eventarc creates that subscription itself; neither it nor Terraform can set these, so
# infra/pubsub.tf runs this with:
#   PROJECT, TRIGGER (projects/P/locations/L/triggers/T), DEAD_LETTER_TOPIC (projects/P/topics/T),
#   MAX_DELIVERY_ATTEMPTS, PUBSUB_SERVICE_AGENT (serviceAccount:service-N@gcp-sa-pubsub...)
# Idempotent: running it again changes nothing.
set -euo pipefail

: "${PROJECT:?}" "${TRIGGER:?}" "${DEAD_LETTER_TOPIC:?}" "${MAX_DELIVERY_ATTEMPTS:?}" "${PUBSUB_SERVICE_AGENT:?}"

location=$(cut -d/ -f4 <<<"$TRIGGER")
trigger=$(cut -d/ -f6 <<<"$TRIGGER")
subscription=$(gcloud eventarc triggers describe "$trigger" --project "$PROJECT" \
  --location "$location" --format 'value(transport.pubsub.subscription)')
if [ -z "$subscription" ]; then
  echo "dead-letter.sh: trigger $TRIGGER has no Pub/Sub subscription yet" >&2
  exit 1
fi

gcloud pubsub subscriptions update "$subscription" --project "$PROJECT" \
  --dead-letter-topic "$DEAD_LETTER_TOPIC" \
  --max-delivery-attempts "$MAX_DELIVERY_ATTEMPTS"
gcloud pubsub subscriptions add-iam-policy-binding "$subscription" --project "$PROJECT" \
  --member "$PUBSUB_SERVICE_AGENT" --role roles/pubsub.subscriber >/dev/null
echo "dead-letter.sh: $subscription -> $DEAD_LETTER_TOPIC after $MAX_DELIVERY_ATTEMPTS deliveries"
