#!/bin/sh
# Run as: idem run --key deploy-42 -- ./deploy.sh
# Each step is keyed under the deploy's own key ($IDEM_KEY). If the deploy
# crashes, the next `idem run --key deploy-42` takes it over (attempt 2):
# the steps that finished replay, only the one that crashed runs again.
set -eu
step() {
    name=$1
    shift
    idem run --key "${IDEM_KEY:?run me under idem run}/$name" -- "$@"
}
step build ./build.sh
step migrate ./migrate.sh
step switch ./switch.sh
