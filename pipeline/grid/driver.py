"""`run_grid`: expand, skip what the results table holds, embed once per group, run the cells.

Embedding cells (methods that run on embeddings) are grouped by (dataset, backbone,
protocol): each group is embedded once, then its cells run as units (one cell each here;
on Ray, batches of cells per task: `_cell_units`). Text cells (icl, icl_calibrated, setfit) are grouped
by (dataset, backbone, the method's runner): one unit loads the backbone once (on Ray, one unit per seed:
a lost task costs one seed's cells, not the group's), and on Ray they are submitted first,
so the long LM tasks overlap the embedding and the cheap cells. Every finished cell goes to
the results table at once, then to MLflow (queued by series, logged in the background);
progress, timings and failures are handled in one place (`_Recorder`) for both kinds.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Optional

from .. import console
from ..methods import EMBEDDINGS, TEXTS, get_method
from ..registry import launch_tags
from ..runtime import init_ray
from .cells import group_episodes, run_embedding_cells, run_text_cells
from .executor import Executor, Outcome
from .mlflow_view import MlflowView
from .results import cell_row, check_storage, finished_elsewhere, read_results, write_cell_result, write_results_table
from .spec import Cell, Expansion, GridSpec, expand_grid

logger = logging.getLogger(__name__)


def is_deterministic(error: BaseException) -> bool:
    """A failure a re-run repeats: the project's input errors are ValueErrors (ICLError, DatasetError,
    BackboneError, ...; a Ray task's error is an instance of its cause's class too). Lost workers,
    timeouts and OSErrors may pass on a re-run."""
    return isinstance(error, ValueError)


class _Recorder:
    """Where every cell outcome lands: the results table, MLflow, the progress display, the timings."""

    def __init__(self, spec: GridSpec, view: Optional[MlflowView], total: int):
        self.spec, self.view = spec, view
        self.progress = console.Progress("cells", total, "cells")
        self.timings = {"embed_s": 0.0, "cells_s": 0.0, "mlflow_s": 0.0}
        self.forward_passes = 0
        self.deterministic = 0  # failed cells whose error a re-run repeats (bad input, not a lost node)

    def take(self, outcomes) -> None:
        for out in outcomes:
            self.record(out)

    def record(self, out: Outcome) -> None:
        c: Cell = out.key
        if out.error is not None or out.result is None:
            if self.view is not None:
                self.view.skip_cell(c)  # its series is logged without it
            if out.error is not None:
                self.deterministic += is_deterministic(out.error)
                self.progress.fail(note=f"cell {c.cell_id} ({c.method} k={c.k} seed={c.seed}) failed: {out.error}")
            else:
                self.progress.advance(note=f"{c.method} k={c.k} seed={c.seed}: finished by a concurrent run")
            return
        row = cell_row(c, out.result, grid=self.spec.name)
        write_cell_result(self.spec, row)  # StorageError stops the grid: finished cells are intact
        if self.view is not None:
            t = time.time()
            self.view.log_cell(row)  # queued; its series is logged in the background (a failure: view `down`)
            self.timings["mlflow_s"] += time.time() - t
        self.progress.advance(note=f"{c.dataset}/{c.backbone}/{c.method} k={c.k} seed={c.seed} "
                                   f"acc={row['accuracy']:.3f}")


def _groups(cells: list[Cell], key) -> dict:
    """Cells by `key(cell)`, in cell order."""
    out: dict = {}
    for c in cells:
        out.setdefault(key(c), []).append(c)
    return out


MAX_CELLS_PER_TASK = 64  # a lost Ray task costs at most this many cheap cells


def _cell_units(group: list[Cell], executor: Executor, cpus_per_cell: float) -> list[list[Cell]]:
    """Embedding cells in units: here one cell each (a killed driver loses one cell); on Ray
    about four tasks per CPU slot of the cluster, up to MAX_CELLS_PER_TASK cells each (a task
    costs ~30-40 ms of scheduling and transfer, more than a probe's fit)."""
    if not executor.remote:
        return [[c] for c in group]
    size = min(MAX_CELLS_PER_TASK, max(1, math.ceil(len(group) / (4 * executor.slots(cpus_per_cell)))))
    return [group[i:i + size] for i in range(0, len(group), size)]


def _embedding_phase(spec: GridSpec, cells: list[Cell], executor: Executor, rec: _Recorder) -> None:
    for group in _groups(cells, lambda c: c.group).values():
        t = time.time()
        episodes, passes = group_episodes(spec, group)
        rec.timings["embed_s"] += time.time() - t
        rec.forward_passes += passes
        for unit in _cell_units(group, executor, spec.cpus_per_cell):
            executor.submit(run_embedding_cells, unit, [episodes[c] for c in unit], cpus=spec.cpus_per_cell,
                            retries=2)
        rec.take(executor.outcomes(wait=False))  # local: run them now; Ray: report those already done


def _submit_text_cells(spec: GridSpec, cells: list[Cell], executor: Executor) -> None:
    # cells of methods that share a runner (icl, icl_calibrated) go together: one backbone load and,
    # per (k, seed), one shared piece of work (adjacent in the unit: cells are in (k, seed, method) order)
    key = lambda c: (*c.group, get_method(c.method).runner, c.dtype, c.prompt_max_chars)  # noqa: E731
    for group in _groups(cells, key).values():
        # on Ray one task per seed (a lost task costs one seed's cells); here one unit: the LM loads once
        seeds = sorted({c.seed for c in group})
        units = [[c for c in group if c.seed == s] for s in seeds] if executor.remote else [group]
        for unit in units:
            executor.submit(run_text_cells, unit, spec.icl_batch_size, cpus=spec.cpus_per_icl_task,
                            gpus=spec.gpus_per_icl_task, retries=1)


def _open_view(spec: GridSpec, launch_id: str, resync: bool) -> Optional[MlflowView]:
    """The launch's MLflow view (None: MLflow unavailable, results go to the table only)."""
    try:
        view = MlflowView(spec, launch_id)
    except Exception as e:  # noqa: BLE001 - results still land in the table; sync later
        logger.warning(f"[grid] WARNING: MLflow unavailable ({e}); results go to the table only — "
                       f"run `tart grid --sync-mlflow` later")
        return None
    if resync:  # rows a killed driver or an MLflow outage left out of MLflow
        n = view.sync(read_results(spec))
        if n:
            logger.info(f"[grid] logged {n} finished cell(s) that MLflow was missing")
    return view


def _record_registry(view: Optional[MlflowView], grid: Expansion) -> None:
    """What the launch's `models:/` reasoners resolved to, as tags of its MLflow run (and log lines)."""
    for i, r in grid.registry:
        logger.info(f"[grid] reasoner {r.ref} = {r.name} version {r.version} (weights {r.digest})")
    if view is None or not grid.registry:
        return
    from mlflow.entities import RunTag  # loaded by the view

    try:
        view.client.log_batch(view.parent_id, tags=[RunTag(k, v) for k, v in launch_tags(grid.registry).items()])
    except Exception as e:  # noqa: BLE001 - the cells record the versions too (reasoner, reasoner_digest)
        logger.warning(f"[grid] WARNING: could not tag the launch's MLflow run with its reasoner versions ({e})")


def run_grid(spec: GridSpec, force: bool = False, num_cpus: Optional[float] = None) -> dict:
    """Run (or resume) a grid; returns its summary. `num_cpus`: of a Ray started here (executor=ray).

    Failed cells do not stop the others: they are counted in `cells_failed` (re-run to
    retry them). GridError (invalid grid) and StorageError (unusable storage, or a write
    that failed: finished cells are kept) are raised.
    """
    t_start = time.time()
    grid = expand_grid(spec)  # validates; registry reasoners are resolved here, once per launch
    cells = grid.cells
    check_storage(spec)
    done = set() if force else set(read_results(spec).get("cell_id", []))
    todo = [c for c in cells if c.cell_id not in done]
    logger.info(f"[grid] {spec.name}: {len(cells)} cells, {len(cells) - len(todo)} already in the results table, "
                f"{len(todo)} to run")
    view = _open_view(spec, time.strftime("%Y%m%d-%H%M%S"), resync=bool(done))
    _record_registry(view, grid)
    if spec.executor == "ray":
        init_ray(spec.address, num_cpus)
    executor = Executor(remote=spec.executor == "ray", skip=lambda c: finished_elsewhere(spec, c))
    rec = _Recorder(spec, view, len(todo))
    if view is not None:
        view.expect(todo)
    t_cells = time.time()
    try:
        text_cells = [c for c in todo if get_method(c.method).runs_on == TEXTS]
        if executor.remote:  # the long ICL tasks first: they run while the embedding cells are embedded and fit
            _submit_text_cells(spec, text_cells, executor)
        _embedding_phase(spec, [c for c in todo if get_method(c.method).runs_on == EMBEDDINGS], executor, rec)
        if not executor.remote:
            _submit_text_cells(spec, text_cells, executor)
        rec.take(executor.outcomes())
    finally:
        rec.progress.close()
        rec.timings["cells_s"] = executor.busy_s
        # from the first cell to the last outcome, embedding excluded (on Ray: tasks, scheduling, transfers)
        rec.timings["cells_wall_s"] = time.time() - t_cells - rec.timings["embed_s"]
        if view is not None:  # also when a StorageError stops the grid: what it finished reaches MLflow
            t = time.time()
            view.flush()  # the wait for the background logging: the grid's MLflow time
            rec.timings["mlflow_s"] += time.time() - t
    return _finish(spec, cells, todo, view, rec, t_start)


def _finish(spec: GridSpec, cells: list[Cell], todo: list[Cell], view: Optional[MlflowView], rec: _Recorder,
            t_start: float) -> dict:
    """Consolidate the table, close the MLflow launch, log and return the summary."""
    table_uri = write_results_table(spec)
    failed = rec.progress.failed
    summary = {"cells_total": len(cells), "cells_run": rec.progress.done, "cells_failed": failed,
               "cells_failed_deterministic": rec.deterministic,
               "cells_skipped": len(cells) - len(todo), "forward_passes": rec.forward_passes,
               "mlflow_unlogged": view.unlogged if view is not None else len(todo),
               "mlflow_runs": view.runs_logged if view is not None else 0,
               "mlflow_background_s": view.log_busy_s if view is not None else 0.0,
               "wall_s": time.time() - t_start, **rec.timings}
    if view is not None and view.unlogged:
        logger.warning(f"[grid] WARNING: {view.unlogged} cell(s) are in the results table but not in MLflow "
                       f"({view.down}); run `tart grid --sync-mlflow` (or re-run the grid) once MLflow is back")
    if view is not None:
        try:
            view.finish(summary, status="FAILED" if failed else "FINISHED")
        except Exception as e:  # noqa: BLE001
            logger.warning(f"[grid] WARNING: could not close the MLflow parent run ({e})")
    summary["results_uri"] = table_uri
    summary["mlflow_uri"] = view.uri if view else None
    summary["parent_run_id"] = view.parent_id if view else None
    summary["experiment_id"] = view.exp_id if view else None
    shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in summary.items()}
    logger.info(f"[grid] done: {json.dumps(shown)}")
    return summary
