"""The documented submit path on a bare Ray cluster: a head and a worker node started from a venv
that holds ONLY `ray[default]` (what the stock `rayproject/ray` images hold: no torch, no project
packages), then the README's `ray job submit --working-dir . --runtime-env cluster/runtime_env.cpu.yaml
-- python -m jobs.grid ...` from that venv's own `ray` CLI, logging to a real `mlflow server`.

What it proves: the generated CPU runtime env is complete (every import the grid, its Ray workers and
`tart compare` need, the offline model/data packages included) and resolves torch to its CPU build
(never the multi-GB CUDA one); the job SUCCEEDS with its cells in the results table and in MLflow
(child runs tagged `tart.kind=cell`, their cells in `tart.cells`); a second submission reuses Ray's
cached env (one install per node) and computes nothing again (each cell once in the table and in
MLflow); the job's Python is the env's virtualenv with torch `+cpu` and no nvidia/triton wheel; the
upload is the project without .git, venvs, caches or run outputs. It measures how long the runtime
env takes to set up, cold (first job on the node) and warm (Ray's cached env), and how long each node's
install took (its runtime env agent's log): the figures quoted in README.md ("Submitting to a Ray
cluster"). The submissions name a byte copy of cluster/runtime_env.cpu.yaml taken at the start, so a
concurrent edit of the repo's file cannot turn the warm submission into a second install.

Nothing here uses the project's .venv on the cluster side: the nodes run with the bare venv first on
PATH, no PYTHONPATH, and their cwd outside the repo, so the job can only import what the runtime env
installs and the working dir uploads. Each node has its own temp dir (own runtime-env virtualenvs, as
on separate machines: two nodes sharing one temp dir would share, and race on, one virtualenv path).
Teardown ends only this cluster's processes (every process naming its temp root), never `ray stop`.

Skipped (not failed) only when the pip registry cannot be reached: the runtime env installs from it.
The bare venv (20-80 s to build here) is cached under $TART_CACHE/bare-ray-venv/ray-<version>-py<XY>.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.grid import GridSpec, read_results
from pipeline.tracking import TAG_CELLS, decode_cells

from servers import MlflowServer, free_port, kill_processes_mentioning

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import gen_runtime_env as gen  # noqa: E402

RAY_VERSION = gen.ray_version()  # cluster/Dockerfile's ARG RAY_VERSION: the Ray every cluster runs
RUNTIME_ENV = "cluster/runtime_env.cpu.yaml"
PROJECT_BIN = Path(sys.executable).parent  # the project's venv: never on the cluster's PATH
GRID = ["datasets=[sms_spam]", "backbones=[minilm-l6]", "methods=[tart,lr_probe]", "ks=[18]", "seeds=[0]",
        "test_size=20", "train_size=40"]


# ----------------------------------------------------------------------------- helpers
def _pip_index() -> str:
    """The index pip installs from here (PIP_INDEX_URL, pip's config, or PyPI)."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        r = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=30)
        m = re.search(r"^(?:global|install)\.index-url='([^']+)'", r.stdout, re.MULTILINE)
        url = m.group(1) if m else "https://pypi.org/simple"
    return url.rstrip("/")


def _require_registry() -> None:
    url = f"{_pip_index()}/ray/"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            if r.status == 200:
                return
            why = f"HTTP {r.status}"
    except (urllib.error.URLError, OSError) as e:
        why = str(e)
    pytest.skip(f"the pip registry is unreachable ({url}: {why}): the runtime env installs its packages from it")


def _bare_venv() -> Path:
    """A venv with ray[default]==RAY_VERSION and nothing else; built once, reused by later runs."""
    cache = Path(os.environ.get("TART_CACHE") or Path.home() / ".cache" / "tart")
    base = getattr(sys, "_base_executable", None) or shutil.which("python3")
    venv = cache / "bare-ray-venv" / f"ray-{RAY_VERSION}-py{sys.version_info.major}{sys.version_info.minor}"
    done = venv / ".complete"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:  # two runs at once: one builds, the other waits
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists() and (venv / "bin" / "ray").exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)  # a half-built one (venvs are not relocatable: build in place)
        env = _clean_env()
        for cmd in ([base, "-m", "venv", str(venv)],
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"ray[default]=={RAY_VERSION}"]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
            assert r.returncode == 0, f"{' '.join(cmd)}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        r = subprocess.run([str(venv / "bin" / "python"), "-c", "import ray; print(ray.__version__)"],
                           capture_output=True, text=True, timeout=120, env=env)
        assert r.stdout.strip() == RAY_VERSION, r.stdout + r.stderr
        done.write_text(RAY_VERSION + "\n")
    return venv


def _clean_env(bare_bin: Path | None = None, **extra) -> dict:
    """This process's environment without the project's venv: what a node of a bare cluster sees."""
    # PYTHONDONTWRITEBYTECODE too: some sandboxes set it globally, a cluster node does not, and the runtime env
    # installs with --no-compile on the promise that a job's first imports cache their bytecode in the env
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "RAY_ADDRESS", "MLFLOW_TRACKING_URI", "CONDA_PREFIX",
                        "PYTHONDONTWRITEBYTECODE")
           and not k.startswith("PYTEST_")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and os.path.realpath(p) != os.path.realpath(PROJECT_BIN)]
    env["PATH"] = os.pathsep.join(([str(bare_bin)] if bare_bin else []) + path)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def _wait_job(client, sid: str, timeout: float):
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    while (status := client.get_job_status(sid)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, f"job {sid} still {status} after {timeout} s"
        time.sleep(1)
    return status, client.get_job_logs(sid)


@pytest.fixture(scope="module")
def bare_cluster():
    """A bare 2-node Ray cluster from the Ray-only venv: head (2 CPUs, dashboard/Jobs API), worker (1 CPU)."""
    import ray

    ray.shutdown()  # the session's local Ray (tests/conftest.py) would only hold memory and CPUs meanwhile
    _require_registry()
    t0 = time.time()
    venv = _bare_venv()
    venv_s = time.time() - t0
    ray_bin = str(venv / "bin" / "ray")
    root = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: Ray's socket paths have a length limit
    node_cwd = Path(root) / "cwd"
    node_cwd.mkdir()
    ports = set()
    while len(ports) < 12:
        ports.add(free_port())
    port, dash, client_port, *agent_ports = sorted(ports)

    def agents(i: int) -> list[str]:
        """Every listening port Ray would otherwise take at its fixed default (52365 for the dashboard agent,
        10001 for Ray Client...), each free: another Ray cluster may be running on this machine."""
        p = agent_ports[4 * i: 4 * i + 4]
        return ["--dashboard-agent-listen-port", str(p[0]), "--dashboard-agent-grpc-port", str(p[1]),
                "--runtime-env-agent-port", str(p[2]), "--metrics-export-port", str(p[3])]

    # hub ids cannot be reached from this box (a real cluster's nodes may reach the hub)
    env = _clean_env(venv / "bin", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TART_CACHE=f"{root}/tart-cache")
    head = [ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
            "--include-dashboard", "true", "--ray-client-server-port", str(client_port), *agents(0),
            "--temp-dir", f"{root}/h", "--disable-usage-stats"]
    worker = [ray_bin, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
              *agents(1), "--temp-dir", f"{root}/w", "--disable-usage-stats"]
    try:
        for cmd in (head, worker):
            for attempt in range(2):  # a loaded 2-core box can miss Ray's start-up deadlines
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=node_cwd)
                if r.returncode == 0:
                    break
                if attempt == 1 or cmd is worker:
                    raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
                kill_processes_mentioning(root)
        address = f"http://127.0.0.1:{dash}"
        from ray.job_submission import JobSubmissionClient
        from ray.util.state import list_nodes

        deadline = time.time() + 180
        while True:  # the Jobs API and both nodes must be up
            try:
                client = JobSubmissionClient(address)
                client.list_jobs()
                if len([n for n in list_nodes(address=address) if n.state == "ALIVE"]) >= 2:
                    break
            except Exception:  # noqa: BLE001 - still starting
                pass
            if time.time() > deadline:
                raise RuntimeError(f"the bare Ray cluster at {address} did not come up with 2 nodes")
            time.sleep(2)
        while True:  # and a job agent: until one registers, submissions get HTTP 500 "No available agent"
            try:
                warmup = client.submit_job(entrypoint="true", submission_id=f"tart-bare-warmup-{uuid.uuid4().hex[:8]}")
                break
            except RuntimeError as e:
                if "No available agent" not in str(e) or time.time() > deadline + 120:
                    raise
                time.sleep(2)
        _wait_job(client, warmup, timeout=180)
        # cluster/runtime_env.cpu.yaml as it is now, byte for byte: every submission below names the same pip list
        # (a concurrent edit of the repo's copy would make the "warm" submission install a new env)
        runtime_env = Path(root) / "runtime_env.cpu.yaml"
        shutil.copyfile(REPO_ROOT / RUNTIME_ENV, runtime_env)
        yield {"address": address, "client": client, "env": env, "ray": ray_bin, "root": Path(root), "venv": venv,
               "venv_s": venv_s, "runtime_env": runtime_env}
    finally:
        for _ in range(3):  # the runtime env virtualenvs are GBs: a process still dying can write into a removed dir
            kill_processes_mentioning(root)
            shutil.rmtree(root, ignore_errors=True)
            if not os.path.exists(root):
                break
            time.sleep(2)


def _submit(cluster, sid: str, entrypoint: list[str], timeout: float) -> dict:
    """The documented command, from the bare venv's `ray` CLI in the repo root; returns its output, the
    job's final status and how long the job waited for its runtime env (submitted -> RUNNING)."""
    from ray.job_submission import JobStatus

    cmd = [cluster["ray"], "job", "submit", "--address", cluster["address"], "--working-dir", ".",
           "--runtime-env", str(cluster["runtime_env"]), "--submission-id", sid, "--", *entrypoint]
    out = Path(tempfile.mkstemp(prefix=f"{sid}-", suffix=".log", dir=cluster["root"])[1])
    client = cluster["client"]
    t0 = time.time()
    with open(out, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, env=cluster["env"], cwd=REPO_ROOT)
    running_at = None
    try:
        while proc.poll() is None:
            assert time.time() - t0 < timeout, f"`ray job submit` still running after {timeout} s:\n{out.read_text()[-5000:]}"
            if running_at is None:
                try:
                    if client.get_job_status(sid) in (JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED):
                        running_at = time.time()
                except Exception:  # noqa: BLE001 - not submitted yet (the CLI is still uploading)
                    pass
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    wall = time.time() - t0
    info = client.get_job_info(sid)
    submitted = info.start_time / 1000 if info.start_time else t0
    return {"rc": proc.returncode, "out": out.read_text(), "status": info.status, "wall_s": wall,
            "setup_s": (running_at - submitted) if running_at else None, "info": info}


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\s+INFO runtime_env_agent\.py:\d+ -- "
                       r"(Creating|Successfully created) runtime env: (.*)$")


def _pip_env_setups(node_dir: Path) -> list[float]:
    """Seconds each runtime env with a pip list took to create on one node (its runtime env agent's log)."""
    from datetime import datetime

    started, took = {}, []
    for log in node_dir.glob("session_2*/logs/runtime_env_agent.log"):
        for line in log.read_text(errors="replace").splitlines():
            m = _LOG_TIME.match(line)
            if not m or '"pip"' not in m.group(3):
                continue
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            # "Creating runtime env: ENV with timeout N seconds." / "Successfully created runtime env: ENV, context: CTX"
            env = re.sub(r" with timeout \S+ seconds\.$", "", m.group(3).split(", context: ", 1)[0])
            if m.group(2) == "Creating":
                started.setdefault(env, t)
            elif env in started:
                took.append(t - started.pop(env))
    return took


def _uploaded_working_dir(node_dir: Path) -> tuple[Path, int, int]:
    """The newest working dir Ray unpacked on a node: (its folder, files, bytes)."""
    pkgs = sorted(node_dir.glob("session_2*/runtime_resources/working_dir_files/_ray_pkg_*"), key=os.path.getmtime)
    assert pkgs, f"no unpacked working dir under {node_dir}"
    files = [f for f in pkgs[-1].rglob("*") if f.is_file()]
    return pkgs[-1], len(files), sum(f.stat().st_size for f in files)


def _cell_runs(uri: str, grid: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("tart-grid")
    assert exp is not None, f"experiment tart-grid missing at {uri}"
    return c.search_runs([exp.experiment_id],
                         filter_string=f"tags.`tart.kind` = 'cell' and tags.`tart.grid` = '{grid}'", max_results=100)


# ----------------------------------------------------------------------------- the test
def test_documented_submit_on_a_bare_ray_cluster_runs_a_grid_into_mlflow(bare_cluster, mlflow_template, tmp_path):
    from ray.job_submission import JobStatus

    assert "torch" not in subprocess.run([str(bare_cluster["venv"] / "bin" / "python"), "-m", "pip", "list"],
                                         capture_output=True, text=True, timeout=120).stdout.lower()
    server = MlflowServer(tmp_path / "mlflow", db_template=mlflow_template).start()
    try:
        name = "bare"
        overrides = [f"name={name}", *GRID, f"storage={tmp_path}/grids", f"cache_uri={tmp_path}/emb",
                     f"mlflow_uri={server.uri}"]
        spec = load_config(GridSpec, None, overrides)

        # 1. cold: the first job installs the runtime env on the head node (and the worker node, when a task lands there)
        cold = _submit(bare_cluster, f"tart-bare-grid-{uuid.uuid4().hex[:8]}", ["python", "-m", "jobs.grid", *overrides],
                       timeout=1100)
        assert cold["rc"] == 0 and cold["status"] == JobStatus.SUCCEEDED, cold["out"][-6000:]
        assert "[grid] done" in cold["out"], cold["out"][-6000:]
        df = read_results(spec)
        assert len(df) == 2 and set(df["method"]) == {"tart", "lr_probe"}, df
        assert df["cell_id"].is_unique and all(len(p) == 20 for p in df["probs"])
        runs = _cell_runs(server.uri, name)
        logged = [cid for r in runs for cid in decode_cells(r.data.tags.get(TAG_CELLS))]
        assert sorted(logged) == sorted(df["cell_id"]), (logged, list(df["cell_id"]))

        # 2. warm: the same submission again reuses Ray's cached env and computes nothing
        warm = _submit(bare_cluster, f"tart-bare-grid-{uuid.uuid4().hex[:8]}", ["python", "-m", "jobs.grid", *overrides],
                       timeout=600)
        assert warm["rc"] == 0 and warm["status"] == JobStatus.SUCCEEDED, warm["out"][-6000:]
        assert len(read_results(spec)) == 2
        assert sorted(cid for r in _cell_runs(server.uri, name) for cid in decode_cells(r.data.tags.get(TAG_CELLS))) \
            == sorted(df["cell_id"])

        # 3. what the job's Python is: the runtime env's virtualenv, torch's CPU build, no CUDA wheels
        probe = ("import sys, torch, importlib.metadata as md; "
                 "print('PROBE', json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'prefix': sys.prefix, "
                 "'gpu_wheels': sorted(d.metadata['Name'] for d in md.distributions() "
                 "if d.metadata['Name'].lower().startswith(('nvidia-', 'triton')))}))")
        env_probe = _submit(bare_cluster, f"tart-bare-probe-{uuid.uuid4().hex[:8]}",
                            ["python", "-c", f"import json; {probe}"], timeout=300)
        assert env_probe["rc"] == 0, env_probe["out"][-4000:]
        found = json.loads(re.search(r"^PROBE (\{.*\})$", env_probe["out"], re.MULTILINE).group(1))
        torch_pin = next(p for p in yaml.safe_load(bare_cluster["runtime_env"].read_text())["pip"]["packages"]
                         if gen.req_name(p) == "torch")
        assert found["torch"] == torch_pin.split("==", 1)[1] and found["torch"].endswith("+cpu"), found
        assert found["cuda"] is None and not found["gpu_wheels"], found
        assert found["prefix"].startswith(str(bare_cluster["root"])) and "runtime_resources" in found["prefix"], found
    finally:
        server.stop()

    # 4. the upload is the project without VCS, venvs, caches, run outputs (.gitignore and Ray's default excludes)
    root = bare_cluster["root"]
    wd, n_files, n_bytes = _uploaded_working_dir(root / "h")
    for kept in ("pipeline", "jobs", "configs", "cluster", "pyproject.toml"):
        assert (wd / kept).exists(), f"{kept} missing from the uploaded working dir {wd}"
    for left_out in (".git", ".venv", ".tart_cache", "tart_runs", "mlruns", "mlartifacts", "mlflow.db", ".pytest_cache"):
        assert not (wd / left_out).exists(), f"{left_out} was uploaded with the working dir ({wd})"
    assert n_bytes < 100e6, f"the working dir upload is {n_bytes / 1e6:.0f} MB"

    # 5. Ray installed the env once per node: later jobs (and the head's later tasks) reuse its virtualenv
    setups = {node: _pip_env_setups(root / node) for node in ("h", "w")}

    def s(x):
        return "?" if x is None else f"{x:.1f} s"

    print(f"\n[bare-cluster] venv ray[default]=={RAY_VERSION}: {bare_cluster['venv_s']:.1f} s (cached: <1 s); "
          f"runtime env set-up (submitted -> RUNNING): cold {s(cold['setup_s'])}, warm {s(warm['setup_s'])}, "
          f"probe {s(env_probe['setup_s'])}; `ray job submit` wall: cold {s(cold['wall_s'])}, "
          f"warm {s(warm['wall_s'])}; pip env created per node (agent logs): "
          f"{ {n: [round(x, 1) for x in t] for n, t in setups.items()} } s; "
          f"working dir upload {n_files} files, {n_bytes / 1e6:.1f} MB; job torch {found['torch']}")
    assert warm["setup_s"] is not None and warm["setup_s"] < 60, warm["setup_s"]
    assert len([t for t in setups["h"] if t > 5]) == 1, setups
