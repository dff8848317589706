"""Benchmark: how a grid's cost grows with k x seeds x methods (stream protocol).

Runs grids of growing size on the same dataset and backbone, each in a fresh child
process with a fresh embedding cache and results table, and reports per grid: cells,
backbone forward passes, wall time split into embed / cells / MLflow, and peak RSS.
The claim checked: backbone forward passes stay flat (each distinct example is embedded
once, whatever k, seeds and methods), so wall time grows only by the cheap per-cell
work. A last row re-runs the largest grid under a new name on the warm cache: zero
forward passes. Ratios are against the smallest grid of the same run.

Usage (2-core box):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_grid_growth.py --backbone minilm-l6 --test-size 100
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = [  # (label, ks, seeds, methods)
    ("1 cell", [18], [0], ["lr_probe"]),
    ("2k x 3 seeds x 2 methods", [18, 32], [0, 1, 2], ["tart", "lr_probe"]),
    ("3k x 5 seeds x 3 methods", [18, 32, 64], [0, 1, 2, 3, 4], ["tart", "lr_probe", "lr_full"]),
]


def child(args: dict) -> None:
    """Run one grid in this process; print its summary and peak RSS as JSON."""
    from pipeline.config import load_config
    from pipeline.grid import GridSpec, run_grid

    spec = load_config(GridSpec, None, args["overrides"])
    s = run_grid(spec)  # its progress lines go to the `pipeline` loggers, unconfigured here: silent
    s["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(s, default=str))


def run_child(overrides: list[str], threads: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS=str(threads),
               PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps({"overrides": overrides})],
                         capture_output=True, text=True, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"grid failed (rc {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--backbone", default="minilm-l6")
    ap.add_argument("--dataset", default="sms_spam")
    ap.add_argument("--test-size", type=int, default=100)
    ap.add_argument("--train-size", type=int, default=128)
    ap.add_argument("--executor", default="local", choices=["local", "ray"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.child:
        return child(json.loads(a.child))
    tmp = Path(tempfile.mkdtemp(prefix="tart-bench-growth-"))
    rows = []
    for i, (label, ks, seeds, methods) in enumerate(SIZES + [("largest again, warm cache", *SIZES[-1][1:])]):
        warm = i == len(SIZES)
        cache = tmp / f"emb{len(SIZES) - 1 if warm else i}"
        over = [f"name=g{i}", f"datasets=[{a.dataset}]", f"backbones=[{a.backbone}]", f"methods=[{','.join(methods)}]",
                f"ks=[{','.join(map(str, ks))}]", f"seeds=[{','.join(map(str, seeds))}]", f"test_size={a.test_size}",
                f"train_size={a.train_size}", f"executor={a.executor}", f"storage={tmp}/grids",
                f"cache_uri={cache}", f"mlflow_uri=sqlite:///{tmp}/mlflow{i}.db"]
        s = run_child(over, a.threads)
        rows.append((label, s))
        print(f"{label}: {s['cells_run']} cells, {s['forward_passes']} forward passes, {s['wall_s']:.1f}s", flush=True)
    base = rows[0][1]
    print(f"\n{a.dataset} x {a.backbone}, test {a.test_size}, pool {a.train_size}, executor {a.executor}, "
          f"{a.threads} threads\n")
    print("| grid | cells | backbone forward passes | vs 1 cell | embed s | cells s | MLflow s | wall s | vs 1 cell | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, s in rows:
        fw = s["forward_passes"] / base["forward_passes"] if base["forward_passes"] else float("nan")
        print(f"| {label} | {s['cells_run']} | {s['forward_passes']} | {fw:.2f}x | {s['embed_s']:.1f} | "
              f"{s['cells_s']:.1f} | {s['mlflow_s']:.1f} | {s['wall_s']:.1f} | {s['wall_s'] / base['wall_s']:.2f}x | "
              f"{s['peak_rss_mb']:.0f} |")
    flat = [s["forward_passes"] for _, s in rows[:-1]]
    print(f"\nforward passes flat across grid sizes: {len(set(flat)) == 1}; warm re-run: {rows[-1][1]['forward_passes']}")


if __name__ == "__main__":
    main()
