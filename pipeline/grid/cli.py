"""`tart grid` (= `python -m jobs.grid`): run a grid, print its comparison, exit with its status."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .. import console
from ..compare import compare_from_table
from ..config import ConfigError, defaults_epilog, load_config, stage_parser
from ..storage import StorageError
from ..tracking import TrackingError
from .driver import run_grid
from .mlflow_view import sync_mlflow
from .results import read_results
from .spec import DEFAULT_GRID, GridError, GridSpec, expand_grid

FIELD_HELP = {
    "name": "grid id: results live under <storage>/<name>/",
    "datasets": "names, or {name, options} mappings (a class pair: positive_class + negative_class; "
                "a multi-class task: classes=[...], then every k a multiple of the number of classes)",
    "backbones": "registered names, HF ids or local folders",
    "methods": "from pipeline.methods (tart, lr_probe, lr_full, icl)",
    "reasoners": '"default" (the shipped default), v1 | v2 (shipped by name), checkpoint dirs, or models:/NAME@ALIAS | models:/NAME/VERSION '
                 "(the grid's MLflow registry, resolved once per launch)",
    "protocols": "stream | vanilla | loo (vanilla/loo: causal LMs only)",
    "test_size": "balanced test subsample per dataset",
    "train_size": "balanced context pool per dataset",
    "cache_uri": 'embedding cache ("" = the embed stage default)',
    "mlflow_uri": "null: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db",
    "executor": "ray | local",
    "address": "Ray address (null: local, or the job's cluster); --address wins",
    "embed_torch_threads": "torch threads per embedding actor (null: as Ray sets them)",
    "gpus_per_actor": "per embedding actor",
    "gpus_per_icl_task": "per ICL task (one seed of one dataset x causal LM)",
    "cpus_per_icl_task": "ICL is compute-bound: do not share a core",
    "icl_batch_size": "queries per ICL forward pass (8 on a CPU, 32 on a GPU)",
    "icl_max_chars": "icl: cut every example to N characters so large-k prompts fit (in the icl cells' ids)",
    "method_ks": "other ks for some methods, e.g. method_ks.icl=[18,32] (an LM's context holds only so many)",
    "dtype": "auto: bfloat16 on GPUs and bf16-native CPUs, else float32",
}

EXAMPLES = [
    "  tart grid                                   # the default grid (configs/grids/default.yaml)",
    "  tart grid --config configs/grids/paper.yaml mlflow_uri=http://mlflow:5000",
    "  tart grid methods=[tart,lr_probe] --dry-run  # validate and count the cells, run nothing",
    "  tart grid reasoners=[models:/tart-reasoner@champion]  # the registry's champion (MLflow model registry)",
    "  tart grid --sync-mlflow                     # log table rows that MLflow is missing",
    "",
    "exit status: 0 all cells done and logged; 1 some cells failed (re-run: finished cells are kept);",
    "  2 invalid grid or unusable storage/MLflow (nothing run, or stopped at the first failed write);",
    "  3 every cell is in the results table but MLflow missed some (`tart grid --sync-mlflow` later).",
]


def build_parser() -> argparse.ArgumentParser:
    p = stage_parser("tart grid", "Run an evaluation grid (the main job): datasets x backbones x methods x "
                     "reasoners x k x seeds, each cell computed once, into a results table and MLflow, then "
                     f"print the comparison. Default config: {DEFAULT_GRID.relative_to(DEFAULT_GRID.parents[2])}.",
                     defaults_epilog(GridSpec(), FIELD_HELP, EXAMPLES), "configs/grids/paper.yaml",
                     "methods=[tart,lr_probe] ks=[18,32]")
    p.set_defaults(config=str(DEFAULT_GRID))
    p.add_argument("--force", action="store_true", help="recompute cells already in the results table")
    p.add_argument("--sync-mlflow", action="store_true", help="only log results-table rows missing from MLflow")
    p.add_argument("--dry-run", action="store_true", help="validate and list the cells, run nothing")
    p.add_argument("--no-compare", action="store_true", help="do not print the comparison table at the end")
    return p


def _log_under_storage(spec: GridSpec, verbose: bool) -> None:
    """The libraries' log file of this run goes under the grid's storage (when it is a local folder)."""
    if console.is_configured() and "://" not in spec.storage:
        name = f"grid-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        console.setup(verbose=verbose, log_file=Path(spec.storage) / spec.name / "logs" / name)


def failure_line(summary: dict) -> str:
    """One line on the failed cells: a re-run retries the transient ones; the others need a changed grid."""
    failed, fixed = summary["cells_failed"], summary.get("cells_failed_deterministic", 0)
    head = f"{failed} of {summary['cells_total'] - summary['cells_skipped']} cell(s) failed (their errors are above); "
    if fixed == failed:
        return head + "the errors are in their input (a re-run fails the same way): change the grid; finished cells are kept"
    if fixed:
        return head + (f"{fixed} of them on their input (change the grid for those), the others may pass on a "
                       f"re-run; finished cells are kept")
    return head + "re-run to retry them, finished cells are kept"


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        spec = load_config(GridSpec, a.config, a.overrides)
        spec.address = a.address or spec.address
        if a.sync_mlflow:
            sync_mlflow(spec)
            return 0
        if a.dry_run:
            grid = expand_grid(spec)
            for _, r in grid.registry:
                print(f"reasoner {r.ref} = {r.name} version {r.version} (weights {r.digest})")
            print(f"grid {spec.name}: {len(grid.cells)} valid cells")
            return 0
        _log_under_storage(spec, a.verbose)
        summary = run_grid(spec, force=a.force, num_cpus=a.num_cpus)
    except (ConfigError, GridError, StorageError, TrackingError) as e:
        print(f"tart grid: error: {e}", file=sys.stderr)
        return 2
    if not a.no_compare:
        print(compare_from_table(read_results(spec), spec, summary)["text"])
    if console.log_file_note():
        print(console.log_file_note())
    if summary["cells_failed"]:
        print(f"tart grid: {failure_line(summary)}", file=sys.stderr)
        return 1
    return 3 if summary.get("mlflow_unlogged") else 0
