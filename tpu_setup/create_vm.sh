#!/usr/bin/env bash
# Create a one-host TPU VM (v4-8) with the launcher's defaults.
# Every argument is passed on to `launch.py create`, so later flags override these
# defaults and --dry-run prints the gcloud command instead of running it.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/launch.py" create \
    --name sphere-tpu --accelerator-type v4-8 "$@"
