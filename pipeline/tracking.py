"""MLflow helpers shared by the stages (train, eval, ...).

- `resolve_tracking_uri(uri)`: explicit value > $MLFLOW_TRACKING_URI > a local sqlite
  store `sqlite:///<abs cwd>/mlflow.db` (MLflow 3's plain file store is in maintenance
  mode and raises). New experiments on a local store put artifacts under
  `<abs cwd>/mlartifacts` (or $TART_MLFLOW_ARTIFACTS).
- `connect(uri)`: checks the store is usable BEFORE any work starts: an http(s)
  server is probed on /health with retries and exponential backoff, then a clear
  `TrackingError`; a sqlite file's directory must exist or be creatable.
- `flatten_params(cfg)`: a dataclass/dict config -> {"a.b": "value"} for
  `log_params`; keys that look like secrets (password, token, api_key, secret,
  credentials, ...) are dropped and credentials inside URIs are masked, so nothing
  secret reaches the tracking store.
- `start_or_resume_run(...)`: one MLflow run per (run name, storage) pair, found
  again by a tag on re-runs, so a resumed training continues the same MLflow run.
- `log_history(...)`: metric records (dicts with a `step`) in batches, skipping steps
  already logged by an earlier attempt (tag `tart.logged_through_step`).
- `register_version(...)`: register a logged model (or any artifact URI) as a new version of a
  registered model and point an alias at it (aliases, not the deprecated stages);
  `pipeline.registry` registers reasoners through it.
- The grid's MLflow layout (`TAG_*`, `KIND_*`, `CELL_PARAMS`, `CELL_METRICS`): the tag,
  param and metric names `pipeline.grid` writes and `pipeline.compare` reads, in one place.

Log from ONE process (the driver): many concurrent writers lock a sqlite store.
mlflow is imported inside the functions that use it: the import takes ~4 s, and `connect`
reports a dead server before paying for it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from . import console

logger = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
RUN_KEY_TAG = "tart.run_key"
LOGGED_THROUGH_TAG = "tart.logged_through_step"
MAX_PARAM_LEN = 6000  # MLflow's limit on one param value

# a key whose last component matches this is never logged
_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential|auth|session)",
    re.IGNORECASE,
)
_URI_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]+):(?P<pw>[^/@\s]+)@")

# ---------------------------------------------------------------- the grid's MLflow layout
# One parent run per grid launch (tart.kind=grid-launch) and one child run per *series*
# (tart.kind=cell): the cells that differ only in k (params SERIES_PARAMS + "ks"), each cell a step
# k of CELL_METRICS and, flat, `<metric>_k<k>` (what search_runs returns and the run table shows).
# TAG_CELLS lists the run's cells; a cell is in MLflow when a FINISHED run lists it. A resumed
# launch logs the rest of a series as another run (a segment). Predictions: a table on the launch.
TAG_GRID = "tart.grid"  # the grid's name, on launches and cells
TAG_KIND = "tart.kind"  # KIND_LAUNCH | KIND_CELL | KIND_COMPARE
TAG_LAUNCH_ID = "tart.launch_id"
TAG_HOST = "tart.host"  # the driver's host and pid: a launch whose driver died is closed as KILLED
TAG_PID = "tart.pid"
TAG_DATASET = "tart.dataset"
TAG_CELL_ID = "cell_id"
TAG_GIT_SHA = "git_sha"
TAG_CODE_VERSION = "code_version"
KIND_LAUNCH = "grid-launch"
KIND_CELL = "cell"
KIND_COMPARE = "compare"
CELL_PARAMS = ("dataset", "dataset_options", "backbone", "protocol", "method", "reasoner", "reasoner_digest", "k",
               "seed")
QUALITY_METRICS = ("accuracy", "auc", "brier", "ece", "macro_f1", "nll")  # what `compare` reads back
CELL_METRICS = (*QUALITY_METRICS, "runtime_s")
PREDICTIONS_ARTIFACT = "predictions.json"
SERIES_PARAMS = tuple(c for c in CELL_PARAMS if c != "k")
TAG_SERIES = "tart.series"  # the series' id (a hash of its SERIES_PARAMS values)
TAG_CELLS = "tart.cells"  # "k:cell_id,k:cell_id,..." in k order


def encode_cells(cells: Iterable[tuple[int, str]]) -> str:
    """TAG_CELLS' value for (k, cell_id) pairs."""
    return ",".join(f"{int(k)}:{cid}" for k, cid in sorted(cells))


def decode_cells(value: Optional[str]) -> dict[str, int]:
    """cell_id -> k from TAG_CELLS' value (empty for a run without it)."""
    out = {}
    for item in (value or "").split(","):
        k, sep, cid = item.partition(":")
        if sep and k.isdigit() and cid:
            out[cid] = int(k)
    return out


def flat_metric(metric: str, k: int) -> str:
    """The flat key of a series run's metric at k (`accuracy_k18`)."""
    return f"{metric}_k{int(k)}"


def tag_filter(key: str, value: str) -> str:
    """An MLflow search clause `tags.<key> = '<value>'` (the key quoted: ours contain dots)."""
    return f"tags.`{key}` = '{value}'"


class TrackingError(RuntimeError):
    """The tracking store is unreachable or unusable; the message says which and why."""


# ---------------------------------------------------------------- URIs


def default_tracking_uri(cwd: Optional[str] = None) -> str:
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / DEFAULT_DB}"


def default_artifact_location(cwd: Optional[str] = None) -> str:
    env = os.environ.get("TART_MLFLOW_ARTIFACTS")
    if env:
        return env if "://" in env else Path(env).resolve().as_uri()
    return (Path(cwd or os.getcwd()).resolve() / DEFAULT_ARTIFACTS).as_uri()


def resolve_tracking_uri(uri: Optional[str] = None) -> str:
    """Explicit uri > $MLFLOW_TRACKING_URI > sqlite:///<abs cwd>/mlflow.db; relative sqlite paths made absolute."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///"):]
        if rel and not rel.startswith(":memory:"):
            uri = f"sqlite:///{Path(rel).resolve()}"
    elif "://" not in uri:  # a bare path: treat it as a sqlite file
        uri = f"sqlite:///{Path(uri).resolve()}"
    return uri


def redact(text: str) -> str:
    """Mask the password part of any `scheme://user:password@host` inside `text`."""
    return _URI_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


# ---------------------------------------------------------------- connection


def _probe_http(uri: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/health"
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the user's tracking server
        if resp.status != 200:
            raise OSError(f"GET {redact(url)} -> HTTP {resp.status}")


def connect(uri: Optional[str] = None, retries: int = 4, backoff_s: float = 1.0, timeout_s: float = 5.0,
            log: Optional[Callable[[str], None]] = None) -> str:
    """Resolve the tracking URI, check that it is usable, set it on mlflow; returns it.

    http(s): GET /health up to `retries` + 1 times with exponential backoff
    (backoff_s, 2*backoff_s, ...), then TrackingError. sqlite: the database's
    directory must exist or be creatable. Retries are reported to `log` (default: this
    module's logger, as warnings).
    """
    log = log or logger.warning
    uri = resolve_tracking_uri(uri)
    shown = redact(uri)
    if uri.startswith(("http://", "https://")):
        last: Exception | None = None
        for attempt in range(retries + 1):
            try:
                _probe_http(uri, timeout_s)
                last = None
                break
            except (urllib.error.URLError, OSError, ValueError) as e:
                last = e
                if attempt < retries:
                    wait = backoff_s * 2**attempt
                    log(f"[mlflow] tracking server {shown} unreachable ({e}); retry {attempt + 1}/{retries} in {wait:.1f}s")
                    time.sleep(wait)
        if last is not None:
            raise TrackingError(
                f"MLflow tracking server {shown} is unreachable after {retries + 1} attempts "
                f"(last error: {redact(str(last))}); start it (mlflow server ...) or set mlflow_uri / "
                "$MLFLOW_TRACKING_URI to a reachable server or a sqlite:/// path"
            )
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"MLflow sqlite store {shown}: cannot create its directory ({e})") from None
        if not os.access(db.parent, os.W_OK):
            raise TrackingError(f"MLflow sqlite store {shown}: directory {db.parent} is not writable")
    import mlflow  # after the probe: a dead server is reported without paying for the import (~4 s)

    console.route_third_party()  # MLflow installs its log handlers on import
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


# MLflow 3's UI opens an experiment on its GenAI overview ("No data available" for runs like ours)
# unless the experiment says it is for model development
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
VERSIONED_PACKAGES = ("torch", "transformers", "ray", "mlflow", "numpy", "scikit-learn", "pyarrow")


def experiment_url(server: str, experiment_id: str) -> str:
    """The UI page of an experiment's runs. MLflow 3.17's UI opens on its GenAI overview unless
    the URL says `workflowType=machine_learning` (its GenAI / Model training switch is a setting of
    the browser, not of the experiment; checked in headless Chromium), so every link carries it."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on (read from metadata: nothing imported)."""
    import importlib.metadata

    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def ensure_experiment(name: str, uri: str) -> str:
    """Experiment id for `name`, creating it (with a local artifact location on local stores)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = default_artifact_location() if is_local_store(uri) else None
        try:
            exp = client.get_experiment(client.create_experiment(name, artifact_location=location,
                                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))
        except Exception:  # noqa: BLE001 - created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # experiments made before the tag was set
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


# ---------------------------------------------------------------- params


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1]))


def flatten_params(cfg: Any, prefix: str = "") -> dict[str, str]:
    """Dataclass / nested dict -> {"dotted.key": "value"}; secret-looking keys dropped, URIs masked."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    out: dict[str, str] = {}
    for key, value in (cfg or {}).items():
        name = f"{prefix}{key}"
        if is_secret_key(str(key)):
            continue
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[name] = redact(text)[:MAX_PARAM_LEN]
    return out


# ---------------------------------------------------------------- runs


def find_run(experiment_id: str, run_key: str) -> Optional[str]:
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
        order_by=["attributes.start_time DESC"], max_results=1, output_format="list",
    )
    return runs[0].info.run_id if runs else None


def start_or_resume_run(experiment_id: str, run_key: str, run_name: str, tags: dict | None = None,
                        system_metrics: bool = False):
    """Start the MLflow run of `run_key` (or re-open the one an earlier attempt started)."""
    import mlflow

    run_id = find_run(experiment_id, run_key)
    kwargs = {}
    if system_metrics:
        kwargs["log_system_metrics"] = True
    if run_id:
        run = mlflow.start_run(run_id=run_id, **kwargs)
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags={RUN_KEY_TAG: run_key}, **kwargs)
    if tags:
        mlflow.set_tags({k: redact(str(v)) for k, v in tags.items()})
    return run


def system_metrics_available() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def log_params_once(run_id: str, params: dict[str, str]) -> dict[str, str]:
    """Log params not yet on the run; a changed value (a resumed run with new overrides) becomes a
    tag `override.<key>` because MLflow params are immutable. Returns the changed ones."""
    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    existing = client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in params.items() if k not in existing]
    changed = {k: v for k, v in params.items() if k in existing and existing[k] != v}
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i : i + 100])
    if changed:
        client.log_batch(run_id, tags=[RunTag(f"override.{k}", v[:5000]) for k, v in changed.items()])
    return changed


def log_history(run_id: str, records: Iterable[dict], skip: Iterable[str] = ("step",)) -> int:
    """Log numeric fields of `records` (each with an int `step`) as metric points.

    Steps at or below the run's `tart.logged_through_step` tag were logged by an earlier
    attempt and are skipped; the tag is advanced. Returns the number of points logged.
    """
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    tags = client.get_run(run_id).data.tags
    through = int(tags.get(LOGGED_THROUGH_TAG, -1))
    skip = set(skip)
    points: list[Metric] = []
    last = through
    now = int(time.time() * 1000)
    for rec in records:
        step = int(rec.get("step", -1))
        if step <= through:
            continue
        ts = int(rec.get("time", now / 1000) * 1000)
        for k, v in rec.items():
            if k in skip or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            points.append(Metric(k, float(v), ts, step))
        last = max(last, step)
    for i in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[i : i + 1000])
    if last > through:
        client.set_tag(run_id, LOGGED_THROUGH_TAG, str(last))
    return len(points)


MAX_DESCRIPTION_LEN = 5000  # registry descriptions are VARCHAR(5000) in MLflow's SQL stores


def _description(text: str) -> Optional[str]:
    if len(text) <= MAX_DESCRIPTION_LEN:
        return text or None
    note = "\n\n(truncated: the full text is in the model's artifacts)"
    return text[: MAX_DESCRIPTION_LEN - len(note)] + note


def register_version(name: str, source: str, alias: Optional[str], *, run_id: Optional[str] = None,
                     model_id: Optional[str] = None, description: str = "", version_description: str = "",
                     tags: dict | None = None) -> str:
    """Register `source` (a logged model's `models:/<id>` URI or an artifact URI) as a new version of
    `name` (created with `description` if new); set `alias` on it. Returns the version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        client.create_registered_model(name, description=_description(description))
    except MlflowException as e:
        if "already exists" not in str(e) and "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise
    mv = client.create_model_version(name, source=source, run_id=run_id, model_id=model_id,
                                     description=_description(version_description),
                                     tags={k: redact(str(v)) for k, v in (tags or {}).items()})
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)
