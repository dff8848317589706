"""Benchmark: vanilla/loo query embeddings, batched on the prompt's KV cache vs one query per pass.

Both use `embed.context_embeddings` on the same k-example prompt (the grid's context set for
k and seed) and the same n test queries: `query_batch=8` (the default: right-padded queries,
one forward pass per 8 on an expanded copy of the prompt's cache) against `query_batch=1`
(one pass per query, what the code did before). Prints the ratio and the largest
difference between the two sets of vectors (they must agree: padding is masked).

Usage (2-core box):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_context_queries.py --k 18 --n 32
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--dataset", default="sms_spam")
    ap.add_argument("--k", type=int, default=18)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=32, help="test queries")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    from pipeline.backbones import load_backbone
    from pipeline.datasets import context_sets, load_examples
    from pipeline.embed import context_embeddings

    opts = dict(train_size=256, test_size=a.n)
    pool, test = load_examples(a.dataset, "train", **opts), load_examples(a.dataset, "test", **opts)
    idx = context_sets(pool.labels, [a.k], a.seed)[a.k]
    texts, words = [pool.texts[i] for i in idx], [pool.label_names[int(pool.labels[i])] for i in idx]
    bb = load_backbone(a.backbone, device=a.device, dtype=a.dtype)
    context_embeddings(bb, texts[:2], words[:2], test.texts[:2], "vanilla")  # warm-up
    res = {}
    for qb in (1, a.batch):
        before, t = bb.forward_count, time.perf_counter()
        _, X = context_embeddings(bb, texts, words, test.texts, "vanilla", query_batch=qb)
        res[qb] = (time.perf_counter() - t, bb.forward_count - before, X)
    (t1, f1, X1), (tb, fb, Xb) = res[1], res[a.batch]
    out = {"backbone": a.backbone, "dataset": a.dataset, "k": a.k, "n": len(test.texts), "device": a.device,
           "dtype": a.dtype, "threads": a.threads, "one_per_pass_s": round(t1, 2), "passes_one": f1,
           f"batch_{a.batch}_s": round(tb, 2), "passes_batched": fb, "speedup": round(t1 / tb, 2),
           "max_abs_diff": float(np.abs(X1 - Xb).max())}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
