"""The whole pipeline as one job: generate -> train -> grid (-> compare).

    tart pipeline --generate-config configs/generate/small.yaml \
                  --train-config configs/train/tiny-cpu.yaml \
                  --grid-config configs/grids/default.yaml \
                  storage=tart_runs/pipeline

Each stage is the same code as its own subcommand and keeps its own idempotence, so a
re-submitted pipeline skips finished shards, resumes training and runs only missing
grid cells. `storage=` roots every stage's output under one URI; the trained reasoner
is added to the grid's `reasoners` next to the shipped default. Exit status: 0 done, 1 some
grid cells failed (re-run), 2 an invalid config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .compare import compare_from_table
from .config import ConfigError, load_config
from .generate import GenerateConfig, generate
from .grid import GridSpec, read_results, run_grid
from .storage import join
from .train import TrainConfig, train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tart pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generate-config", default="configs/generate/small.yaml")
    ap.add_argument("--train-config", default="configs/train/tiny-cpu.yaml")
    ap.add_argument("--grid-config", default="configs/grids/default.yaml")
    ap.add_argument("--skip-train", action="store_true", help="evaluate the shipped reasoner only")
    ap.add_argument("storage", nargs="?", default="storage=tart_runs/pipeline",
                    help="storage=URI: root of every stage's output (default tart_runs/pipeline)")
    a = ap.parse_args(argv)
    if not a.storage.startswith("storage="):
        ap.error("the only positional argument is storage=URI")
    root = a.storage.split("=", 1)[1]
    try:
        gen_cfg = load_config(GenerateConfig, a.generate_config, [f"output={join(root, 'episodes')}"])
        grid = load_config(GridSpec, a.grid_config, [f"storage={join(root, 'grids')}"])
        train_cfg = None
        if not a.skip_train:
            train_cfg = load_config(TrainConfig, a.train_config,
                                    [f"data={gen_cfg.output}", f"storage={join(root, 'train')}"])
    except ConfigError as e:
        print(f"tart pipeline: error: {e}", file=sys.stderr)
        return 2
    # wall time per stage (the grid's own split: embed / cells / MLflow), printed at the end
    times: dict[str, float] = {}
    t = time.time()
    print(f"[pipeline] 1/3 generate -> {gen_cfg.output}", flush=True)
    generate(gen_cfg)
    times["generate_s"] = time.time() - t
    if train_cfg is not None:
        t = time.time()
        print(f"[pipeline] 2/3 train -> {train_cfg.storage}/{train_cfg.name}", flush=True)
        report = train(train_cfg)
        if report["final_dir"] not in grid.reasoners:
            grid.reasoners = list(grid.reasoners) + [report["final_dir"]]
        times["train_s"] = time.time() - t
    t = time.time()
    print(f"[pipeline] 3/3 grid {grid.name} with reasoners {grid.reasoners}", flush=True)
    summary = run_grid(grid)
    times["grid_s"] = time.time() - t
    times.update({f"grid_{k}": summary[k] for k in ("embed_s", "cells_s", "mlflow_s")})
    t = time.time()
    print(compare_from_table(read_results(grid), grid, summary)["text"])
    times["compare_s"] = time.time() - t
    print(f"[pipeline] stage times: {json.dumps({k: round(v, 1) for k, v in times.items()})}", flush=True)
    if summary["cells_failed"]:
        print(f"tart pipeline: {summary['cells_failed']} grid cell(s) failed (their errors are above); re-run to "
              "retry them, everything finished is kept", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
