"""MLflow as the view of a grid's results table: one parent run per launch, one child run per series.

The layout (tag, param and metric names) is `pipeline.tracking`'s, which `compare` reads: a
series is the cells that differ only in k, logged as one run with a step per k. Why series: a
run costs three round trips (create, log batch, terminate; ~0.1-0.3 s against a server), which
per cell made logging the slowest part of a grid of cheap cells. Finished cells wait in the
view until their series has all its cells of this launch (or SEGMENT_MAX_CELLS), then a
background thread logs them while the grid goes on.

Only the driver logs, and a cell already in MLflow is never logged twice; `sync_mlflow`
logs what an outage or a killed driver left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..config import to_dict
from ..tracking import (CELL_METRICS, KIND_CELL, KIND_LAUNCH, PREDICTIONS_ARTIFACT, SERIES_PARAMS, TAG_CELLS,
                        TAG_CODE_VERSION, TAG_DATASET, TAG_GIT_SHA, TAG_GRID, TAG_HOST, TAG_KIND, TAG_LAUNCH_ID,
                        TAG_PID, TAG_SERIES, TrackingError, connect, decode_cells, encode_cells, ensure_experiment,
                        flat_metric, flatten_params, package_versions, tag_filter)
from .results import read_results
from .spec import Cell, GridSpec

logger = logging.getLogger(__name__)


def _git_commit() -> str:
    """The project's full commit (a job's working_dir archive has no .git: $TART_GIT_COMMIT then)."""
    if os.environ.get("TART_GIT_COMMIT"):
        return os.environ["TART_GIT_COMMIT"]
    try:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# what MLflow's UI shows in its Source column (and links to the commit)
SOURCE_NAME, SOURCE_TYPE, GIT_COMMIT = "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit"


def dataset_input(dataset: str, options: str):
    """The MLflow dataset input of a grid dataset (the runs table's Dataset column): its name,
    a digest of its options (sizes included), where it comes from."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    digest = hashlib.sha256(f"{dataset}|{options}".encode()).hexdigest()[:16]
    return DatasetInput(Dataset(name=dataset, digest=digest, source_type="tart",
                                source=json.dumps({"dataset": dataset, "options": json.loads(options)})),
                        tags=[InputTag("mlflow.data.context", "evaluation")])


def _driver_gone(launch_run) -> bool:
    """Is the driver of this launch run provably dead (its host is this one and its pid is gone)?"""
    host, pid = launch_run.data.tags.get(TAG_HOST), launch_run.data.tags.get(TAG_PID)
    return host == socket.gethostname() and bool(pid) and pid.isdigit() and not _pid_alive(int(pid))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# a series is a cell's fields but k (the dtype too: another dtype is another series)
SERIES_FIELDS = tuple(f.name for f in dataclasses.fields(Cell) if f.name != "k")
SEGMENT_MAX_CELLS = 50  # log_batch takes 1,000 metrics a call: 2 x len(CELL_METRICS) per cell
STALE_RUN_S = 900  # a series run takes seconds to log: one unfinished for longer is a leftover (of a driver elsewhere)
PARENT_RUN_ID = "mlflow.parentRunId"
LOG_THREADS = 8  # concurrent series logs (a server serves them in parallel; sqlite serialises them)


def series_id(cell_or_row) -> str:
    """The id of the series a cell (or its results-table row) belongs to."""
    get = cell_or_row.get if isinstance(cell_or_row, dict) else lambda f: getattr(cell_or_row, f)
    key = {f: get(f) for f in SERIES_FIELDS}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _by_series(rows: list[dict]) -> list[list[dict]]:
    """Results-table rows grouped by series, in first-seen order."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(series_id(r), []).append(r)
    return list(out.values())


class MlflowView:
    """The driver's MLflow logger: parent run per launch, child run per series, no duplicates.

    Exactly one FINISHED run lists each cell, even when a driver was killed mid-log or two
    drivers log the same cell at once: at the end of every launch (and sync), `dedupe` walks
    the FINISHED runs from the earliest (start time, then run id: every driver picks the same
    order), keeps a run whose cells no earlier run holds, deletes one whose cells all are, and
    replaces one that holds some by a run of the rest; unfinished runs of cells held elsewhere
    are deleted once they are provably leftovers: their launch ended, its driver's pid is gone
    from this host, or they are older than STALE_RUN_S (a live driver's in-flight run is never
    deleted: see `_dedupe_pass`). If the server fails mid-grid the view goes
    `down`: the grid goes on (the results table is the source of truth) and no further call
    waits on a dead server.
    """

    def __init__(self, spec: GridSpec, launch_id: str):
        # A dead server must not stall every call for minutes in MLflow's own HTTP retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.uri = connect(spec.mlflow_uri)
        from mlflow.tracking import MlflowClient  # mlflow takes ~4 s to import: only a driver that logs pays

        self.client = MlflowClient(self.uri)
        self.exp_id = ensure_experiment(spec.experiment, self.uri)
        self.spec = spec
        self.git_commit = _git_commit()
        self.git_sha = self.git_commit[:7] if self.git_commit != "unknown" else "unknown"
        self.source = {SOURCE_NAME: "tart grid", SOURCE_TYPE: "JOB", GIT_COMMIT: self.git_commit}
        self.down: Optional[str] = None  # the error that took the server away, if any
        self.unlogged = 0  # cells this launch could not log (still in the results table)
        self.runs_logged = 0  # series runs this launch created
        self.log_busy_s = 0.0  # time the background threads spent logging (the driver waits only at the end)
        self._close_dead_launches()
        parent = self.client.create_run(
            self.exp_id, run_name=f"grid-{spec.name}-{launch_id}",
            tags={TAG_GRID: spec.name, TAG_KIND: KIND_LAUNCH, TAG_LAUNCH_ID: launch_id, TAG_GIT_SHA: self.git_sha,
                  TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()), **self.source,
                  **{f"tart.version.{k}": v for k, v in package_versions().items()}},
        )
        self.parent_id = parent.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in flatten_params(to_dict(spec)).items()]
        for i in range(0, min(len(params), 500), 100):  # log_batch takes 100 params a call
            self.client.log_batch(self.parent_id, params=params[i:i + 100])
        self._inputs_logged: set[tuple[str, str]] = set()  # datasets the parent run lists as inputs
        self.logged = self.logged_cells()
        self._expected: Counter = Counter()  # series -> cells this launch still expects to finish
        self._pending: dict[str, list[dict]] = {}  # series -> finished rows not logged yet
        self._lock = threading.Lock()
        # a sqlite store takes one writer at a time (more only wait on its lock); a server takes many
        threads = 1 if self.uri.startswith("sqlite") else LOG_THREADS
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mlflow-log")
        self._futures: list[Future] = []
        self.predictions: list[dict] = []  # this launch's rows, for the predictions table

    # ------------------------------------------------------------------ reading the view

    def _runs(self, kind: str, extra: str = "", max_results: int = 50000) -> list:
        f = f"{tag_filter(TAG_GRID, self.spec.name)} and {tag_filter(TAG_KIND, kind)}{extra}"
        return self.client.search_runs([self.exp_id], filter_string=f, max_results=max_results)

    def _series_runs(self) -> list:
        return self._runs(KIND_CELL)

    def logged_cells(self) -> set[str]:
        """Cells a FINISHED run lists (a run left RUNNING by a killed driver does not count)."""
        return {cid for r in self._series_runs() if r.info.status == "FINISHED"
                for cid in decode_cells(r.data.tags.get(TAG_CELLS))}

    def _close_dead_launches(self) -> None:
        """Mark parent runs of drivers that died on this host (pid gone) as KILLED."""
        for r in self._runs(KIND_LAUNCH, " and attributes.status = 'RUNNING'", max_results=1000):
            if _driver_gone(r):
                self.client.set_terminated(r.info.run_id, status="KILLED")

    # ------------------------------------------------------------------ logging

    def expect(self, cells: Iterable[Cell]) -> None:
        """The cells this launch will report (finished, failed or done elsewhere): a series is
        logged once all of its expected cells are in."""
        with self._lock:
            self._expected.update(series_id(c) for c in cells)

    def log_cell(self, row: dict) -> None:
        """Queue a finished cell's row; its series is logged (in the background) once complete."""
        self.predictions.append(row)
        self._arrived(series_id(row), row)

    def skip_cell(self, cell: Cell) -> None:
        """A cell this launch will not log (it failed, or another driver finished it)."""
        self._arrived(series_id(cell), None)

    def _arrived(self, sid: str, row: Optional[dict]) -> None:
        with self._lock:
            pending = self._pending.setdefault(sid, [])
            if row is not None and row["cell_id"] not in self.logged:
                pending.append(row)
            self._expected[sid] -= 1
            if self._expected[sid] > 0 and len(pending) < SEGMENT_MAX_CELLS:
                return
            rows = self._pending.pop(sid)
        if rows:
            self._futures.append(self._pool.submit(self._log_segment, rows))

    def flush(self) -> None:
        """Log every queued row (also of series not complete: a launch that ends) and wait."""
        with self._lock:
            batches = [rows for rows in self._pending.values() if rows]
            self._pending.clear()
        for rows in batches:
            self._futures.append(self._pool.submit(self._log_segment, rows))
        while self._futures:
            self._futures.pop().result()  # _log_segment never raises

    def _log_segment(self, rows: list[dict]) -> None:
        """Log rows of one series as one run (or several, SEGMENT_MAX_CELLS each); never raises."""
        t = time.time()
        for start in range(0, len(rows), SEGMENT_MAX_CELLS):
            self._log_rows(rows[start:start + SEGMENT_MAX_CELLS])
        with self._lock:
            self.log_busy_s += time.time() - t

    def _log_rows(self, rows: list[dict]) -> None:
        ids = {r["cell_id"] for r in rows}
        if self.down:
            with self._lock:
                self.unlogged += len(rows)
            return
        for attempt in range(3):  # transient errors (a locked sqlite behind the server) get retried
            try:
                self._create_series_run(rows)
                break
            except Exception as e:  # noqa: BLE001 - the rows are safe in the table; sync later
                if self._logged_by_another(ids):
                    with self._lock:
                        self.logged |= ids
                    return
                error = f"{type(e).__name__}: {e}"
                if attempt < 2:
                    time.sleep(1.0 + attempt)
        else:
            with self._lock:
                first = self.down is None
                self.down = self.down or error
                self.unlogged += len(rows)
            if first:
                logger.warning(f"[grid] WARNING: MLflow logging failed ({error}); the remaining cells go to the "
                               f"results table only — run `tart grid --sync-mlflow` (or re-run the grid) when "
                               f"MLflow is back")
            return
        with self._lock:
            self.logged |= ids
            self.runs_logged += 1

    def _logged_by_another(self, ids: set[str]) -> bool:
        """After a failed log: did a concurrent driver log these cells (and delete our half-made run)?"""
        try:
            return ids <= self.logged_cells()
        except Exception:  # noqa: BLE001 - the server is really down
            return False

    def _create_series_run(self, rows: list[dict]) -> None:
        from mlflow.entities import Metric, Param, RunTag  # loaded with MlflowClient in __init__

        first = rows[0]
        rows = sorted(rows, key=lambda r: int(r["k"]))
        tags = {PARENT_RUN_ID: self.parent_id, TAG_GRID: self.spec.name, TAG_KIND: KIND_CELL,
                TAG_SERIES: series_id(first), TAG_CELLS: encode_cells((r["k"], r["cell_id"]) for r in rows),
                TAG_GIT_SHA: self.git_sha, TAG_CODE_VERSION: first["code_version"], TAG_DATASET: first["dataset"],
                **self.source}
        name = f"{first['dataset']}/{first['backbone']}/{first['method']}/s{first['seed']}"
        rid = self.client.create_run(self.exp_id, run_name=name, tags=tags).info.run_id
        data = (first["dataset"], first["dataset_options"])
        # the dataset is an input of the launch's run (the runs table's Dataset column), once: a
        # log_inputs per series run would add a fourth round trip to each
        with self._lock:
            new = data not in self._inputs_logged
            self._inputs_logged.add(data)
        if new:
            self.client.log_inputs(self.parent_id, datasets=[dataset_input(*data)])
        params = [Param(c, str(first[c])) for c in SERIES_PARAMS]
        params.append(Param("ks", ",".join(str(int(r["k"])) for r in rows)[:6000]))
        now = int(time.time() * 1000)
        metrics = []
        for r in rows:
            k = int(r["k"])
            for m in CELL_METRICS:
                if r.get(m) is not None and np.isfinite(r[m]):
                    metrics += [Metric(m, float(r[m]), now, k), Metric(flat_metric(m, k), float(r[m]), now, 0)]
        self.client.log_batch(rid, metrics=metrics, params=params)
        self.client.set_terminated(rid)

    def sync(self, df) -> int:
        """Log every row of the results table `df` that MLflow does not hold yet; returns how many."""
        rows = [r for r in df.to_dict("records") if r["cell_id"] not in self.logged] if len(df) else []
        before = self.unlogged
        futures = [self._pool.submit(self._log_segment, rs) for rs in _by_series(rows)]
        for f in futures:
            f.result()
        return len(rows) - (self.unlogged - before)

    # ------------------------------------------------------------------ closing

    def dedupe(self, table=None, rounds: int = 5) -> int:
        """One FINISHED run per cell (see the class docstring); returns the runs deleted.

        `table`: the results table, to re-log the cells of a run replaced for partly
        duplicating an earlier one (read from storage when needed and not given). A pass that
        re-logged is followed by another: two drivers deduping at once can each re-log the same
        rest, and whichever re-logs last then sees (and deletes) the other's copy.
        """
        deleted = 0
        for _ in range(rounds):
            n, relogged = self._dedupe_pass(table)
            deleted += n
            if not relogged:
                break
        return deleted

    def _dedupe_pass(self, table=None) -> tuple[int, bool]:
        if self.down:
            return 0, False
        runs = self._series_runs()
        finished = sorted((r for r in runs if r.info.status == "FINISHED"),
                          key=lambda r: (r.info.start_time, r.info.run_id))
        held: set[str] = set()
        doomed, relog = [], set()
        for r in finished:
            cells = set(decode_cells(r.data.tags.get(TAG_CELLS)))
            if cells and not cells & held:
                held |= cells
                continue
            doomed.append(r)
            relog |= cells - held
            held |= cells - held
        # an unfinished run is a leftover only if no live driver may still finish it: deleting a
        # concurrent driver's in-flight run while that driver (seeing it FINISHED, ours later) deletes
        # ours would lose the cell from MLflow
        unfinished = [r for r in runs if r.info.status != "FINISHED"
                      and set(decode_cells(r.data.tags.get(TAG_CELLS))) <= held]
        if unfinished:  # the launches are looked up only then: most passes have none
            abandoned = self._abandoned_launches()
            stale_ms = time.time() * 1000 - STALE_RUN_S * 1000
            doomed += [r for r in unfinished
                       if r.data.tags.get(PARENT_RUN_ID) in abandoned or r.info.start_time < stale_ms]
        deleted = 0
        for r in doomed:
            try:
                self.client.delete_run(r.info.run_id)
                deleted += 1
            except Exception:  # noqa: BLE001 - another driver deleted it first
                pass
        if relog:  # a run that duplicated part of an earlier one: the rest of it is logged again
            table = read_results(self.spec) if table is None else table
            rows = [r for r in table.to_dict("records") if r["cell_id"] in relog]
            with self._lock:
                self.logged -= relog
            for rs in _by_series(rows):
                self._log_segment(rs)
        return deleted, bool(relog)

    def _abandoned_launches(self) -> set[str]:
        """Launch runs whose driver can no longer finish a series run: this launch (deduping
        only after its own logs are done), launches that ended, and RUNNING ones whose driver
        pid is gone from this host."""
        return {self.parent_id} | {r.info.run_id for r in self._runs(KIND_LAUNCH, max_results=5000)
                                   if r.info.status != "RUNNING" or _driver_gone(r)}

    def finish(self, summary: dict, status: str = "FINISHED") -> None:
        self.flush()
        self._pool.shutdown(wait=True)
        self.dedupe()
        if self.down:
            return
        self._log_predictions()
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in summary.items() if isinstance(v, (int, float))]
        self.client.log_batch(self.parent_id, metrics=metrics)
        self.client.set_terminated(self.parent_id, status=status)

    def _log_predictions(self) -> None:
        """This launch's predictions as one table on its run (one row per cell; MLflow shows it as a table)."""
        if not self.predictions:
            return
        import pandas as pd

        cols = ["cell_id", "dataset", "backbone", "method", "reasoner", "k", "seed", "test_ids", "labels", "probs"]
        df = pd.DataFrame([{c: r.get(c) for c in cols} for r in self.predictions])
        df["test_ids"] = df["test_ids"].map(lambda v: [str(x) for x in v])
        df["labels"] = df["labels"].map(lambda v: [int(x) for x in v])
        df["probs"] = df["probs"].map(lambda v: [round(float(x), 6) for x in v])
        try:
            self.client.log_table(self.parent_id, data=df, artifact_file=PREDICTIONS_ARTIFACT)
        except Exception as e:  # noqa: BLE001 - the predictions are in the results table too
            logger.warning(f"[grid] WARNING: could not log the predictions table ({e})")


def sync_mlflow(spec: GridSpec) -> int:
    """Log every table row that MLflow does not hold yet; returns how many were logged."""
    df = read_results(spec)
    view = MlflowView(spec, f"sync-{int(time.time())}")
    n = view.sync(df)
    if view.down:
        raise TrackingError(f"MLflow failed during sync after {n} cell(s): {view.down}")
    view.finish({"cells_synced": n})
    logger.info(f"[grid] synced {n} cell(s) to MLflow ({len(df)} in the results table)")
    return n
