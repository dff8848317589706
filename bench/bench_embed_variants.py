"""Benchmark: two embedding choices, each against its alternative in the same run.

1. Length bucketing (what `Backbone.embed_texts` does): all texts sorted by token length,
   then cut into batches, so each batch pads to a similar length. Baseline: batches in
   the dataset's own order (each `embed_texts` call gets one batch, so no cross-batch
   sorting), i.e. every batch pads to its longest member.
2. Base model (what the pipeline loads: `AutoModel`, last hidden state) vs the LM-head
   model (`AutoModelForCausalLM` with `output_hidden_states`): same hidden states, but
   the LM head projects every position onto the whole vocabulary and throws it away.
3. float32 (the CPU default, `dtype=auto`) vs bfloat16 weights and activations
   (`dtype=bfloat16`): CPUs with AVX512-BF16/AMX run bf16 GEMMs through oneDNN, often
   several times faster than fp32. Not the same vectors: the cosine similarity to fp32
   and the test accuracy of a logistic-regression probe on each (a random half of the
   texts to fit, the other half to test) show what the precision costs.

Pairs 1 and 2 must give the same vectors (max abs difference printed); only time differs.
The same texts, batch size and torch threads are used throughout; each timing is the
median of --repeats runs after one warm-up batch.

Usage (2-core box; on a GPU add --device cuda, where embed_texts' numpy result syncs each timing):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_embed_variants.py --backbone smollm2-135m --n 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def _timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"CPU ({torch.get_num_threads()} torch threads)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--dataset", default="sms_spam")
    ap.add_argument("--n", type=int, default=256, help="texts (first n of the train split, dataset order)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the GPU path: fp32 vs bf16 there)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-dtype-pair", dest="dtype_pair", action="store_false", help="skip the fp32 vs bf16 pair")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from pipeline.backbones import Backbone, load_backbone, load_causal_lm
    from pipeline.datasets import load_examples

    texts = list(load_examples(args.dataset, "train").texts[: args.n])
    bb = load_backbone(args.backbone, device=args.device)
    bs = args.batch_size
    lengths = [len(x) for x in bb.tokenizer(texts, truncation=True, max_length=bb.max_length)["input_ids"]]
    bb.embed_texts(texts[:bs], batch_size=bs)  # warm-up

    def unbucketed():
        return np.concatenate([bb.embed_texts(texts[s:s + bs], batch_size=bs) for s in range(0, len(texts), bs)])

    t_plain, e_plain = _timed(unbucketed, args.repeats)
    t_bucket, e_bucket = _timed(lambda: bb.embed_texts(texts, batch_size=bs), args.repeats)
    padded = {"unbucketed": sum(max(lengths[s:s + bs]) * len(lengths[s:s + bs]) for s in range(0, len(texts), bs))}
    srt = sorted(lengths, reverse=True)
    padded["bucketed"] = sum(srt[s] * len(srt[s:s + bs]) for s in range(0, len(srt), bs))
    res = {
        "backbone": args.backbone, "device": _device_name(args.device), "n": len(texts), "batch_size": bs, "threads": args.threads,
        "real_tokens": sum(lengths), "padded_tokens": padded,
        "bucketing": {"unbucketed_s": round(t_plain, 2), "bucketed_s": round(t_bucket, 2),
                      "speedup": round(t_plain / t_bucket, 2),
                      "max_abs_diff": float(np.abs(e_plain - e_bucket).max())},
    }
    if bb.kind == "causal":
        tok, lm = load_causal_lm(args.backbone, device=args.device)
        with_head = Backbone(name=bb.name, kind=bb.kind, revision=bb.revision, model=lm, tokenizer=tok,
                             layer=bb.num_layers, pooling=bb.pooling, max_length=bb.max_length, device=args.device)
        with_head.embed_texts(texts[:bs], batch_size=bs)  # warm-up
        t_head, e_head = _timed(lambda: with_head.embed_texts(texts, batch_size=bs), args.repeats)
        res["lm_head"] = {"base_model_s": round(t_bucket, 2), "lm_head_model_s": round(t_head, 2),
                          "speedup_of_base": round(t_head / t_bucket, 2),
                          "max_abs_diff": float(np.abs(e_head - e_bucket).max()),
                          "vocab": int(lm.config.vocab_size), "hidden": bb.dim}
    if args.dtype_pair:
        from sklearn.linear_model import LogisticRegression

        bf = load_backbone(args.backbone, device=args.device, dtype="bfloat16")
        bf.embed_texts(texts[:bs], batch_size=bs)  # warm-up
        t_bf, e_bf = _timed(lambda: bf.embed_texts(texts, batch_size=bs), args.repeats)
        cos = (e_bf * e_bucket).sum(1) / (np.linalg.norm(e_bf, axis=1) * np.linalg.norm(e_bucket, axis=1))
        y = np.asarray(load_examples(args.dataset, "train").labels[: len(texts)])
        perm = np.random.default_rng(0).permutation(len(texts))  # a random half to fit, the other to test
        fit, test = perm[: len(texts) // 2], perm[len(texts) // 2:]

        def probe_acc(E):
            Z = (E - E[fit].mean(0)) / (E[fit].std(0) + 1e-6)
            return float(LogisticRegression(max_iter=2000).fit(Z[fit], y[fit]).score(Z[test], y[test]))

        res["bfloat16"] = {"float32_s": round(t_bucket, 2), "bfloat16_s": round(t_bf, 2),
                           "speedup": round(t_bucket / t_bf, 2), "min_cosine_to_fp32": round(float(cos.min()), 4),
                           "mean_cosine_to_fp32": round(float(cos.mean()), 4),
                           "probe_acc_fp32": probe_acc(e_bucket), "probe_acc_bf16": probe_acc(e_bf)}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
