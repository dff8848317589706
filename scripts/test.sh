#!/usr/bin/env bash
# The README's test command: install (idempotent), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TART_CACHE=${TART_CACHE:-$PWD/.tart_cache}
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
