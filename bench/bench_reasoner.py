"""Reasoner speed: batched queries vs one pass per query, fp32 vs bf16, training steps/s.

    python bench/bench_reasoner.py                 # CPU (small repeats)
    python bench/bench_reasoner.py --device cuda   # GPU: also bf16 autocast

Every figure is printed next to its baseline measured in the same run:
- inference: one batched pass answering q queries vs q separate passes (same k context);
- precision (GPU): bf16 autocast vs fp32 for the batched pass and a training step;
- training: optimizer steps/s of the `standard` (12x8x256) and the shipped `medium`
  (8x8x256) reasoner at 258 points, through the project's `train_loop` step function.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.reasoner import SIZES, ReasonerConfig, ReasonerModel  # noqa: E402


def _time(fn, device, reps: int) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def bench_inference(model, device, b, k, q, reps, bf16):
    g = torch.Generator(device="cpu").manual_seed(0)
    xc = torch.randn(b, k, 16, generator=g).to(device)
    yc = (torch.rand(b, k, generator=g) > 0.5).float().to(device)
    xq = torch.randn(b, q, 16, generator=g).to(device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    @torch.no_grad()
    def batched():
        with ctx:
            model.query_logits(xc, yc, xq)

    @torch.no_grad()
    def per_query():
        with ctx:
            for i in range(q):
                model.query_logits(xc, yc, xq[:, i : i + 1])

    return _time(batched, device, reps), _time(per_query, device, max(1, reps // 4))


def bench_train_step(size, device, batch, points, reps, bf16):
    n_layer, n_head, n_embd = SIZES[size]
    model = ReasonerModel(ReasonerConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, points, 16, device=device)
    y = (torch.rand(batch, points, device=device) > 0.5).float()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x, y)
        F.binary_cross_entropy_with_logits(logits.float(), y).backward()
        opt.step()

    return 1.0 / _time(step, device, reps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=0, help="0: 20 on GPU, 3 on CPU")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    device = torch.device(a.device)
    gpu = device.type == "cuda"
    reps = a.reps or (20 if gpu else 3)
    name = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}")
    res = {"device": name}
    model = ReasonerModel(ReasonerConfig(n_layer=8, n_head=8, n_embd=256)).to(device).eval()
    b, k, q = (64, 64, 128) if gpu else (8, 64, 32)
    for bf16 in ([False, True] if gpu else [False]):
        tb, tq = bench_inference(model, device, b, k, q, reps, bf16)
        tag = "bf16" if bf16 else "fp32"
        res[f"infer_{tag}"] = {"batched_s": tb, "per_query_s": tq, "speedup": tq / tb,
                               "queries_per_s": b * q / tb}
        print(f"inference medium {tag}: B={b} k={k} q={q}: batched {tb*1e3:.1f} ms vs per-query {tq*1e3:.1f} ms "
              f"-> {tq/tb:.1f}x ({b*q/tb:,.0f} queries/s)")
    if gpu:
        print(f"bf16 vs fp32 batched inference: {res['infer_fp32']['batched_s']/res['infer_bf16']['batched_s']:.2f}x")
    batch, points = (256, 258) if gpu else (8, 258)
    for size in ("medium", "standard"):
        for bf16 in ([False, True] if gpu else [False]):
            sps = bench_train_step(size, device, batch, points, reps if gpu else 2, bf16)
            tag = "bf16" if bf16 else "fp32"
            res[f"train_{size}_{tag}"] = sps
            print(f"train step {size} {tag}: batch {batch} x {points} points: {sps:.2f} steps/s")
        if gpu:
            print(f"bf16 vs fp32 training ({size}): {res[f'train_{size}_bf16']/res[f'train_{size}_fp32']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
