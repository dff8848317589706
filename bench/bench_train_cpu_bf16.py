"""Benchmark: training steps/s on this CPU, fp32 vs bf16 autocast (`cpu_bf16=true`), on the v2 recipe.

Same run twice in this process (`train_local`, the loop `tart train` runs), the recipe of
configs/train/v2-d32-gpu.yaml at CPU batch size (v1 widened to d = 32, the embedding family on the
standardized reduction, curriculum as configured): once in fp32 (the baseline, the default on CPU),
once with bf16 autocast. Both draw the same episodes (same seed), so besides the speed ratio the
loss curves can be compared step by step, and the final synthetic evaluation (held-out episodes of
the family at k = 18 / 32 / 64) says whether the cheaper arithmetic costs accuracy at this length.
The two runs alternate --repeats times (fp32, bf16, fp32, ...) so a box that slows down mid-run
penalises both; the figure is the median of each.

    .venv/bin/python bench/bench_train_cpu_bf16.py --steps 60 --threads 2

Only CPUs with native bf16 (AVX512-BF16, AMX) gain; elsewhere autocast emulates it and is slower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_train import loop_seconds  # noqa: E402  (the loop's own timer, per log window)

RECIPE = ROOT / "configs" / "train" / "v2-d32-gpu.yaml"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each precision, alternating")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    if a.steps % a.log_every:
        ap.error("--steps must be a multiple of --log-every (throughput is timed per log window)")

    import torch

    from pipeline.config import load_config
    from pipeline.runtime import cpu_has_native_bf16
    from pipeline.train import TrainConfig, train_local

    torch.set_num_threads(a.threads)
    scratch = Path(tempfile.mkdtemp(prefix="bench_cpu_bf16_"))
    base = ["gpu=false", "bf16=false", f"steps={a.steps}", f"batch_size={a.batch}", f"log_every={a.log_every}",
            f"checkpoint_every={a.steps}", f"eval_every={a.steps}", "eval_episodes=128", "warmup_steps=5",
            "system_metrics=false", f"storage={scratch / 'runs'}"]
    runs: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    for r in range(a.repeats):
        for name in ("fp32", "bf16"):
            cfg = load_config(TrainConfig, RECIPE, base + [f"cpu_bf16={str(name == 'bf16').lower()}", f"name={name}{r}"])
            hist = train_local(cfg, str(scratch / f"{name}{r}"))["history"]
            evals = [h for h in hist if any(k.startswith("synthetic_acc_") for k in h)]
            runs[name].append({"steps_per_s": a.steps / loop_seconds(hist, a.log_every),
                               "loss": {h["step"]: h["loss"] for h in hist if "loss" in h and "steps_per_s" in h},
                               "eval": {k: v for k, v in evals[-1].items() if k.startswith("synthetic_acc_")} if evals else {}})
            print(f"[bench] {name} run {r}: {runs[name][-1]['steps_per_s']:.3f} steps/s, "
                  f"eval {runs[name][-1]['eval']}", flush=True)

    fp32, bf16 = (statistics.median(x["steps_per_s"] for x in runs[n]) for n in ("fp32", "bf16"))
    la, lb = runs["fp32"][0]["loss"], runs["bf16"][0]["loss"]
    steps = sorted(set(la) & set(lb))
    res = {"cpu_native_bf16": cpu_has_native_bf16(), "torch": torch.__version__, "threads": a.threads, "batch": a.batch, "steps": a.steps,
           "recipe": str(RECIPE.relative_to(ROOT)), "fp32_steps_per_s": round(fp32, 3), "bf16_steps_per_s": round(bf16, 3),
           "ratio_bf16_over_fp32": round(bf16 / fp32, 3),
           "max_abs_loss_diff": round(max(abs(la[s] - lb[s]) for s in steps), 5),
           "final_loss": {"fp32": round(la[steps[-1]], 5), "bf16": round(lb[steps[-1]], 5)},
           "final_eval": {n: runs[n][0]["eval"] for n in runs}}
    print(json.dumps(res, indent=2))
    print(f"bf16 autocast / fp32 training throughput on this CPU: {res['ratio_bf16_over_fp32']:.2f}x "
          f"({bf16:.3f} vs {fp32:.3f} steps/s, batch {a.batch}, {a.threads} threads)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
