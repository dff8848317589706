"""Benchmark: paper-scale overheads of a grid of cheap cells, against a real `mlflow server`.

What a grid of ~13,000 cells pays besides the cells' own compute: MLflow logging and Ray
scheduling. Runs, each in a fresh child process, against one real `mlflow server`
(127.0.0.1, sqlite backend) and one embedding cache (warmed first, not counted):

1. baseline, MLflow: the per-cell layout this project used before series runs (create run,
   log batch, log predictions artifact, terminate: four calls a cell, in sequence), replayed
   for `--baseline-cells` cells against the same server;
2. the grid, executor=ray (a local Ray the child starts), `--cells` lr_probe cells batched
   into tasks: cells/s; MLflow per cell = the driver's time on MLflow (queueing rows, and
   the wait at the end for the background logging) / cells; the background logging's own
   time per cell is shown too (what a serial logger would have waited for);
3. baseline, Ray: the same grid with one task per cell (`MAX_CELLS_PER_TASK = 1`), on
   `--baseline-cells` cells.

Ray overhead per cell = (cell-phase wall time - the cells' own compute / concurrency) / cells:
the cell phase runs from the first task to the last outcome (embedding excluded), the cells'
own compute is the sum of their `runtime_s` (timed inside the tasks), concurrency =
cluster CPUs / cpus_per_cell tasks at once. Every grid is checked: each cell once in the
results table and in MLflow.

Usage (2-core box; ~5 min):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_grid_scale.py --cells 10000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
KS = [18, 32, 48, 64]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = _port()
    uri = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/srv.db",
                             "--artifacts-destination", str(root / "art"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=3) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"mlflow server did not come up: {(root / 'server.log').read_text()[-2000:]}")


# ----------------------------------------------------------------------------- child processes


def child_grid(args: dict) -> None:
    from pipeline.config import load_config
    from pipeline.grid import GridSpec, read_results, run_grid
    from pipeline.grid import driver

    if args.get("cells_per_task"):
        driver.MAX_CELLS_PER_TASK = args["cells_per_task"]
    spec = load_config(GridSpec, None, args["overrides"])
    s = run_grid(spec, num_cpus=args.get("num_cpus"))
    df = read_results(spec)
    s["own_compute_s"] = float(df["runtime_s"].sum())
    s["table_unique"] = bool(len(df) == s["cells_total"] and df["cell_id"].is_unique)
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import TAG_CELLS, decode_cells

    c = MlflowClient(spec.mlflow_uri)
    exp = c.get_experiment_by_name(spec.experiment)
    runs = c.search_runs([exp.experiment_id], max_results=50000,
                         filter_string=f"tags.`tart.grid` = '{spec.name}' and tags.`tart.kind` = 'cell'")
    ids = [cid for r in runs for cid in decode_cells(r.data.tags.get(TAG_CELLS))]
    s["mlflow_each_once"] = bool(sorted(ids) == sorted(df["cell_id"]))
    print("RESULT " + json.dumps(s, default=str))


def child_per_cell_baseline(args: dict) -> None:
    """The pre-series layout: one run per cell, four sequential calls (as pipeline/grid logged before)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    c = MlflowClient(args["uri"])
    exp = c.create_experiment(f"per-cell-baseline-{int(time.time())}")
    probs = [0.5] * 50
    t0 = time.time()
    for i in range(args["n"]):
        rid = c.create_run(exp, run_name=f"cell{i}", tags={"tart.kind": "cell", "cell_id": f"c{i}"}).info.run_id
        c.log_batch(rid, metrics=[Metric(m, 0.5, 0, 18) for m in ("accuracy", "auc", "brier", "ece", "runtime_s")],
                    params=[Param(p, "x") for p in ("dataset", "dataset_options", "backbone", "protocol", "method",
                                                    "reasoner", "reasoner_digest", "k", "seed")],
                    tags=[RunTag("tart.dataset", "sms_spam")])
        c.log_text(rid, json.dumps({"ids": list(range(50)), "labels": [0] * 50, "probs": probs}), "predictions.json")
        c.set_terminated(rid)
    print("RESULT " + json.dumps({"s_per_cell": (time.time() - t0) / args["n"]}))


def run_child(kind: str, args: dict) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               PYTHONPATH=str(ROOT), MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(args)], capture_output=True,
                         text=True, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{kind} failed (rc {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--cells", type=int, default=10000)
    ap.add_argument("--baseline-cells", type=int, default=600)
    ap.add_argument("--num-cpus", type=float, default=2)
    a = ap.parse_args()
    if a.child:
        return {"grid": child_grid, "per_cell": child_per_cell_baseline}[a.child[0]](json.loads(a.child[1]))
    tmp = Path(tempfile.mkdtemp(prefix="tart-bench-scale-"))
    proc, uri = start_server(tmp)
    try:
        base = ["datasets=[sms_spam]", "backbones=[minilm-l6]", "methods=[lr_probe]", f"ks=[{','.join(map(str, KS))}]",
                "test_size=50", "train_size=256", f"storage={tmp}/grids", f"cache_uri={tmp}/emb", f"mlflow_uri={uri}",
                "cpus_per_cell=0.5"]

        def grid(name: str, n_cells: int, executor: str, **extra) -> dict:
            seeds = range(max(1, n_cells // len(KS)))
            over = [*base, f"name={name}", f"seeds=[{','.join(map(str, seeds))}]", f"executor={executor}"]
            t = time.time()
            s = run_child("grid", {"overrides": over, "num_cpus": a.num_cpus, **extra})
            s["process_s"] = time.time() - t
            assert s["cells_failed"] == 0 and s["table_unique"] and s["mlflow_each_once"], s
            print(f"  {name}: {s['cells_run']} cells in {s['wall_s']:.1f} s (cells {s['cells_s']:.1f} s, "
                  f"MLflow {s['mlflow_s']:.1f} s, {s['mlflow_runs']} runs, own compute {s['own_compute_s']:.1f} s)",
                  flush=True)
            return s

        print(f"mlflow server {uri}; warming the embedding cache", flush=True)
        grid("warm", len(KS), "local")
        per_cell = run_child("per_cell", {"uri": uri, "n": a.baseline_cells})["s_per_cell"]
        print(f"  per-cell layout (baseline): {per_cell * 1000:.1f} ms a cell over {a.baseline_cells} cells", flush=True)
        ray = grid("ray", a.cells, "ray")
        ray_base = grid("ray-1-per-task", a.baseline_cells, "ray", cells_per_task=1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)

    conc = a.num_cpus / 0.5
    n_r, n_b = ray["cells_run"], ray_base["cells_run"]

    def overhead_ms(s: dict) -> float:
        return (s["cells_wall_s"] - s["own_compute_s"] / conc) / s["cells_run"] * 1000

    mlflow_ms = ray["mlflow_s"] / n_r * 1000
    print(f"\n{n_r} lr_probe cells (sms_spam x minilm-l6, k in {KS}, 50 test examples), executor=ray, "
          f"{a.num_cpus:g} CPUs, a real mlflow server on 127.0.0.1\n")
    print("| measure | this grid | baseline (same run) | ratio |")
    print("|---|---|---|---|")
    print(f"| MLflow logging per cell, the grid's time | {mlflow_ms:.2f} ms | {per_cell * 1000:.1f} ms (a run per cell) | "
          f"{per_cell * 1000 / max(mlflow_ms, 1e-9):.0f}x less |")
    print(f"| MLflow calls' own time per cell (background) | {ray['mlflow_background_s'] / n_r * 1000:.1f} ms | "
          f"{per_cell * 1000:.1f} ms | {per_cell / max(ray['mlflow_background_s'] / n_r, 1e-9):.1f}x less |")
    print(f"| MLflow runs | {ray['mlflow_runs']} for {n_r} cells | one per cell | |")
    print(f"| Ray overhead per cell | {overhead_ms(ray):.1f} ms | {overhead_ms(ray_base):.1f} ms (a task per cell) | "
          f"{overhead_ms(ray_base) / max(overhead_ms(ray), 1e-9):.1f}x less |")
    print(f"| cells' own compute per cell | {ray['own_compute_s'] / n_r * 1000:.1f} ms | "
          f"{ray_base['own_compute_s'] / n_b * 1000:.1f} ms | |")
    print(f"| cells/s, cell phase | {n_r / ray['cells_wall_s']:.0f} | {n_b / ray_base['cells_wall_s']:.0f} | "
          f"{(n_r / ray['cells_wall_s']) / (n_b / ray_base['cells_wall_s']):.1f}x |")
    print(f"| cells/s, end to end (incl. Ray start, expansion, embedding) | {n_r / ray['wall_s']:.0f} | "
          f"{n_b / ray_base['wall_s']:.0f} | |")
    print("\neach cell once in the results table and in MLflow: yes (checked for every grid)")


if __name__ == "__main__":
    main()
