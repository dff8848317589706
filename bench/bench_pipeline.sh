#!/usr/bin/env bash
# Benchmark: the whole pipeline on the embedded defaults from a fresh state, wall time by stage
# and peak memory. `tart pipeline` = generate (configs/generate/small.yaml) -> train
# (configs/train/tiny-cpu.yaml) -> the default grid (configs/grids/default.yaml, plus the
# reasoner just trained) -> compare. Fresh backbone conversion cache, embedding cache, results
# and MLflow db under OUT (the working directory of the run). Prints the pipeline's
# `[pipeline] stage times` line (each stage's share of the total is the ratio to quote), the
# grid summary, /usr/bin/time's peak RSS of the driver and the per-process peaks sampled by
# bench/rss_by_title.py. Run it alone: on 2 cores anything else running skews every stage.
#
#   bash bench/bench_pipeline.sh [OUT]      (default OUT=/tmp/tart-bench-pipeline)
set -euo pipefail
R="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-/tmp/tart-bench-pipeline}"
rm -rf "$OUT" && mkdir -p "$OUT"
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TART_CACHE="$OUT/cache"
"$R/.venv/bin/python" "$R/bench/rss_by_title.py" "$OUT/rss_peaks.json" & SAMPLER=$!
cd "$OUT"
/usr/bin/time -v "$R/.venv/bin/tart" pipeline "generate_config=$R/configs/generate/small.yaml" \
  "train_config=$R/configs/train/tiny-cpu.yaml" "grid_config=$R/configs/grids/default.yaml" \
  "storage=$OUT/runs" > "$OUT/pipeline.log" 2>&1 || echo "pipeline exit status $?"
kill "$SAMPLER"; wait "$SAMPLER" 2>/dev/null || true
grep -E '^\[pipeline\] stage times|^\[grid\] done|Maximum resident|Elapsed \(wall' "$OUT/pipeline.log"
echo "peak RSS by process kind (MB): $(tr -d '\n ' < "$OUT/rss_peaks.json")"
