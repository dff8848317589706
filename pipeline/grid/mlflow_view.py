"""MLflow as the view of a grid's results table: one parent run per launch, one child run per cell.

The layout (tag, param and metric names) is `pipeline.tracking`'s, which `compare` reads.
Only the driver logs, and a cell already in MLflow is never logged twice; `sync_mlflow`
logs what an outage or a killed driver left out.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import to_dict
from ..tracking import (CELL_METRICS, CELL_PARAMS, KIND_CELL, KIND_LAUNCH, PREDICTIONS_ARTIFACT, TAG_CELL_ID,
                        TAG_CODE_VERSION, TAG_DATASET, TAG_GIT_SHA, TAG_GRID, TAG_HOST, TAG_KIND, TAG_LAUNCH_ID,
                        TAG_PID, TrackingError, connect, ensure_experiment, flatten_params, tag_filter)
from .results import read_results
from .spec import GridSpec

logger = logging.getLogger(__name__)


def _git_sha() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MlflowView:
    """The driver's MLflow logger: parent run per launch, child run per cell, no duplicates.

    Exactly one FINISHED child run per cell, even when a driver was killed mid-log or two
    drivers log the same cell at once: at the end of every launch (and sync), `dedupe`
    keeps the earliest FINISHED run of each cell (start time, then run id: every driver
    picks the same one) and deletes the others, unfinished leftovers of killed drivers
    included. A driver whose half-logged run was deleted that way sees the cell logged.
    If the server fails mid-grid the view goes `down`: the grid goes on (the results
    table is the source of truth) and no further call waits on a dead server.
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
        self.git_sha = _git_sha()
        self.down: Optional[str] = None  # the error that took the server away, if any
        self.unlogged = 0  # cells this launch could not log (still in the results table)
        self._close_dead_launches()
        parent = self.client.create_run(
            self.exp_id, run_name=f"grid-{spec.name}-{launch_id}",
            tags={TAG_GRID: spec.name, TAG_KIND: KIND_LAUNCH, TAG_LAUNCH_ID: launch_id, TAG_GIT_SHA: self.git_sha,
                  TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())},
        )
        self.parent_id = parent.info.run_id
        for k, v in list(flatten_params(to_dict(spec)).items())[:100]:
            self.client.log_param(self.parent_id, k, v[:6000])
        self.logged = self.logged_cells()

    def _runs(self, kind: str, extra: str = "", max_results: int = 50000) -> list:
        f = f"{tag_filter(TAG_GRID, self.spec.name)} and {tag_filter(TAG_KIND, kind)}{extra}"
        return self.client.search_runs([self.exp_id], filter_string=f, max_results=max_results)

    def _cell_runs(self, cell_id: Optional[str] = None) -> list:
        return self._runs(KIND_CELL, f" and {tag_filter(TAG_CELL_ID, cell_id)}" if cell_id else "")

    def logged_cells(self) -> set[str]:
        """Cells with a FINISHED run (a run left RUNNING by a killed driver does not count)."""
        return {r.data.tags.get(TAG_CELL_ID) for r in self._cell_runs() if r.info.status == "FINISHED"}

    def _close_dead_launches(self) -> None:
        """Mark parent runs of drivers that died on this host (pid gone) as KILLED."""
        for r in self._runs(KIND_LAUNCH, " and attributes.status = 'RUNNING'", max_results=1000):
            host, pid = r.data.tags.get(TAG_HOST), r.data.tags.get(TAG_PID)
            if host == socket.gethostname() and pid and pid.isdigit() and not _pid_alive(int(pid)):
                self.client.set_terminated(r.info.run_id, status="KILLED")

    def dedupe(self) -> int:
        """Keep one run per cell: the earliest FINISHED one; delete the rest. Returns deletions.

        One search for the whole grid at the end of a launch (not one per cell: with a
        sqlite store that doubled the logging cost). Cells with no FINISHED run yet (a
        concurrent driver still logging) are left alone.
        """
        if self.down:
            return 0
        by_cell: dict[str, list] = {}
        for r in self._cell_runs():
            by_cell.setdefault(r.data.tags.get(TAG_CELL_ID), []).append(r)
        deleted = 0
        for runs in by_cell.values():
            finished = sorted((r for r in runs if r.info.status == "FINISHED"),
                              key=lambda r: (r.info.start_time, r.info.run_id))
            for r in runs if finished else []:
                if r.info.run_id != finished[0].info.run_id:
                    try:
                        self.client.delete_run(r.info.run_id)
                        deleted += 1
                    except Exception:  # noqa: BLE001 - another driver deleted it first
                        pass
        return deleted

    def log_cell(self, row: dict) -> bool:
        """Log one results-table row as a child run; False if already logged or MLflow is down."""
        if row["cell_id"] in self.logged:
            return False
        if self.down:
            self.unlogged += 1
            return False
        for attempt in range(3):  # transient errors (a locked sqlite behind the server) get retried
            try:
                self._log_cell(row)
                break
            except Exception as e:  # noqa: BLE001 - the row is safe in the table; sync later
                if self._logged_by_another(row["cell_id"]):
                    self.logged.add(row["cell_id"])
                    return False
                error = f"{type(e).__name__}: {e}"
                if attempt < 2:
                    time.sleep(1.0 + attempt)
        else:
            self.down = error
            self.unlogged += 1
            logger.warning(f"[grid] WARNING: MLflow logging failed ({self.down}); the remaining cells go to the "
                           f"results table only — run `tart grid --sync-mlflow` (or re-run the grid) when MLflow is back")
            return False
        self.logged.add(row["cell_id"])
        return True

    def _logged_by_another(self, cell_id: str) -> bool:
        """After a failed log: did a concurrent driver log the cell (and delete our half-made run)?"""
        try:
            return any(r.info.status == "FINISHED" for r in self._cell_runs(cell_id))
        except Exception:  # noqa: BLE001 - the server is really down
            return False

    def _log_cell(self, row: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag  # loaded with MlflowClient in __init__

        tags = {"mlflow.parentRunId": self.parent_id, TAG_CELL_ID: row["cell_id"], TAG_GRID: self.spec.name,
                TAG_KIND: KIND_CELL, TAG_GIT_SHA: self.git_sha, TAG_CODE_VERSION: row["code_version"]}
        name = f"{row['dataset']}/{row['backbone']}/{row['method']}/k{row['k']}/s{row['seed']}"
        run = self.client.create_run(self.exp_id, run_name=name, tags=tags)
        rid = run.info.run_id
        params = {c: str(row[c]) for c in CELL_PARAMS}
        now = int(time.time() * 1000)
        metrics = [Metric(m, float(row[m]), now, int(row["k"])) for m in CELL_METRICS
                   if row.get(m) is not None and np.isfinite(row[m])]
        self.client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                              tags=[RunTag(TAG_DATASET, row["dataset"])])
        self.client.log_text(rid, json.dumps({"ids": list(row["test_ids"]), "labels": list(map(int, row["labels"])),
                                              "probs": [float(x) for x in row["probs"]]}), PREDICTIONS_ARTIFACT)
        self.client.set_terminated(rid)

    def sync(self, df) -> int:
        """Log every row of the results table `df` that MLflow does not hold yet."""
        return sum(self.log_cell(row) for row in df.to_dict("records"))

    def finish(self, summary: dict, status: str = "FINISHED") -> None:
        self.dedupe()
        if self.down:
            return
        for k, v in summary.items():
            self.client.log_metric(self.parent_id, k, float(v))
        self.client.set_terminated(self.parent_id, status=status)


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
