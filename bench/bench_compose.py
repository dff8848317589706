"""Benchmark stage 4's inner loop: batching through the reasoner, and the ICL KV cache.

1. TART composition: q queries of one episode answered by ONE batched reasoner call
   vs one reasoner pass per query (same whitened features, same run). The outputs are
   checked equal.
2. ICL with SmolLM2-135M: the shared context prompt forwarded once + KV cache, queries
   scored in batches, vs re-reading the whole prompt for every query (use_cache=False,
   batch 1). The scores are checked equal.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_compose.py --threads 2

Real data: tweet_sentiment (or --dataset sms_spam) embedded with minilm-l6 for part 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def bench_reasoner(args, pool, test, idx) -> dict:
    from pipeline.backbones import load_backbone
    from pipeline.methods import fit_whitening, run_method
    from pipeline.reasoner import load_reasoner

    reasoner = load_reasoner()
    bb = load_backbone("minilm-l6")
    ctx = idx[args.k]
    q = min(args.queries, len(test))
    Ec = bb.embed_texts([pool.texts[i] for i in ctx])
    Eq = bb.embed_texts(test.texts[:q])
    yc = pool.labels[ctx]
    run_method("tart", Ec, yc, Eq[:2], reasoner=reasoner)  # warm-up
    t = time.perf_counter()
    batched = run_method("tart", Ec, yc, Eq, reasoner=reasoner)
    t_batch = time.perf_counter() - t
    w = fit_whitening(Ec, d=reasoner.d)
    Zc, Zq = w.transform(Ec).astype(np.float32), w.transform(Eq).astype(np.float32)
    t = time.perf_counter()
    single = np.array([reasoner.predict_proba(Zc[None], yc[None], Zq[None, i : i + 1])[0, 0] for i in range(q)])
    t_single = time.perf_counter() - t
    acc = float(((batched >= 0.5) == test.labels[:q]).mean())
    return {"k": args.k, "queries": q, "batched_s": round(t_batch, 4), "per_query_s": round(t_single, 4),
            "speedup": round(t_single / t_batch, 1), "max_abs_diff": float(np.abs(batched - single).max()),
            "tart_accuracy": round(acc, 3)}


def bench_icl(args, pool, test, idx) -> dict:
    from pipeline.backbones import load_causal_lm
    from pipeline.icl import ICLScorer

    tok, model = load_causal_lm("smollm2-135m")
    ctx = idx[args.k]
    ct, cy = [pool.texts[i] for i in ctx], pool.labels[ctx]
    q = test.texts[: args.icl_queries]
    cached = ICLScorer(tok, model, label_words=pool.label_names, batch_size=args.icl_batch)
    naive = ICLScorer(tok, model, label_words=pool.label_names, batch_size=1)
    prompt_tokens = len(cached.prepare(ct, cy, q[:1]).prefix)
    cached.label_scores(ct, cy, q[:1])  # warm-up
    t = time.perf_counter()
    s_cached = cached.label_scores(ct, cy, q, use_cache=True)
    t_cached = time.perf_counter() - t
    t = time.perf_counter()
    s_naive = naive.label_scores(ct, cy, q, use_cache=False)
    t_naive = time.perf_counter() - t
    return {"k": args.k, "queries": len(q), "context_tokens": prompt_tokens, "cached_s": round(t_cached, 2),
            "cached_s_per_query": round(t_cached / len(q), 3), "no_cache_s": round(t_naive, 2),
            "no_cache_s_per_query": round(t_naive / len(q), 3), "speedup": round(t_naive / t_cached, 1),
            "max_abs_score_diff": float(np.abs(s_cached - s_naive).max()), "batch_size": args.icl_batch}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="tweet_sentiment")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--queries", type=int, default=256, help="queries for the reasoner benchmark")
    ap.add_argument("--icl-queries", type=int, default=8)
    ap.add_argument("--icl-batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-icl", action="store_true")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from pipeline.datasets import context_sets, load_examples

    pool = load_examples(args.dataset, split="train")
    test = load_examples(args.dataset, split="test", test_size=args.queries)
    idx = context_sets(pool.labels, [args.k], seed=args.seed)
    out = {"dataset": args.dataset, "threads": args.threads, "reasoner": bench_reasoner(args, pool, test, idx)}
    print(json.dumps(out["reasoner"]), flush=True)
    if not args.skip_icl:
        out["icl"] = bench_icl(args, pool, test, idx)
        print(json.dumps(out["icl"]), flush=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
