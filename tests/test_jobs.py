"""Jobs on a real multi-node Ray cluster and a real MLflow tracking server.

- `ray_cluster`: a local two-node Ray cluster started with the `ray` CLI (head with the
  dashboard / Jobs API, plus a worker node joined to it), in its own temp dir. Teardown
  ends only the processes of THIS cluster (every process whose command line names its
  temp dir), never `ray stop` (which would kill every Ray on the machine).
- Jobs are submitted the way operators do: `ray job submit --working-dir <repo>` and the
  Python `JobSubmissionClient`; the job runs from an uploaded copy of the repo.
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

from servers import free_port

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


def _kill_processes_mentioning(marker: str) -> None:
    """SIGTERM then SIGKILL every process (of this user) whose command line, working directory or open
    files name `marker`: Ray's agents rename themselves (`ray::DashboardAgent`), ignore SIGTERM and
    outlive their raylet; left running they keep the next cluster's job agent from registering."""
    import psutil

    def mentions(p) -> bool:
        if marker in " ".join(p.info["cmdline"] or []) or marker in (p.info["cwd"] or ""):
            return True
        return any(marker in f.path for f in p.open_files())

    me = os.getpid()
    procs = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd", "username"]):
        try:
            if p.pid != me and mentions(p):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


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
                _kill_processes_mentioning(temp_dir)
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
        yield {"address": address, "gcs": f"127.0.0.1:{port}", "client": client, "temp_dir": temp_dir}
    finally:
        _kill_processes_mentioning(temp_dir)
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
