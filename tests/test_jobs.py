"""Jobs on a real multi-node Ray cluster and a real MLflow tracking server.

- `ray_cluster`: a local two-node Ray cluster started with the `ray` CLI (head with the
  dashboard / Jobs API, plus a worker node joined to it), in its own temp dir. Teardown
  ends only the processes of THIS cluster (every process whose command line names its
  temp dir), never `ray stop` (which would kill every Ray on the machine).
- Jobs are submitted the way operators do: `ray job submit --working-dir <repo>` and the
  Python `JobSubmissionClient`; the job runs from an uploaded copy of the repo.
- Node death (`victim_node`): the worker node is killed by pid (its raylet, every process the
  raylet started, its log monitor) in the middle of a grid job and of an embedding pass;
  the fixture starts a worker node again afterwards, so the cluster has two nodes for the
  next test.
- `mlflow_server` (tests/conftest.py): the session's `mlflow server` (sqlite backend, own
  process group), shared with the other tests that only log to a server.

Kept tiny (one dataset, MiniLM, k=18, one seed, 20 test / 40 pool examples): the
point is the plumbing, not the numbers. Every test has a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.grid import GridSpec, read_results
from pipeline.tracking import TAG_CELLS, decode_cells

from servers import free_port, kill_processes_mentioning

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: `ray`, `mlflow`, `python`
RAY = str(BIN / "ray")
# what the job's upload must not carry (the repo's .gitignore is honoured too)
EXCLUDES = [".venv", ".git", "tart_runs", "mlruns", "mlartifacts", ".tart_cache", "tart_cache", "__pycache__",
            ".pytest_cache", ".hypothesis", "*.egg-info", "mlflow.db", ".whl", ".gpu_out", "build", "dist"]
# cluster/runtime_env.yaml's env_vars (its TART_RUNTIME_ENV marker lets a submitted job past jobs/_guard.py);
# not its pip list: the test cluster runs from this venv, offline
RUNTIME_ENV_VARS = yaml.safe_load((REPO_ROOT / "cluster" / "runtime_env.yaml").read_text())["env_vars"]
TINY = ["datasets=[sms_spam]", "backbones=[minilm-l6]", "methods=[tart,lr_full]", "ks=[18]", "seeds=[0]",
        "test_size=20", "train_size=40", "embed_batch_size=16"]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1",
               TART_CACHE=os.environ.get("TART_CACHE", "/tmp/tart-test-cache"), TOKENIZERS_PARALLELISM="false",
               PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]))  # the job's `python` is the venv's
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=kw.pop("env", _env()), **kw)


@pytest.fixture(scope="module")
def ray_cluster():
    """A real 2-node local Ray cluster (head: 2 CPUs + dashboard; worker: 1 CPU)."""
    import ray

    ray.shutdown()  # this process must not hold another Ray (e.g. from the ray_local fixture)
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash = free_port(), free_port()
    env = _env()
    head = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
            "--include-dashboard", "true", "--temp-dir", temp_dir, "--disable-usage-stats"]
    worker = [RAY, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--temp-dir", temp_dir,
              "--disable-usage-stats"]
    try:
        for cmd in (head, worker):
            for attempt in range(2):  # a loaded 2-core box can miss Ray's start-up deadlines
                r = _run(cmd, timeout=240, env=env)
                if r.returncode == 0:
                    break
                if attempt == 1 or cmd is worker:
                    raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
                kill_processes_mentioning(temp_dir)
        address = f"http://127.0.0.1:{dash}"
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + 120
        while True:  # the Jobs API and both nodes must be up
            try:
                from ray.util.state import list_nodes

                client = JobSubmissionClient(address)
                client.list_jobs()
                nodes = [n for n in list_nodes(address=address) if n.state == "ALIVE"]
                if len(nodes) >= 2:
                    break
            except Exception:  # noqa: BLE001 - still starting
                pass
            if time.time() > deadline:
                raise RuntimeError(f"Ray cluster at {address} did not come up with 2 nodes")
            time.sleep(2)
        while True:  # and a job agent: until one registers, submissions get HTTP 500 "No available agent"
            try:
                warmup = client.submit_job(entrypoint="true", submission_id=f"tart-test-warmup-{uuid.uuid4().hex[:8]}")
                break
            except RuntimeError as e:
                if "No available agent" not in str(e) or time.time() > deadline + 120:
                    raise
                time.sleep(2)
        _wait_job(client, warmup, timeout=120)
        yield {"address": address, "gcs": f"127.0.0.1:{port}", "client": client, "temp_dir": temp_dir,
               "worker_cmd": worker, "env": env}  # worker_cmd: `victim_node` starts a worker node again
    finally:
        kill_processes_mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job_overrides(tmp: Path, name: str) -> list[str]:
    return [f"name={name}", *TINY, f"storage={tmp}/grids", f"cache_uri={tmp}/emb",
            f"mlflow_uri=sqlite:///{tmp}/mlflow.db", "cpus_per_cell=0.5"]


def _mlflow_cell_runs(uri: str, grid: str, experiment: str = "tart-grid"):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} missing at {uri}"
    return c.search_runs([exp.experiment_id],
                         filter_string=f"tags.`tart.kind` = 'cell' and tags.`tart.grid` = '{grid}'", max_results=100)


@pytest.fixture(scope="module")
def job_tmp(mlflow_sqlite):
    d = Path(tempfile.mkdtemp(prefix="tart-jobs-"))
    mlflow_sqlite(d / "mlflow.db")  # the jobs' store (_job_overrides), already migrated
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_ray_job_submit_cli_runs_grid_and_duplicate_id_is_refused(ray_cluster, job_tmp):
    name = "jobcli"
    sid = f"tart-test-cli-{uuid.uuid4().hex[:8]}"
    cmd = [RAY, "job", "submit", "--address", ray_cluster["address"], "--working-dir", str(REPO_ROOT),
           "--runtime-env-json", json.dumps({"excludes": EXCLUDES, "env_vars": RUNTIME_ENV_VARS}), "--submission-id", sid,
           "--", "python", "-m", "jobs.grid", "--no-compare", *_job_overrides(job_tmp, name)]
    r = _run(cmd, timeout=700)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert "[grid] done" in out, out[-5000:]
    spec = load_config(GridSpec, None, _job_overrides(job_tmp, name))
    df = read_results(spec)
    assert len(df) == 2 and set(df["method"]) == {"tart", "lr_full"}, df
    assert df["cell_id"].is_unique and all(len(p) == 20 for p in df["probs"])
    runs = _mlflow_cell_runs(spec.mlflow_uri, name)
    assert {cid for r in runs for cid in decode_cells(r.data.tags.get(TAG_CELLS))} == set(df["cell_id"])
    status = ray_cluster["client"].get_job_status(sid)
    assert str(status) in ("SUCCEEDED", "JobStatus.SUCCEEDED")

    # the same submission id again (a duplicate cron trigger) is refused and changes nothing
    again = _run(cmd, timeout=120)
    assert again.returncode != 0
    assert "already exists" in (again.stdout + again.stderr).lower() or sid in again.stdout + again.stderr
    assert len(read_results(spec)) == 2
    assert sum(len(decode_cells(r.data.tags.get(TAG_CELLS))) for r in _mlflow_cell_runs(spec.mlflow_uri, name)) == 2


def _wait_job(client, sid: str, timeout: float = 300):
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    while (status := client.get_job_status(sid)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, f"job {sid} still {status} after {timeout} s"
        time.sleep(1)
    return status, client.get_job_logs(sid)


def test_job_submitted_without_the_runtime_env_is_refused(ray_cluster):
    """jobs/_guard.py in a real submitted job: no TART_RUNTIME_ENV marker -> exit 2 naming the submit command.
    Submitted through the Python `JobSubmissionClient` (the CLI test above covers `ray job submit`): with
    the runtime env the job runs, its env_vars are recorded, and a duplicate submission id is refused."""
    from ray.job_submission import JobStatus

    client = ray_cluster["client"]
    bare = {"working_dir": str(REPO_ROOT), "excludes": EXCLUDES}
    sid = client.submit_job(entrypoint="python -m jobs.grid --help", runtime_env=bare,
                            submission_id=f"tart-test-noenv-{uuid.uuid4().hex[:8]}")
    status, logs = _wait_job(client, sid)
    assert status == JobStatus.FAILED, logs[-3000:]
    assert "without the project's runtime env" in logs and "--runtime-env cluster/runtime_env.yaml" in logs, logs
    assert "Traceback" not in logs, logs

    runtime_env = {**bare, "env_vars": {**RUNTIME_ENV_VARS, "HF_HUB_OFFLINE": "1"}}
    sid = f"tart-test-env-{uuid.uuid4().hex[:8]}"
    assert client.submit_job(entrypoint="python -m jobs.grid --help", runtime_env=runtime_env, submission_id=sid) == sid
    status, logs = _wait_job(client, sid)
    assert status == JobStatus.SUCCEEDED and "usage: tart grid" in logs, logs[-3000:]
    info = client.get_job_info(sid)
    assert info.runtime_env.get("env_vars", {}).get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(Exception, match="already exists|exists"):  # duplicate submission id
        client.submit_job(entrypoint="python -m jobs.grid --help", submission_id=sid, runtime_env=runtime_env)
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED


# ----------------------------------------------------------------------------- MLflow server


def test_grid_to_mlflow_server_then_compare(mlflow_server, sms_minilm_cache, tmp_path):
    from pipeline.compare import main as compare_main
    from pipeline.grid import run_grid

    name = "srv"
    # in this process, at the sizes of the session's sms_spam x minilm-l6 cache (tests/conftest.py)
    spec = load_config(GridSpec, None, [f"name={name}", *TINY, "test_size=30", "train_size=64", "executor=local",
                                        f"storage={tmp_path}/grids", f"cache_uri={sms_minilm_cache}",
                                        f"mlflow_uri={mlflow_server}"])
    summary = run_grid(spec)
    assert summary["cells_run"] == 2 and summary["cells_failed"] == 0
    assert summary["mlflow_uri"] == mlflow_server
    runs = _mlflow_cell_runs(mlflow_server, name)
    assert {cid for r in runs for cid in decode_cells(r.data.tags.get(TAG_CELLS))} == set(read_results(spec)["cell_id"])
    # predictions: one table on the launch's run, an artifact served through the tracking server
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    arts = [a.path for a in client.list_artifacts(summary["parent_run_id"])]
    assert "predictions.json" in arts
    table = client.load_table(client.get_run(summary["parent_run_id"]).info.experiment_id, "predictions.json",
                              run_ids=[summary["parent_run_id"]])
    assert set(table["cell_id"]) == set(read_results(spec)["cell_id"]) and all(len(p) == 30 for p in table["probs"])

    out = tmp_path / "cmp"
    assert compare_main([f"mlflow_uri={mlflow_server}", f"grids=[{name}]", f"out={out}"]) == 0
    md = (out / "summary.md").read_text()
    assert "tart" in md and "lr_full" in md and "sms_spam" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| sms_spam")]
    assert len(rows) == 2, md


# ----------------------------------------------------------------------------- node death
#
# A whole worker node lost in the middle of a job: its raylet, every process the raylet started (the
# job's task workers and actors, the node's agents) and its log monitor, SIGKILLed by pid. All nodes
# run on this machine, so a node's processes are found by its raylet's `--node_id`; the GCS notices
# the death through its health checks (it keeps listing the node ALIVE for a few seconds), Ray fails
# the node's tasks and actor calls and retries them on the head.

CELL_TASK = "run_embedding_cells"  # the grid's cell tasks (pipeline/grid/executor.py names a task after its unit)
EMBED_TASK = "MapWorker(MapBatches(BackboneEmbedder))"  # Ray Data's actor-pool calls (pipeline/embed/stream.py)


def _raylet_of(node_id: str):
    """The raylet process of Ray node `node_id` on this machine (None: not running)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].endswith("/raylet") and f"--node_id={node_id}" in cmd:
            return p
    return None


def _node_processes(node_id: str) -> list:
    """Every process of node `node_id`: its raylet, all the raylet started (workers, actors, agents) and the log
    monitor its `ray start` started (the one whose log file has the raylet's suffix: raylet.3.out, log_monitor.3.out)."""
    import psutil

    raylet = _raylet_of(node_id)
    assert raylet is not None, f"no raylet process for node {node_id}"
    procs = [raylet, *raylet.children(recursive=True)]
    out = next((a.split("=", 1)[1] for a in raylet.cmdline() if a.startswith("--stdout_filepath=")), None)
    if out:
        log_monitor = os.path.join(os.path.dirname(out), "log_monitor" + os.path.basename(out)[len("raylet"):])
        for p in psutil.process_iter(["cmdline"]):
            if f"--stdout-filepath={log_monitor}" in (p.info["cmdline"] or []) and p not in procs:
                procs.append(p)
    return procs


def _kill_node(node_id: str) -> list[str]:
    """SIGKILL every process of node `node_id` (raylet first); returns what was killed ("pid name")."""
    import psutil

    procs = _node_processes(node_id)
    killed = []
    for p in procs:
        try:
            killed.append(f"{p.pid} {p.name()}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    return killed


def _nodes(cluster: dict) -> list:
    from ray.util.state import list_nodes

    return list_nodes(address=cluster["address"], limit=100)


def _live_workers(cluster: dict) -> list[str]:
    """Worker (non-head) nodes that the GCS lists ALIVE and whose raylet runs."""
    return [n.node_id for n in _nodes(cluster) if not n.is_head_node and n.state == "ALIVE" and _raylet_of(n.node_id)]


def _a_worker_node(cluster: dict, timeout: float = 240) -> str:
    """The id of the cluster's live worker node; starts one (`ray start --address`, as the fixture did) if none."""
    live = _live_workers(cluster)
    if live:
        return live[0]
    for attempt in range(2):  # a loaded 2-core box can miss Ray's start-up deadlines
        r = _run(cluster["worker_cmd"], timeout=240, env=cluster["env"])
        if r.returncode == 0:
            break
        assert attempt == 0, f"{' '.join(cluster['worker_cmd'])} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    deadline = time.time() + timeout
    while not (live := _live_workers(cluster)):
        assert time.time() < deadline, f"no live worker node {timeout} s after `ray start --address`"
        time.sleep(1)
    return live[0]


@pytest.fixture
def victim_node(ray_cluster):
    """The id of the live worker node, for the test to kill; afterwards (killed or not) the cluster has a live
    worker node again, and the GCS has marked the killed one DEAD."""
    node = _a_worker_node(ray_cluster)
    yield node
    if _raylet_of(node) is None:
        deadline = time.time() + 120
        while any(n.node_id == node and n.state == "ALIVE" for n in _nodes(ray_cluster)):
            assert time.time() < deadline, f"the GCS still lists killed node {node} ALIVE after 120 s"
            time.sleep(1)
    _a_worker_node(ray_cluster)


def _submit_grid(cluster: dict, overrides: list[str], label: str) -> str:
    import shlex

    sid = f"tart-test-{label}-{uuid.uuid4().hex[:8]}"
    return cluster["client"].submit_job(
        entrypoint=shlex.join(["python", "-m", "jobs.grid", "--no-compare", *overrides]), submission_id=sid,
        runtime_env={"working_dir": str(REPO_ROOT), "excludes": EXCLUDES, "env_vars": RUNTIME_ENV_VARS})


def _job_tasks(cluster: dict, sid: str, **filters) -> list:
    """The job's task attempts (one entry per attempt) from Ray's state API, filtered by field=value."""
    from ray.util.state import list_tasks

    job_id = cluster["client"].get_job_info(sid).job_id
    if not job_id:  # the driver has not started yet
        return []
    return list_tasks(address=cluster["address"], filters=[("job_id", "=", job_id), *((k, "=", v) for k, v in filters.items())], limit=10000,
                      detail=True, raise_on_missing_output=False)


def _kill_node_when(cluster: dict, sid: str, node: str, ready, what: str, timeout: float = 400) -> list[str]:
    """Poll job `sid` until `ready(names of its tasks RUNNING on node)` is true, then kill the node."""
    from ray.job_submission import JobStatus

    client = cluster["client"]
    deadline = time.time() + timeout
    error = None
    while True:
        status = client.get_job_status(sid)
        assert status in (JobStatus.PENDING, JobStatus.RUNNING), \
            f"job {sid} ended ({status}) before {what} (state API: {error!r}):\n{client.get_job_logs(sid)[-4000:]}"
        assert time.time() < deadline, \
            f"no {what} after {timeout} s (state API: {error!r}):\n{client.get_job_logs(sid)[-4000:]}"
        try:
            running = [t.name for t in _job_tasks(cluster, sid, state="RUNNING") if t.node_id == node]
        except Exception as e:  # noqa: BLE001 - the state API can fail while the job starts; poll again
            running, error = [], e
        if ready(running):
            return _kill_node(node)
        time.sleep(0.3)


def _cell_files(spec: GridSpec) -> list[Path]:
    d = Path(spec.storage) / spec.name / "cells"
    return sorted(p for p in d.glob("*.parquet") if not p.name.startswith("_")) if d.is_dir() else []


def _assert_each_cell_once(spec: GridSpec) -> None:
    """One readable one-row file per cell, the table holds each cell once, each cell in exactly one FINISHED run."""
    import pyarrow.parquet as pq

    from pipeline.grid import expand

    expected = {c.cell_id for c in expand(spec)}
    files = _cell_files(spec)
    assert sorted(p.stem for p in files) == sorted(expected)
    for p in files:
        assert pq.read_table(p).num_rows == 1, p
    df = read_results(spec)
    assert len(df) == len(expected) and set(df["cell_id"]) == expected and df["cell_id"].is_unique
    runs = _mlflow_cell_runs(spec.mlflow_uri, spec.name)
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_id, r.info.status) for r in runs]
    ids = [cid for r in runs for cid in decode_cells(r.data.tags.get(TAG_CELLS))]
    assert sorted(ids) == sorted(expected), f"{len(ids)} cells in MLflow runs for {len(expected)} cells"


# 36 cells; 2 per Ray task (_cell_units: 4 tasks per slot, 6 slots of 0.5 CPU on 3 CPUs): 18 tasks, the head
# holds 4 at once and the worker node 2, so cell tasks run on the worker node while cell files land
NODE_CELLS_GRID = ["datasets=[sms_spam]", "backbones=[minilm-l6]", "methods=[tart,lr_probe,lr_full]", "ks=[18,32]",
                   "seeds=[0,1,2,3,4,5]", "test_size=30", "train_size=64", "embed_batch_size=32", "cpus_per_cell=0.5"]


@pytest.mark.timeout(480)
def test_worker_node_killed_mid_grid_job_completes_with_each_cell_once(ray_cluster, job_tmp, victim_node,
                                                                       sms_minilm_cache):
    from ray.job_submission import JobStatus

    over = ["name=nodecells", *NODE_CELLS_GRID, f"storage={job_tmp}/grids", f"cache_uri={sms_minilm_cache}",
            f"mlflow_uri=sqlite:///{job_tmp}/mlflow.db"]
    spec = load_config(GridSpec, None, over)
    sid = _submit_grid(ray_cluster, over, "nodecells")
    killed = _kill_node_when(ray_cluster, sid, victim_node, lambda running: CELL_TASK in running and _cell_files(spec),
                             what="a cell task running on the worker node after the first cell file")
    done_at_kill = len(_cell_files(spec))
    print(f"killed node {victim_node[:8]} with {done_at_kill} cell files written: {killed}")
    assert done_at_kill < 36 and any(CELL_TASK in k for k in killed), killed

    status, logs = _wait_job(ray_cluster["client"], sid, timeout=400)
    assert status == JobStatus.SUCCEEDED, logs[-5000:]
    assert '"cells_failed": 0' in logs and '"mlflow_unlogged": 0' in logs, logs[-3000:]
    # the kill hit cell tasks: their attempts on the dead node failed as NODE_DIED and Ray ran them again elsewhere
    tasks = _job_tasks(ray_cluster, sid, name=CELL_TASK)
    died = [t for t in tasks if t.node_id == victim_node and t.error_type == "NODE_DIED"]
    assert died, [(t.task_id[:8], t.attempt_number, t.state, t.node_id[:8], t.error_type) for t in tasks]
    retried = {t.task_id for t in tasks if t.attempt_number >= 1 and t.state == "FINISHED" and t.node_id != victim_node}
    assert {t.task_id for t in died} <= retried
    print(f"{len(died)} cell task(s) died with the node and finished on a retry")
    _assert_each_cell_once(spec)


def _assert_cache_entries_once(cache_uri: Path, spec: GridSpec) -> None:
    """The embedding cache holds one complete, verified entry per split, each example exactly once."""
    import hashlib

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.datasets import load_examples
    from pipeline.embed.cache import MANIFEST, EmbeddingCache, dataset_digest
    from pipeline.grid import expand

    cache = EmbeddingCache(str(cache_uri))
    options = expand(spec)[0].options
    entries = sorted(d for d in cache_uri.iterdir() if d.is_dir())
    splits = []
    for d in entries:
        man = json.loads((d / MANIFEST).read_text())
        assert cache.complete(d.name, man["key"]) == man, d  # complete, for its key, every part of its size
        # no partial or leftover part file of another attempt: exactly the manifest and the parts it names
        assert sorted(p.name for p in d.iterdir()) == sorted([MANIFEST, *(f["name"] for f in man["files"])]), d
        tables = []
        for f in man["files"]:
            data = (d / f["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sha256"], (d, f["name"])
            tables.append(pq.read_table(pa.BufferReader(data)))
        t = pa.concat_tables(tables)
        ex = load_examples(spec.datasets[0], man["split"], **options)
        assert man["key"]["dataset_digest"] == dataset_digest(ex)  # the entry is of exactly these examples
        assert t.num_rows == man["rows"] == len(ex.ids)
        assert t.column("id").to_pylist() == list(ex.ids)  # each example once, in the dataset's order
        assert t.column("position").to_pylist() == list(range(len(ex.ids)))
        assert t.column("label").to_pylist() == [int(y) for y in ex.labels]
        ids, _, X = cache.read(d.name, man)
        assert X.shape == (len(ex.ids), man["dim"]) and np.isfinite(X).all() and (np.abs(X).sum(axis=1) > 0).all()
        splits.append(man["split"])
    assert sorted(splits) == ["test", "train"], [d.name for d in entries]


@pytest.mark.timeout(480)
def test_worker_node_killed_mid_embedding_pass_job_completes_with_each_cache_row_once(ray_cluster, job_tmp,
                                                                                     victim_node):
    from ray.job_submission import JobStatus

    cache = job_tmp / "emb-node"  # empty: the job embeds 600 examples on a 2-actor pool (Ray Data spreads the
    # two actors, one per node), 16 per batch, in 4 blocks of up to 160 rows: seconds of work per actor call
    over = ["name=nodeembed", "datasets=[sms_spam]", "backbones=[minilm-l6]", "methods=[lr_probe]", "ks=[18]",
            "seeds=[0,1]", "test_size=200", "train_size=400", "embed_actors=2", "embed_batch_size=16",
            f"storage={job_tmp}/grids", f"cache_uri={cache}", f"mlflow_uri=sqlite:///{job_tmp}/mlflow.db"]
    spec = load_config(GridSpec, None, over)
    sid = _submit_grid(ray_cluster, over, "nodeembed")
    killed = _kill_node_when(ray_cluster, sid, victim_node,
                             lambda running: any(n.startswith(EMBED_TASK) for n in running),
                             what="an embedding batch running on the worker node")
    print(f"killed node {victim_node[:8]} mid-embedding: {killed}")
    assert any(EMBED_TASK in k for k in killed) and not _cell_files(spec), killed

    status, logs = _wait_job(ray_cluster["client"], sid, timeout=400)
    assert status == JobStatus.SUCCEEDED, logs[-5000:]
    assert "embed: 2 entr(ies), 2 computed" in logs and '"cells_failed": 0' in logs, logs[-3000:]
    # the kill hit an embedding call: its attempt on the dead node failed and Ray Data's pool ran it again
    tasks = [t for t in _job_tasks(ray_cluster, sid) if t.name.startswith(EMBED_TASK)]
    lost = [t for t in tasks if t.node_id == victim_node and t.state == "FAILED"]
    assert lost, [(t.name, t.attempt_number, t.state, (t.node_id or "")[:8], t.error_type) for t in tasks]
    print(f"{len(lost)} embedding call(s) lost with the node ({sorted({t.error_type for t in lost})}), "
          f"{len(tasks)} attempts in all")
    _assert_cache_entries_once(cache, spec)
    _assert_each_cell_once(spec)
