"""The whole pipeline as one job: generate -> train -> grid (-> compare).

    tart pipeline generate_config=configs/generate/small.yaml \
                  train_config=configs/train/tiny-cpu.yaml \
                  grid_config=configs/grids/default.yaml \
                  storage=tart_runs/pipeline

Each stage is the same code as its own subcommand and keeps its own idempotence, so a
re-submitted pipeline skips finished shards, resumes training and runs only missing
grid cells. `storage=` roots every stage's output under one URI; the trained reasoner
is added to the grid's `reasoners` next to the shipped default. Exit status: 0 done, 1 some
grid cells failed (re-run), 2 an invalid config.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

from .compare import compare_from_table
from .config import ConfigError, defaults_epilog, load_config, stage_parser
from .generate import GenerateConfig, generate
from .grid import GridError, GridSpec, expand, read_results, run_grid
from .grid.cli import failure_line
from .runtime import init_ray
from .storage import join
from .train import TrainConfig, train


@dataclass
class PipelineConfig:
    generate_config: str = "configs/generate/small.yaml"
    train_config: str = "configs/train/tiny-cpu.yaml"
    grid_config: str = "configs/grids/default.yaml"
    storage: str = "tart_runs/pipeline"  # root of every stage's output
    skip_train: bool = False  # evaluate the shipped reasoner only


FIELD_HELP = {
    "generate_config": "config of the generate stage (its output goes under storage/episodes)",
    "train_config": "config of the train stage (data = the generated episodes, storage/train)",
    "grid_config": "grid spec (storage/grids); the trained reasoner joins its reasoners",
    "storage": "root URI of every stage's output",
    "skip_train": "no training: the grid scores the shipped reasoner only",
}


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("tart pipeline", __doc__.splitlines()[0],
                     defaults_epilog(PipelineConfig(), FIELD_HELP, [
                         "  tart pipeline storage=tart_runs/pipeline",
                         "  tart pipeline grid_config=configs/grids/paper.yaml storage=s3://bucket/tart --address auto",
                     ]), "pipeline.yaml", "storage=tart_runs/pipeline skip_train=true")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(PipelineConfig, a.config, a.overrides)
        root = cfg.storage
        gen_cfg = load_config(GenerateConfig, cfg.generate_config, [f"output={join(root, 'episodes')}"])
        grid = load_config(GridSpec, cfg.grid_config, [f"storage={join(root, 'grids')}"])
        train_cfg = None
        if not cfg.skip_train:
            train_cfg = load_config(TrainConfig, cfg.train_config,
                                    [f"data={gen_cfg.output}", f"storage={join(root, 'train')}"])
        # the grid is checked first: a bad dataset id or an icl prompt that cannot fit must not surface
        # after hours of generating and training (the trained reasoner joins it afterwards)
        n_cells = len(expand(grid))
    except (ConfigError, GridError) as e:
        print(f"tart pipeline: error: {e}", file=sys.stderr)
        return 2
    print(f"[pipeline] grid {grid.name}: {n_cells} valid cells (+ those of the trained reasoner)", flush=True)
    init_ray(a.address, a.num_cpus)  # one Ray for the three stages (each is a no-op start after this)
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
        print(f"tart pipeline: {failure_line(summary)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
