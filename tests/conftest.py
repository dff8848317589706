"""Shared pytest fixtures: one local Ray and one MLflow server for the whole session.

- `ray_local`: a real local Ray (2 logical CPUs, no dashboard, usage stats off), ONE for
  the session: started by the first test that asks for it, left running for the next
  ones (their Ray workers, with torch and `pipeline` already imported, are reused), shut
  down at the end of the session. A test that shut it down (`no_ray`, or test_jobs's own
  `ray start --head` cluster) does not break later ones: the next `ray_local` module
  starts it again. Give Ray tests a `@pytest.mark.timeout(...)`: on 2 cores a mis-sized
  actor/task request hangs forever. Tasks and actors should request fractional CPUs
  (e.g. 0.5) — see docs/environment.md.
- `no_ray`: the test needs Ray NOT initialised in this process (it asserts that nothing
  started it); such tests run first, before the shared Ray is up, and tests that start
  their own cluster (`ray_cluster`) run last, so the suite starts local Ray once.
- `mlflow_server`: the URI of one real `mlflow server` (tests/servers.py) shared by the
  tests that only log to it; each such test uses its own grid name / experiment. Tests
  that kill or restart a server start their own `MlflowServer`.
- `sms_minilm_cache`: one embedding cache for the grids that embed sms_spam (test_size=30,
  train_size=64) with minilm-l6 in the default dtype, locally or on Ray (the cache key is
  the same): the first computes the two entries, the others read them. Tests that prove
  an embedding path (on Ray, in bf16, racing writers, ...) keep their own cache.
- `mlflow_sqlite(path)`: a new, private sqlite MLflow store at `path` (a copy of one store
  migrated once per session: MLflow's schema migrations cost 3-7 s per fresh database
  on this box); returns its `sqlite:///` URI.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default) and a
# worker's ray.train.report waits for that poll: the tests' 4-9-step fits spent most of their time
# waiting (test_train.py 105 -> 63 s with 0.2 s). Set before the local Ray starts: its actors inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- test order


def pytest_collection_modifyitems(config, items):
    """Stable reorder: `no_ray` tests first (before the shared Ray starts), then everything
    else in its usual order, then the modules that start their own Ray cluster (whose
    fixture shuts the shared one down) — so the session starts local Ray once."""

    def module(item) -> str:
        return getattr(getattr(item, "module", None), "__name__", "")

    clusters = ("ray_cluster", "bare_cluster")
    own_cluster = {module(item) for item in items if set(clusters) & set(getattr(item, "fixturenames", ()))}

    def rank(item) -> int:
        if "no_ray" in getattr(item, "fixturenames", ()):
            return 0
        return 2 if module(item) in own_cluster else 1

    items.sort(key=rank)


# ----------------------------------------------------------------------------- Ray


def start_local_ray():
    """The session's local Ray: started if not running (again if a test shut it down)."""
    import ray

    if ray.is_initialized():
        return ray
    # Workers must import `pipeline` even when the package is not pip-installed.
    # (Local workers inherit the driver's environment at ray.init.)
    parts = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if REPO_ROOT not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [REPO_ROOT, *parts] if p)
    for attempt in range(3):  # a loaded 2-core box can miss Ray's fixed 30 s raylet start deadline
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
            break
        except Exception:  # noqa: BLE001 - "node timed out during startup"
            ray.shutdown()
            if attempt == 2:
                raise
    return ray


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts the shared local Ray down at the end of the session (if it is up)."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session):
    """The shared local Ray (module scope, so module-scoped fixtures can depend on it)."""
    return start_local_ray()


@pytest.fixture
def no_ray():
    """This test needs Ray not initialised in this process: shut the shared one down if it is up."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


# ----------------------------------------------------------------------------- shared artefacts


@pytest.fixture(scope="session")
def sms_minilm_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("sms-minilm-emb"))


@pytest.fixture(scope="session")
def tart_cache():
    """The backbone cache root: TART_CACHE if set, else a per-machine temp cache, so the GGUF
    conversions (20 s - 4 min) are paid by the first run only. Entries are keyed by package
    version and written atomically. Modules that build backbones use it autouse."""
    import tempfile

    from pipeline.backbones import cache_root

    if os.environ.get("TART_CACHE"):
        yield cache_root()
        return
    os.environ["TART_CACHE"] = os.path.join(tempfile.gettempdir(), "tart-test-cache")
    try:
        yield cache_root()
    finally:
        os.environ.pop("TART_CACHE", None)


@pytest.fixture(scope="module")
def sms():
    """sms_spam for the ICL tests: the train pool, a 20-message test set, nested context sets k=4, 18."""
    from pipeline.datasets import context_sets, load_examples

    pool = load_examples("sms_spam", split="train")
    test = load_examples("sms_spam", split="test", test_size=20)
    return pool, test, context_sets(pool.labels, [4, 18], seed=0)


# ----------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty sqlite MLflow store, migrated once for the session (MLflow creates it)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # runs MLflow's schema migrations
    return db


@pytest.fixture(scope="session")
def mlflow_sqlite(mlflow_template):
    """`mlflow_sqlite(path)` -> the sqlite:/// URI of a new, private MLflow store at `path`."""

    def make(path) -> str:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            raise FileExistsError(f"{path}: an MLflow store is already there")
        shutil.copyfile(mlflow_template, path)
        return f"sqlite:///{path}"

    return make


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, mlflow_template):
    """The URI of one real `mlflow server` for the session (sqlite backend, artifacts dir)."""
    from servers import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), db_template=mlflow_template).start()
    try:
        yield server.uri
    finally:
        server.stop()


# ----------------------------------------------------------------------------- logs


@pytest.fixture
def pipeline_log(caplog):
    """The `pipeline` loggers' records (INFO and up), whether or not a CLI set up the console."""
    lg = logging.getLogger("pipeline")
    level = lg.level
    lg.addHandler(caplog.handler)
    lg.setLevel(logging.INFO)
    try:
        yield caplog
    finally:
        lg.removeHandler(caplog.handler)
        lg.setLevel(level)
