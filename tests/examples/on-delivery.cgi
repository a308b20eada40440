#!/bin/sh
# A CGI handler (any web server): the body on stdin, headers as HTTP_*
# variables; a retried delivery's answer carries Idempotent-Replayed: true.
set -u
report=$(mktemp)
trap 'rm -f "$report"' EXIT
answer=$(idem run --key "delivery-${HTTP_X_EVENT_ID:?no X-Event-Id header}" \
    --fingerprint-stdin --on-duplicate wait --report "$report" -- ./process-event)
status=$?
if [ "$status" -ne 0 ]; then
    printf 'Status: 500\r\n'
elif grep -q '"outcome":"replayed"\|"outcome":"joined"' "$report"; then
    printf 'Idempotent-Replayed: true\r\n'
fi
printf 'Content-Type: text/plain\r\n\r\n%s\n' "$answer"
