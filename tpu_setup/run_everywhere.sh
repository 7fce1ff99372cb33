#!/usr/bin/env bash
# Run `sphere run CONFIG [OVERRIDE...]` on every worker of a TPU VM or pod slice at once.
# Every argument is passed on to `launch.py run`, for example
#   tpu_setup/run_everywhere.sh --name sphere-pod --config configs/tpu_pod.yaml --dry-run
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/launch.py" run "$@"
