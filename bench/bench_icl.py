"""Benchmark: the ICL baseline's cost on CPU, float32 vs bfloat16 (and batch sizes), same run.

ICL is most of the default grid's compute on a CPU box (BENCHMARKS.md "End to end": 96%
of cell time). This times `ICLScorer.predict_proba` — the code an icl grid cell runs —
on the same context set (dataset, k, seed as the grid draws it) and the same n test
queries, once per (dtype, batch size), and prints each against the first configuration
(the baseline: float32 at the first batch size), with what the precision costs: the
accuracy of each on the n queries, the share of predictions that agree with the
baseline and the largest probability difference.

`--paths` adds the scorer's forward paths as a third axis: `model` = the whole causal LM with
`logits_to_keep=1` and transformers' `repeat_kv` copies for grouped-query heads (the code
until 2026-11-26); `stack` = the decoder stack alone, LM head on the scored positions only;
`stack+gqa` = that, plus SDPA's native grouped-query attention on CPU; `packed` = that, with each
batch of queries packed into one row on the shared context cache (block mask) instead of padded
rows on per-query copies of the cache (the default now).

Usage (2-core box; 1 torch thread is what an icl Ray task gets):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_icl.py --dataset tweet_sentiment --k 32 --n 48
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_icl.py --dtypes bfloat16 --paths model,stack,stack+gqa,packed
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--dataset", default="tweet_sentiment")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=48, help="test queries (balanced test subsample, as the grid draws it)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batch-sizes", default="8", help="comma list; the grid default is 8")
    ap.add_argument("--paths", default="packed", help="comma list of model, stack, stack+gqa, packed (see above)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from pipeline.backbones import load_causal_lm
    from pipeline.datasets import context_sets, load_examples
    from pipeline.icl import ICLScorer

    opts = dict(train_size=256, test_size=a.n)  # the grid passes the same options to both splits
    pool = load_examples(a.dataset, "train", **opts)
    test = load_examples(a.dataset, "test", **opts)
    ctx = context_sets(pool.labels, [a.k], a.seed)[a.k]
    ctx_texts, ctx_labels = [pool.texts[i] for i in ctx], pool.labels[ctx]
    y = np.asarray(test.labels)
    runs, base = [], None
    for dtype in a.dtypes.split(","):
        tok, model = load_causal_lm(a.backbone, device=a.device, dtype=dtype)
        for bs, path in ((int(b), w) for b in a.batch_sizes.split(",") for w in a.paths.split(",")):
            if path not in ("model", "stack", "stack+gqa", "packed"):
                ap.error(f"--paths: unknown path {path!r}")
            scorer = ICLScorer(tok, model, label_words=pool.label_names, batch_size=bs, packing=path == "packed")
            if path == "model":
                scorer._base = None
            os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1" if path in ("stack+gqa", "packed") else "0"
            scorer.predict_proba(ctx_texts[:2], ctx_labels[:2], test.texts[:bs])  # warm-up (small prompt)
            t = time.perf_counter()
            p = scorer.predict_proba(ctx_texts, ctx_labels, test.texts)
            secs = time.perf_counter() - t
            run = {"dtype": dtype, "batch_size": bs, "path": path, "seconds": round(secs, 1),
                   "s_per_query": round(secs / len(y), 3), "accuracy": float(((p >= 0.5) == y).mean())}
            if base is None:
                base = (secs, p)
            run["speedup_vs_first"] = round(base[0] / secs, 2)
            run["agree_with_first"] = float(((p >= 0.5) == (base[1] >= 0.5)).mean())
            run["max_abs_dp_vs_first"] = round(float(np.abs(p - base[1]).max()), 4)
            run["packed"] = bool(scorer._packing_ok)
            runs.append(run)
            print(json.dumps(run), flush=True)
        del model
    res = {"backbone": a.backbone, "dataset": a.dataset, "k": a.k, "seed": a.seed, "n": len(y),
           "threads": a.threads, "device": a.device, "runs": runs}
    first = runs[0]
    for r in runs[1:]:
        print(f"{r['dtype']} bs={r['batch_size']} {r['path']}: {r['speedup_vs_first']:.2f}x vs {first['dtype']} "
              f"bs={first['batch_size']} {first['path']} ({r['seconds']} s vs {first['seconds']} s for {len(y)} queries); "
              f"accuracy {r['accuracy']:.3f} vs {first['accuracy']:.3f}, {r['agree_with_first']:.1%} same predictions")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
