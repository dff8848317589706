#!/usr/bin/env bash
# The README's main-job command: install (idempotent), then run the default grid on the
# embedded defaults (local Ray, sqlite MLflow in ./mlflow.db, offline backbones and data).
# Extra arguments go to `tart grid` (e.g. `bash scripts/main.sh seeds=[0]`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/tart grid --config configs/grids/default.yaml "$@"
