"""Grid faults with real processes: a SIGKILLed driver, a crashed MLflow server, two drivers
at once on the same storage, a full disk, a truncated result file.

Each case asserts the outcome that matters: the results table holds every cell exactly
once, MLflow holds exactly one FINISHED run per cell, and nothing finished is lost.
Drivers are `tart grid` subprocesses (executor=local: the faults are about the driver,
its storage and its MLflow, not about Ray scheduling, which test_grid/test_jobs cover).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.grid import GridSpec, expand, read_results, run_grid
from pipeline.storage import StorageError
from pipeline.tracking import TAG_CELLS, decode_cells, flat_metric
from servers import MlflowServer

pytestmark = pytest.mark.timeout(900)

# every grid's store is a copy of one migrated sqlite database (tests/conftest.py `mlflow_sqlite`) or
# the session's MLflow server (`mlflow_server`); the test that kills its server has its own

TART = str(Path(sys.executable).parent / "tart")
N_CELLS = 18  # 1 dataset x 1 backbone x 3 methods x 2 k x 3 seeds
GRID = ["datasets=[sms_spam]", "backbones=[minilm-l6]", "methods=[tart,lr_probe,lr_full]", "ks=[18,32]",
        "seeds=[0,1,2]", "test_size=30", "train_size=64", "executor=local", "embed_batch_size=32"]


def _env() -> dict:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TART_CACHE=os.environ.get("TART_CACHE", "/tmp/tart-test-cache"))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture(scope="module")
def emb_cache(sms_minilm_cache):
    """The session's sms_spam x minilm-l6 embedding cache (tests/conftest.py; GRID's sizes are its sizes):
    computed by the first grid that needs it, here or in test_grid.py."""
    return sms_minilm_cache


def _overrides(tmp_path: Path, cache: str, mlflow_uri: str, name: str = "faults") -> list[str]:
    return [f"name={name}", *GRID, f"storage={tmp_path}/grids", f"cache_uri={cache}", f"mlflow_uri={mlflow_uri}"]


def _spec(overrides: list[str]) -> GridSpec:
    return load_config(GridSpec, None, overrides)


def _cell_files(spec: GridSpec) -> list[Path]:
    d = Path(spec.storage) / spec.name / "cells"
    return sorted(p for p in d.glob("*.parquet") if not p.name.startswith("_")) if d.is_dir() else []


def _start(overrides: list[str], log: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([TART, "grid", *overrides, "--no-compare", *extra], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env or _env())


def _wait_for_cells(spec: GridSpec, n: int, proc: subprocess.Popen, log: Path, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while len(_cell_files(spec)) < n:
        assert proc.poll() is None, f"grid exited (rc {proc.returncode}) before {n} cells:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {n} cells after {timeout_s}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.02)


def _mlflow_cell_runs(uri: str, grid: str) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("tart-grid")
    return c.search_runs([exp.experiment_id], max_results=10000,
                         filter_string=f"tags.`tart.grid` = '{grid}' and tags.`tart.kind` = 'cell'")


def _assert_each_cell_once(spec: GridSpec, uri: str) -> None:
    expected = {c.cell_id for c in expand(spec)}
    files = _cell_files(spec)
    assert {p.stem for p in files} == expected
    for p in files:  # every file is a complete, readable one-row table
        assert pq.read_table(p).num_rows == 1, p
    df = read_results(spec)
    assert len(df) == N_CELLS and set(df["cell_id"]) == expected
    runs = _mlflow_cell_runs(uri, spec.name)
    ids = [cid for r in runs for cid in decode_cells(r.data.tags.get(TAG_CELLS))]
    assert sorted(ids) == sorted(expected), f"{len(ids)} cells in MLflow runs for {N_CELLS} cells"
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:  # every cell a run lists has its metrics
        assert all(flat_metric("accuracy", k) in r.data.metrics for k in decode_cells(r.data.tags[TAG_CELLS]).values())


@pytest.mark.slow
def test_driver_sigkilled_at_a_random_cell_reruns_only_the_missing_cells(tmp_path, emb_cache, mlflow_sqlite):
    uri = mlflow_sqlite(tmp_path / "mlflow.db")
    over = _overrides(tmp_path, emb_cache, uri)
    spec = _spec(over)
    seed = random.randrange(10**6)
    kill_after = random.Random(seed).randint(1, 9)
    print(f"kill after {kill_after} cells (seed {seed})")
    proc = _start(over, tmp_path / "first.log")
    _wait_for_cells(spec, kill_after, proc, tmp_path / "first.log")
    proc.kill()  # SIGKILL: no cleanup, no atexit, maybe mid-write or mid-MLflow-log
    proc.wait(timeout=30)
    finished = len(_cell_files(spec))
    assert kill_after <= finished < N_CELLS

    log = tmp_path / "second.log"
    rerun = _start(over, log)
    assert rerun.wait(timeout=600) == 0, log.read_text()[-3000:]
    out = log.read_text()
    assert f"{finished} already in the results table, {N_CELLS - finished} to run" in out, out[-3000:]
    assert f'"cells_run": {N_CELLS - finished}' in out
    _assert_each_cell_once(spec, uri)
    # the killed launch's parent run is closed as KILLED by the re-run; the re-run's is FINISHED
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("tart-grid")
    launches = c.search_runs([exp.experiment_id], filter_string="tags.`tart.kind` = 'grid-launch'",
                             order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in launches] == ["KILLED", "FINISHED"]


@pytest.mark.slow
def test_mlflow_server_dies_mid_grid_nothing_lost_and_sync_completes(tmp_path, emb_cache, mlflow_template):
    srv = MlflowServer(tmp_path / "srv", env=_env(), db_template=mlflow_template).start()
    try:
        over = _overrides(tmp_path, emb_cache, srv.uri, name="srvdown")
        spec = _spec(over)
        log = tmp_path / "grid.log"
        # no MLflow-client HTTP retries: the grid's own three attempts still run, but the dead server
        # costs 3 s instead of 18 s of urllib3 back-off (the outcome asserted below is the same)
        proc = _start(over, log, env={**_env(), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
        _wait_for_cells(spec, 3, proc, log)
        srv.kill()
        rc = proc.wait(timeout=600)
        out = log.read_text()
        assert rc == 3, out[-3000:]  # 3: results complete, MLflow view incomplete
        assert "not in MLflow" in out and "--sync-mlflow" in out
        assert len(read_results(spec)) == N_CELLS  # nothing lost

        srv.start()  # the same server (database, port) comes back
        # cells with a FINISHED run (a run the dying server took mid-log stays RUNNING: its cell is re-logged)
        n_before = len({cid for r in _mlflow_cell_runs(srv.uri, spec.name) if r.info.status == "FINISHED"
                        for cid in decode_cells(r.data.tags.get(TAG_CELLS))})
        assert n_before < N_CELLS
        sync = subprocess.run([TART, "grid", *over, "--sync-mlflow"], capture_output=True, text=True, env=_env(),
                              timeout=600)
        assert sync.returncode == 0, sync.stdout[-2000:] + sync.stderr[-2000:]
        assert f"synced {N_CELLS - n_before} cell(s)" in sync.stdout
        _assert_each_cell_once(spec, srv.uri)
    finally:
        srv.stop()


@pytest.mark.slow
def test_two_drivers_of_one_grid_at_once_write_each_cell_once(tmp_path, mlflow_server):
    # their own, empty embedding cache: the two drivers also race on its writes
    over = _overrides(tmp_path, str(tmp_path / "emb"), mlflow_server, name="twice")
    spec = _spec(over)
    procs = [_start(over, tmp_path / f"driver{i}.log") for i in (0, 1)]
    for i, p in enumerate(procs):
        assert p.wait(timeout=600) == 0, (tmp_path / f"driver{i}.log").read_text()[-3000:]
        # a console people can read: MLflow's per-run "View run ... at" lines (a pair per series run) stay out
        assert "View run" not in (tmp_path / f"driver{i}.log").read_text()
    _assert_each_cell_once(spec, mlflow_server)
    table = pq.read_table(Path(spec.storage) / spec.name / "results.parquet").to_pandas()
    assert len(table) == N_CELLS and table["cell_id"].is_unique
    # a third, sequential run (in this process) finds everything done and logs nothing new
    again = run_grid(spec)
    assert again["cells_run"] == 0 and again["cells_skipped"] == N_CELLS and again["mlflow_unlogged"] == 0
    _assert_each_cell_once(spec, mlflow_server)


@pytest.fixture
def small_disk(tmp_path):
    """A real 48 KiB tmpfs: the grid's storage fills up after a few cells (needs root)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (not root?): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_stops_with_a_clear_error_and_keeps_finished_cells(tmp_path, emb_cache, small_disk, pipeline_log,
                                                                    mlflow_sqlite):
    uri = mlflow_sqlite(tmp_path / "mlflow.db")
    over = [o for o in _overrides(tmp_path, emb_cache, uri, name="full") if not o.startswith("storage=")]
    spec = _spec([*over, f"storage={small_disk}"])
    with pytest.raises(StorageError, match=r"cannot write the result of cell .*No space left on device"):
        run_grid(spec)
    files = _cell_files(spec)
    assert 0 < len(files) < N_CELLS
    for p in files:
        assert pq.read_table(p).num_rows == 1
    assert not [p for p in (Path(small_disk) / "full" / "cells").iterdir() if p.name.startswith("_tmp-")]
    assert "skipping unreadable" not in pipeline_log.text
    written = {p.stem for p in files}
    assert {cid for r in _mlflow_cell_runs(uri, "full") for cid in decode_cells(r.data.tags.get(TAG_CELLS))} == written

    # more room: the re-run computes only what is missing
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    summary = run_grid(spec)
    assert summary["cells_skipped"] == len(written) and summary["cells_run"] == N_CELLS - len(written)
    _assert_each_cell_once(spec, uri)


def test_truncated_result_file_is_recomputed_not_read(tmp_path, emb_cache, pipeline_log, mlflow_sqlite):
    uri = mlflow_sqlite(tmp_path / "mlflow.db")
    spec = _spec(_overrides(tmp_path, emb_cache, uri, name="trunc"))
    run_grid(spec)
    victim = _cell_files(spec)[5]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    df = read_results(spec)
    assert len(df) == N_CELLS - 1 and victim.stem not in set(df["cell_id"])
    assert f"skipping unreadable result file {victim}" in pipeline_log.text
    summary = run_grid(spec)
    assert summary["cells_run"] == 1 and summary["cells_skipped"] == N_CELLS - 1
    _assert_each_cell_once(spec, uri)  # the cell was in MLflow already: not logged twice


def test_series_runs_that_partly_overlap_are_resolved_to_each_cell_once_even_by_two_dedupes_at_once(
        tmp_path, emb_cache, mlflow_sqlite):
    """Two drivers that both computed a cell log it in different series runs: {k18, k32} and
    {k32, k48}. Deduping keeps the earlier run, deletes the later and logs its other cell again.
    Two drivers dedupe here at the same moment (threads released together; the interleaving in
    which both re-log the same rest is not forced: a re-log is followed by another pass)."""
    import threading

    import pandas as pd

    from pipeline.grid.mlflow_view import MlflowView

    uri = mlflow_sqlite(tmp_path / "mlflow.db")
    over = [o for o in _overrides(tmp_path, emb_cache, uri, name="overlap") if not o.startswith("ks=")]
    spec = _spec([*over, "ks=[18,32,48]", "seeds=[0]", "methods=[lr_probe]"])
    run_grid(spec)  # three cells of one series, logged as one run
    rows = {r["k"]: r for r in read_results(spec).to_dict("records")}
    table = pd.DataFrame(list(rows.values()))
    first, second = MlflowView(spec, "a"), MlflowView(spec, "b")
    for v in (first, second):
        v.logged = set()  # as if each had computed its cells without seeing the other's run
    first._log_segment([rows[18], rows[32]])
    second._log_segment([rows[32], rows[48]])
    barrier = threading.Barrier(2)

    def dedupe(view):
        barrier.wait()
        view.dedupe(table)

    threads = [threading.Thread(target=dedupe, args=(v,)) for v in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    runs = [r for r in _mlflow_cell_runs(uri, spec.name) if r.info.status == "FINISHED"]
    ids = [cid for r in runs for cid in decode_cells(r.data.tags.get(TAG_CELLS))]
    assert sorted(ids) == sorted(r["cell_id"] for r in rows.values()), ids


def test_a_live_drivers_in_flight_series_run_is_never_deleted_by_another_drivers_dedupe(
        tmp_path, emb_cache, mlflow_sqlite):
    """The interleaving that once lost a cell from MLflow (two drivers at once, 1 run in ~20):
    driver A has created its series run (earlier start) and not yet terminated it; driver B's run of
    the same cells is FINISHED. If B's dedupe deleted A's unfinished run as a leftover while A's
    dedupe, seeing both FINISHED, deleted B's (the later one), no run would hold the cells. Here
    B's dedupe must leave A's run alone; once A's run finishes, A's dedupe keeps it and removes B's."""
    from mlflow.entities import RunStatus

    from pipeline.grid.mlflow_view import PARENT_RUN_ID, MlflowView
    from pipeline.tracking import KIND_CELL, TAG_GRID, TAG_KIND, encode_cells

    uri = mlflow_sqlite(tmp_path / "mlflow.db")
    over = [o for o in _overrides(tmp_path, emb_cache, uri, name="inflight") if not o.startswith("ks=")]
    spec = _spec([*over, "ks=[18,32]", "seeds=[0]", "methods=[lr_probe]"])
    run_grid(spec)
    rows = sorted(read_results(spec).to_dict("records"), key=lambda r: r["k"])
    cells = {r["cell_id"] for r in rows}
    a, b = MlflowView(spec, "a"), MlflowView(spec, "b")  # both launches RUNNING, their drivers (this pid) alive
    for r in _mlflow_cell_runs(uri, spec.name):  # start from no series run at all
        a.client.delete_run(r.info.run_id)
    tags = {PARENT_RUN_ID: a.parent_id, TAG_GRID: spec.name, TAG_KIND: KIND_CELL,
            TAG_CELLS: encode_cells((r["k"], r["cell_id"]) for r in rows)}
    in_flight = a.client.create_run(a.exp_id, run_name="a-in-flight", tags=tags).info.run_id
    time.sleep(0.01)  # B's run starts later
    b.logged = set()
    b._log_segment(rows)
    b.dedupe()
    assert a.client.get_run(in_flight).info.lifecycle_stage == "active", "B deleted A's in-flight run"
    a.client.set_terminated(in_flight, RunStatus.to_string(RunStatus.FINISHED))
    a.dedupe()
    finished = [r for r in _mlflow_cell_runs(uri, spec.name) if r.info.status == "FINISHED"]
    assert [r.info.run_id for r in finished] == [in_flight]
    assert set(decode_cells(finished[0].data.tags[TAG_CELLS])) == cells
