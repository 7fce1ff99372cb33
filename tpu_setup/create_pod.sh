#!/usr/bin/env bash
# Create a TPU pod slice (v4-32: four hosts with four chips each) with the launcher's defaults.
# Every argument is passed on to `launch.py create`, so later flags override these
# defaults and --dry-run prints the gcloud command instead of running it.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/launch.py" create \
    --name sphere-pod --accelerator-type v4-32 "$@"
