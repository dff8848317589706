"""Stage 4: evaluation grids — datasets x backbones x methods x reasoners x k x seeds.

    tart grid                                   # the default grid (configs/grids/default.yaml)
    tart grid --config configs/grids/paper.yaml mlflow_uri=http://mlflow:5000
    tart grid --sync-mlflow                     # log table rows that MLflow is missing

Flow:
1. Expand the spec into cells; each has a content-addressed id: a hash of everything that
   decides its result (dataset spec and split sizes, backbone, protocol, method, reasoner
   weights digest, k, seed, CODE_VERSION). Validate the whole grid first and report every
   problem at once, before any work.
2. Skip cells already in the results table (unless --force).
3. Embeddings: each (dataset, backbone, protocol) is embedded once through the embed
   stage's cache; cost grows with distinct examples, not with k x seeds x methods.
4. Cells run as Ray tasks over the cached embeddings (ICL cells: one task per
   (dataset, backbone) that loads the causal LM once).
5. The results table is the source of truth: one Parquet file per cell under
   `<storage>/<grid>/cells/<cell_id>.parquet`, written atomically, so a killed grid loses
   nothing finished and two concurrent grids cannot corrupt or duplicate a row.
   MLflow is the view: one parent run per launch, one child run per cell (tag cell_id);
   only the driver logs, and a cell already in MLflow is never logged twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .config import ConfigError, load_config, to_dict

CODE_VERSION = "grid-v1"  # bump when a change alters cell results; part of every cell id
TEXT_METHODS_NEED_CAUSAL = {"icl"}
EMBEDDING_METHODS = ("tart", "lr_probe", "lr_full")
PCA_METHODS = ("tart", "lr_probe")
PROTOCOLS = ("stream", "vanilla", "loo")
DEFAULT_GRID = Path(__file__).resolve().parents[1] / "configs" / "grids" / "default.yaml"


class GridError(ValueError):
    """An invalid grid; the message lists every problem found."""


@dataclass
class GridSpec:
    name: str = "default"  # grid id: results live under <storage>/<name>/
    datasets: list[Any] = field(default_factory=lambda: ["sms_spam", "tweet_sentiment", "spoken_digits"])  # name or {name, options}
    backbones: list[str] = field(default_factory=lambda: ["smollm2-135m", "minilm-l6", "whisper-tiny-en"])
    methods: list[str] = field(default_factory=lambda: ["tart", "icl", "lr_probe"])
    reasoners: list[str] = field(default_factory=lambda: ["default"])  # "default" or checkpoint dirs
    ks: list[int] = field(default_factory=lambda: [18, 32, 64])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    protocols: list[str] = field(default_factory=lambda: ["stream"])
    test_size: int = 100  # balanced test subsample per dataset
    train_size: int = 256  # balanced context pool per dataset (context sets are drawn from it)
    storage: str = "tart_runs/grids"
    cache_uri: str = ""  # embedding cache ("" = the embed stage default)
    mlflow_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db
    experiment: str = "tart-grid"
    executor: str = "ray"  # ray | local
    address: Optional[str] = None  # Ray address (None: local or the job's cluster)
    cpus_per_cell: float = 0.5
    embed_actors: int = 1
    embed_batch_size: int = 32
    # torch threads inside each embedding actor; null: as Ray sets them (one per requested CPU, so a
    # 0.5-CPU actor gets 1 thread). Embedding runs before the cells, so on a small CPU box it may use them all.
    embed_torch_threads: Optional[int] = None
    gpus_per_actor: float = 0.0  # per embedding actor
    gpus_per_icl_task: float = 0.0  # per ICL task (one seed of one dataset x causal backbone); > 0: the LM runs on it
    # CPUs per ICL task (its torch threads: Ray sets one per whole CPU). ICL is compute-bound: on a
    # CPU box, tasks sharing a core (0.5 CPU each) only slow each other down.
    cpus_per_icl_task: float = 1.0
    # queries per ICL forward pass. 8 suits a CPU; on a GPU 32 is 3x faster (H200, SmolLM2-sized
    # model, k=32/64: BENCHMARKS.md "ICL on a GPU"), as configs/grids/paper.yaml sets it.
    icl_batch_size: int = 8
    # weights/activations of the backbones (embedding and icl): auto = bfloat16 on GPU and on CPUs with
    # native bf16 (AVX512-BF16/AMX: 1.8-2.8x faster there, accuracy within 0.003; BENCHMARKS.md), else
    # float32. The driver resolves it (GPU if gpus_per_actor / gpus_per_icl_task > 0) into each cell.
    dtype: str = "auto"

    def validate(self) -> None:
        if self.executor not in ("ray", "local"):
            raise ConfigError(f"executor={self.executor!r}: expected ray or local")
        for name in ("datasets", "backbones", "methods", "reasoners", "ks", "seeds", "protocols"):
            if not getattr(self, name):
                raise ConfigError(f"grid {name} is empty: list at least one")
        if self.test_size < 2 or self.train_size < 2:
            raise ConfigError("test_size and train_size must be >= 2")
        from .runtime import DTYPES

        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.cpus_per_cell <= 0 or self.cpus_per_icl_task <= 0:
            raise ConfigError(f"cpus_per_cell={self.cpus_per_cell}, cpus_per_icl_task={self.cpus_per_icl_task}: "
                              "expected > 0 (Ray schedules a task by the CPUs it asks for)")
        if self.gpus_per_actor < 0 or self.gpus_per_icl_task < 0:
            raise ConfigError("gpus_per_actor and gpus_per_icl_task must be >= 0")
        if self.embed_torch_threads is not None and self.embed_torch_threads < 1:
            raise ConfigError(f"embed_torch_threads={self.embed_torch_threads}: expected >= 1 or null")


@dataclass(frozen=True)
class Cell:
    dataset: str
    dataset_options: str  # canonical JSON of the dataset options (incl. train/test sizes)
    backbone: str
    protocol: str  # stream | vanilla | loo; "prompt" for icl
    method: str
    reasoner: str  # "-" for methods without a reasoner
    reasoner_digest: str
    k: int
    seed: int
    # the backbone dtype, resolved by the driver; "auto" = float32 (how ids read before bf16 was auto)
    dtype: str = "auto"

    @property
    def backbone_dtype(self) -> str:
        """The dtype the backbone runs in for this cell."""
        return "float32" if self.dtype == "auto" else self.dtype

    @property
    def cell_id(self) -> str:
        key = dict(dataclasses.asdict(self), code_version=CODE_VERSION)
        key.pop("reasoner")  # the path does not decide the result; the weights digest does
        if key["dtype"] == "auto":  # float32 as ids were before the option: those results stay valid
            key.pop("dtype")
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    @property
    def options(self) -> dict:
        return json.loads(self.dataset_options)

    @property
    def group(self) -> tuple:
        return (self.dataset, self.dataset_options, self.backbone, self.protocol)


# ----------------------------------------------------------------------------- expansion + validation
def cell_dtype(dtype: str, gpus: float) -> str:
    """A cell's dtype: `dtype` resolved for the device its work gets (a GPU if `gpus` > 0).

    "auto" that resolves to float32 stays "auto", so the ids of earlier float32 results stay
    valid; one that resolves to bfloat16 becomes "bfloat16", the id an explicit bfloat16 gets.
    """
    from .runtime import resolve_dtype

    resolved = resolve_dtype(dtype, "cuda" if gpus > 0 else "cpu")
    return "auto" if dtype == "auto" and resolved == "float32" else resolved



def _dataset_entries(spec: GridSpec) -> list[tuple[str, dict]]:
    out = []
    for d in spec.datasets:
        if isinstance(d, str):
            name, opts = d, {}
        elif isinstance(d, dict) and "name" in d:
            name, opts = d["name"], dict(d.get("options") or {})
        else:
            raise GridError(f"grid datasets entry {d!r}: expected a name or a mapping with name and options")
        opts.setdefault("test_size", spec.test_size)
        opts.setdefault("train_size", spec.train_size)
        out.append((name, opts))
    return out


def reasoner_dir(ref: str) -> Path:
    from .reasoner import default_checkpoint_dir

    return default_checkpoint_dir() if ref == "default" else Path(ref)


def reasoner_digest(ref: str) -> str:
    path = reasoner_dir(ref) / "model.safetensors"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _backbone_kind(name: str) -> Optional[str]:
    """Kind of a registered backbone without loading it (None: an HF id / path, unknown here)."""
    from . import backbones

    entry = backbones.REGISTRY.get(name)
    return entry.kind if entry is not None else None


def expand(spec: GridSpec) -> list[Cell]:
    """All cells of the grid, after validating it as a whole (GridError lists every problem)."""
    from .backbones import known_backbones
    from .datasets import DatasetError, load_examples
    from .methods import known_methods
    from .reasoner import ReasonerError, read_checkpoint_config

    problems: list[str] = []
    methods_known = set(known_methods()) | {"icl"}
    for m in spec.methods:
        if m not in methods_known:
            problems.append(f"method {m!r} is unknown; known: {', '.join(sorted(methods_known))}")
    for p in spec.protocols:
        if p not in PROTOCOLS:
            problems.append(f"protocol {p!r} is unknown; known: {', '.join(PROTOCOLS)}")
    for k in spec.ks:
        if k % 2:
            problems.append(f"k={k}: context sets are class-balanced, so k must be even")
    kinds: dict[str, Optional[str]] = {}
    for b in spec.backbones:
        looks_external = "/" in b or os.path.isdir(b)
        if b not in known_backbones() and not looks_external:
            problems.append(f"backbone {b!r} is unknown; known: {', '.join(known_backbones())} (or an HF id / local folder)")
        kinds[b] = _backbone_kind(b)
    digests: dict[str, str] = {}
    max_k = None
    if any(m in ("tart",) for m in spec.methods):
        for r in spec.reasoners:
            try:
                meta = read_checkpoint_config(reasoner_dir(r))
                digests[r] = reasoner_digest(r)
                r_max = meta["reasoner"]["max_points"] - 1
                d = meta["reasoner"]["d"]
                max_k = r_max if max_k is None else min(max_k, r_max)
                for k in spec.ks:
                    if k > r_max:
                        problems.append(f"k={k} exceeds reasoner {r!r}'s trained context (at most {r_max} pairs)")
                    if k <= d:
                        problems.append(f"k={k} <= d={d}: TART's PCA to d dims needs k > d context examples")
            except (ReasonerError, OSError) as e:
                problems.append(f"reasoner {r!r}: {e}")
    if "lr_probe" in spec.methods:
        for k in spec.ks:
            if k <= 16 and "tart" not in spec.methods:
                problems.append(f"k={k} <= 16: lr_probe's PCA to 16 dims needs k > 16 context examples")
    entries = []
    try:
        entries = _dataset_entries(spec)
    except GridError as e:
        problems.append(str(e))
    modality: dict[str, str] = {}
    for name, opts in entries:
        try:
            pool = load_examples(name, "train", **opts)
            modality[name] = pool.modality
            counts = pool.class_counts()
            need = max(spec.ks) // 2
            if min(counts.values()) < need:
                problems.append(
                    f"dataset {name!r}: k={max(spec.ks)} needs {need} context examples per class, the pool has {counts}"
                )
        except (DatasetError, ValueError, OSError) as e:
            problems.append(f"dataset {name!r}: {e}")
    from .modality import modality_of

    # Each dataset meets only the backbones of its modality (text x LMs, audio x Whisper, ...);
    # a dataset that no backbone of the grid can embed is a mistake, not a skip.
    def fits(name: str, b: str) -> bool:
        return kinds[b] is None or modality.get(name) is None or modality_of(kinds[b]) == modality[name]

    for name, mod in modality.items():
        if not any(fits(name, b) for b in spec.backbones):
            problems.append(f"dataset {name!r} is {mod}, but no backbone of the grid embeds {mod} "
                            f"(backbones: {', '.join(f'{b} ({kinds[b]})' for b in spec.backbones)})")
    if problems:
        raise GridError(f"grid {spec.name!r} is invalid ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems))

    emb_dtype, icl_dtype = cell_dtype(spec.dtype, spec.gpus_per_actor), cell_dtype(spec.dtype, spec.gpus_per_icl_task)
    cells = []
    for name, opts in entries:
        dopts = json.dumps(opts, sort_keys=True)
        for b in spec.backbones:
            if not fits(name, b):
                continue
            for k in spec.ks:
                for seed in spec.seeds:
                    for m in spec.methods:
                        if m == "icl":
                            if kinds[b] not in ("causal", None) or modality.get(name) != "text":
                                continue
                            cells.append(Cell(name, dopts, b, "prompt", m, "-", "-", k, seed, icl_dtype))
                            continue
                        for p in spec.protocols:
                            if p != "stream" and kinds[b] not in ("causal", None):
                                continue
                            if m == "tart":
                                for r in spec.reasoners:
                                    cells.append(Cell(name, dopts, b, p, m, r, digests[r], k, seed, emb_dtype))
                            else:
                                cells.append(Cell(name, dopts, b, p, m, "-", "-", k, seed, emb_dtype))
    return cells


# ----------------------------------------------------------------------------- metrics


def cell_metrics(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=np.int64)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    pred = (p >= 0.5).astype(np.int64)
    out = {"accuracy": float((pred == y).mean()), "brier": float(((p - y) ** 2).mean())}
    out["auc"] = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    conf = np.where(pred == 1, p, 1 - p)  # ECE over the confidence of the predicted class
    edges = np.linspace(0.5, 1.0, bins // 2 + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, len(edges) - 2)
    ece = 0.0
    for b in range(len(edges) - 1):
        m = idx == b
        if m.any():
            ece += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    out["ece"] = float(ece)
    return out


# ----------------------------------------------------------------------------- results table


def _cells_dir(spec: GridSpec) -> str:
    from .storage import join

    return join(join(spec.storage, spec.name), "cells")


def _finished_elsewhere(spec: GridSpec, cell: Cell) -> bool:
    """True if another driver (a concurrent run of this grid) wrote the cell meanwhile.

    The file must read back as a result: a truncated or foreign file is recomputed.
    """
    import pyarrow.parquet as pq

    from .storage import resolve

    fs, path = resolve(_cells_dir(spec))
    try:
        return pq.read_metadata(io.BytesIO(fs.cat_file(f"{path}/{cell.cell_id}.parquet"))).num_rows == 1
    except Exception:  # noqa: BLE001 - missing or unreadable: not finished
        return False


def read_results(spec: GridSpec):
    """The results table (pandas) of a grid: one row per finished cell."""
    import pandas as pd
    import pyarrow.parquet as pq

    from .storage import list_names, resolve

    fs, path = resolve(_cells_dir(spec))
    frames = []
    for name in list_names(fs, path):
        if not name.endswith(".parquet") or name.startswith("_"):
            continue
        try:
            frames.append(pq.read_table(io.BytesIO(fs.cat_file(f"{path}/{name}"))).to_pandas())
        except Exception as e:  # noqa: BLE001 - a foreign/corrupt file must not hide the others
            print(f"[grid] warning: skipping unreadable result file {path}/{name}: {e}", file=sys.stderr)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).drop_duplicates("cell_id", keep="last")


def write_cell_result(spec: GridSpec, row: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .storage import atomic_write_bytes, resolve

    from .storage import StorageError

    fs, path = resolve(_cells_dir(spec))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row]), buf)
    try:
        fs.makedirs(path, exist_ok=True)
        atomic_write_bytes(fs, f"{path}/{row['cell_id']}.parquet", buf.getvalue())
    except OSError as e:  # disk full, storage gone read-only, ...: stop; finished cells are intact
        raise StorageError(
            f"cannot write the result of cell {row['cell_id']} to {_cells_dir(spec)!r}: {type(e).__name__}: {e}. "
            f"Cells already written are intact; fix the storage and re-run (finished cells are skipped)"
        ) from None


def write_results_table(spec: GridSpec) -> str:
    """Consolidate the per-cell files into <storage>/<grid>/results.parquet (atomic)."""
    from .storage import atomic_write_bytes, join, resolve

    df = read_results(spec)
    uri = join(join(spec.storage, spec.name), "results.parquet")
    fs, path = resolve(uri)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(fs, path, buf.getvalue())
    return uri


# ----------------------------------------------------------------------------- cell execution


_REASONERS: dict[str, Any] = {}


def _reasoner(ref: str):
    from .reasoner import load_reasoner

    if ref not in _REASONERS:
        _REASONERS[ref] = load_reasoner(reasoner_dir(ref))
    return _REASONERS[ref]


def run_embedding_cell(cell: Cell, Xc, yc, Xq, yq) -> dict:
    from .methods import run_method

    t0 = time.time()
    reasoner = _reasoner(cell.reasoner) if cell.method == "tart" else None
    p = run_method(cell.method, Xc, yc, Xq, reasoner=reasoner)
    return {"probs": np.asarray(p, dtype=np.float32), "runtime_s": time.time() - t0}


def iter_icl_group(cells: list[Cell], batch_size: int, skip=None):
    """Yield (cell, result) for ICL cells of one (dataset, backbone); the causal LM is loaded once.

    `skip(cell)` true: yield (cell, None) without scoring it (finished by a concurrent run).
    """
    from .backbones import load_causal_lm
    from .datasets import context_sets, load_examples
    from .icl import ICLScorer

    c0 = cells[0]
    pool = load_examples(c0.dataset, "train", **c0.options)
    test = load_examples(c0.dataset, "test", **c0.options)
    import torch

    # the GPU a Ray task was given (gpus_per_icl_task > 0), or a local one; else CPU
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok, model = load_causal_lm(c0.backbone, device=device, dtype=c0.backbone_dtype)
    scorer = ICLScorer(tok, model, label_words=pool.label_names, batch_size=batch_size)
    for cell in cells:
        if skip is not None and skip(cell):
            yield cell, None
            continue
        t0 = time.time()
        ctx = context_sets(pool.labels, [cell.k], cell.seed)[cell.k]
        p = scorer.predict_proba([pool.texts[i] for i in ctx], pool.labels[ctx], test.texts)
        yield cell, {"probs": np.asarray(p, dtype=np.float32), "runtime_s": time.time() - t0,
                     "labels": test.labels, "ids": test.ids}


def run_icl_group(cells: list[Cell], batch_size: int) -> list[dict]:
    """Ray task body: all results of `cells` (kept small by the driver: one seed per task)."""
    return [res for _, res in iter_icl_group(cells, batch_size)]


# ----------------------------------------------------------------------------- MLflow view


def _git_sha() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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

    def __init__(self, spec: GridSpec, launch_id: str, log=print):
        # A dead server must not stall every call for minutes in MLflow's own HTTP retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        from mlflow.tracking import MlflowClient

        from .tracking import connect, ensure_experiment

        self.uri = connect(spec.mlflow_uri, log=log)
        self.client = MlflowClient(self.uri)
        self.exp_id = ensure_experiment(spec.experiment, self.uri)
        self.spec, self.log = spec, log
        self.git_sha = _git_sha()
        self.down: Optional[str] = None  # the error that took the server away, if any
        self.unlogged = 0  # cells this launch could not log (still in the results table)
        self._close_dead_launches()
        parent = self.client.create_run(
            self.exp_id, run_name=f"grid-{spec.name}-{launch_id}",
            tags={"tart.grid": spec.name, "tart.kind": "grid-launch", "tart.launch_id": launch_id,
                  "git_sha": self.git_sha, "tart.host": socket.gethostname(), "tart.pid": str(os.getpid())},
        )
        self.parent_id = parent.info.run_id
        from .tracking import flatten_params

        for k, v in list(flatten_params(to_dict(spec)).items())[:100]:
            self.client.log_param(self.parent_id, k, v[:6000])
        self.logged = self.logged_cells()

    def _cell_runs(self, cell_id: Optional[str] = None) -> list:
        f = f"tags.`tart.grid` = '{self.spec.name}' and tags.`tart.kind` = 'cell'"
        if cell_id:
            f += f" and tags.cell_id = '{cell_id}'"
        return self.client.search_runs([self.exp_id], filter_string=f, max_results=50000)

    def logged_cells(self) -> set[str]:
        """Cells with a FINISHED run (a run left RUNNING by a killed driver does not count)."""
        return {r.data.tags.get("cell_id") for r in self._cell_runs() if r.info.status == "FINISHED"}

    def _close_dead_launches(self) -> None:
        """Mark parent runs of drivers that died on this host (pid gone) as KILLED."""
        f = f"tags.`tart.grid` = '{self.spec.name}' and tags.`tart.kind` = 'grid-launch' and attributes.status = 'RUNNING'"
        for r in self.client.search_runs([self.exp_id], filter_string=f, max_results=1000):
            host, pid = r.data.tags.get("tart.host"), r.data.tags.get("tart.pid")
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
            by_cell.setdefault(r.data.tags.get("cell_id"), []).append(r)
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
            self.log(f"[grid] WARNING: MLflow logging failed ({self.down}); the remaining cells go to the results "
                     f"table only — run `tart grid --sync-mlflow` (or re-run the grid) when MLflow is back")
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
        from mlflow.entities import Metric, Param, RunTag

        tags = {"mlflow.parentRunId": self.parent_id, "cell_id": row["cell_id"], "tart.grid": self.spec.name,
                "tart.kind": "cell", "git_sha": self.git_sha, "code_version": row["code_version"]}
        name = f"{row['dataset']}/{row['backbone']}/{row['method']}/k{row['k']}/s{row['seed']}"
        run = self.client.create_run(self.exp_id, run_name=name, tags=tags)
        rid = run.info.run_id
        params = {c: str(row[c]) for c in ("dataset", "dataset_options", "backbone", "protocol", "method",
                                           "reasoner", "reasoner_digest", "k", "seed")}
        now = int(time.time() * 1000)
        metrics = [Metric(m, float(row[m]), now, int(row["k"])) for m in ("accuracy", "auc", "brier", "ece", "runtime_s")
                   if row.get(m) is not None and np.isfinite(row[m])]
        self.client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                              tags=[RunTag(k, v) for k, v in {"tart.dataset": row["dataset"]}.items()])
        self.client.log_text(rid, json.dumps({"ids": list(row["test_ids"]), "labels": list(map(int, row["labels"])),
                                              "probs": [float(x) for x in row["probs"]]}), "predictions.json")
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sync_mlflow(spec: GridSpec, log=print) -> int:
    """Log every table row that MLflow does not hold yet; returns how many were logged."""
    df = read_results(spec)
    from .tracking import TrackingError

    view = MlflowView(spec, f"sync-{int(time.time())}", log=log)
    n = view.sync(df)
    if view.down:
        raise TrackingError(f"MLflow failed during sync after {n} cell(s): {view.down}")
    view.finish({"cells_synced": n})
    log(f"[grid] synced {n} cell(s) to MLflow ({len(df)} in the results table)")
    return n


# ----------------------------------------------------------------------------- driver


def _row(cell: Cell, result: dict, labels: np.ndarray, ids: list[str]) -> dict:
    row = dataclasses.asdict(cell)
    row.update(cell_id=cell.cell_id, grid=None, code_version=CODE_VERSION, n_test=int(len(labels)),
               runtime_s=float(result["runtime_s"]), finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               probs=[float(x) for x in result["probs"]], labels=[int(x) for x in labels], test_ids=list(ids))
    row.update(cell_metrics(labels, result["probs"]))
    return row


class Progress:
    def __init__(self, total: int, log):
        self.total, self.done, self.failed, self.t0, self.log = total, 0, 0, time.time(), log

    def tick(self, ok: bool = True, what: str = "") -> None:
        self.done += ok
        self.failed += not ok
        n = self.done + self.failed
        el = time.time() - self.t0
        eta = el / n * (self.total - n) if n else float("nan")
        self.log(f"[grid] cells {n}/{self.total} done, {self.failed} failed, {el:.0f}s elapsed, ETA {eta:.0f}s {what}")


def run_grid(spec: GridSpec, force: bool = False, log=print) -> dict:
    """Run (or resume) a grid; returns a summary. See the module docstring."""
    from .embed import get_embeddings
    from .storage import check_writable, resolve

    t_start = time.time()
    cells = expand(spec)
    fs, path = resolve(_cells_dir(spec))
    check_writable(fs, path, _cells_dir(spec))
    done = set() if force else set(read_results(spec).get("cell_id", []))
    todo = [c for c in cells if c.cell_id not in done]
    log(f"[grid] {spec.name}: {len(cells)} cells, {len(cells) - len(todo)} already in the results table, {len(todo)} to run")
    launch_id = time.strftime("%Y%m%d-%H%M%S")
    view = None
    try:
        view = MlflowView(spec, launch_id, log=log)
    except Exception as e:  # noqa: BLE001 - results still land in the table; sync later
        log(f"[grid] WARNING: MLflow unavailable ({e}); results go to the table only — run `tart grid --sync-mlflow` later")
    if view is not None and done:  # rows a killed driver or an MLflow outage left out of MLflow
        n = view.sync(read_results(spec))
        if n:
            log(f"[grid] logged {n} finished cell(s) that MLflow was missing")

    use_ray = spec.executor == "ray"
    if use_ray:
        from .runtime import init_ray

        init_ray(spec.address)
    progress = Progress(len(todo), log)
    timings = {"embed_s": 0.0, "cells_s": 0.0, "mlflow_s": 0.0}
    forward_passes = 0

    def finish_row(row: dict) -> None:
        row["grid"] = spec.name
        write_cell_result(spec, row)
        if view is not None:
            t = time.time()
            view.log_cell(row)  # never raises: a failure turns the view `down`, the row stays in the table
            timings["mlflow_s"] += time.time() - t
        progress.tick(True, f"{row['dataset']}/{row['backbone']}/{row['method']} k={row['k']} seed={row['seed']} "
                            f"acc={row['accuracy']:.3f}")

    # -- embedding cells, grouped by (dataset, backbone, protocol): embed once per group
    from .datasets import context_sets

    groups: dict[tuple, list[Cell]] = {}
    for c in todo:
        if c.method != "icl":
            groups.setdefault(c.group, []).append(c)
    pending = []
    for (dataset, dopts, backbone, protocol), gcells in groups.items():
        t = time.time()
        opts = json.loads(dopts)
        common = dict(dataset_options=opts, cache_uri=spec.cache_uri or None, executor="ray" if use_ray else "local",
                      actors=spec.embed_actors, batch_size=spec.embed_batch_size, gpus_per_actor=spec.gpus_per_actor,
                      torch_threads=spec.embed_torch_threads, dtype=gcells[0].backbone_dtype, log=log)
        if protocol == "stream":
            # both splits in one call: on Ray, one actor pool (one model load) for the two
            both = get_embeddings(dataset, "train", backbone, "stream", **{**common, "splits": ["train", "test"]})
            train, test = both.select("train"), both.select("test")
            forward_passes += both.forward_passes
            timings["embed_s"] += time.time() - t
            episodes = {}
            for c in gcells:
                ctx = context_sets(train.labels, [c.k], c.seed)[c.k]
                episodes[c] = (train.X[ctx], train.labels[ctx])
            Xq, yq, ids = test.X, test.labels, test.ids
            per_cell = {c: (*episodes[c], Xq, yq, ids) for c in gcells}
        else:  # vanilla / loo: context-dependent, per (k, seed); all of them computed (or read from the
            # cache) in one call, one Ray task per seed in parallel, then picked per cell
            every = get_embeddings(dataset, "train", backbone, protocol, k=gcells[0].k, seed=gcells[0].seed,
                                   **{**common, "splits": ["train", "test"], "ks": sorted({c.k for c in gcells}),
                                      "seeds": sorted({c.seed for c in gcells})})
            forward_passes += every.forward_passes
            per_cell = {}
            for c in gcells:
                tr, te = every.select("train", c.k, c.seed), every.select("test", c.k, c.seed)
                per_cell[c] = (tr.X, tr.labels, te.X, te.labels, te.ids)
            timings["embed_s"] += time.time() - t
        for c, (Xc, yc, Xq, yq, ids) in per_cell.items():
            if use_ray:
                task = _remote_cell(spec.cpus_per_cell)
                pending.append((c, yq, ids, task.remote(c, Xc, yc, Xq, yq)))
            else:
                if _finished_elsewhere(spec, c):
                    progress.tick(True, f"{c.method} k={c.k} seed={c.seed}: finished by a concurrent run")
                    continue
                t = time.time()
                res = run_embedding_cell(c, Xc, yc, Xq, yq)
                timings["cells_s"] += time.time() - t
                finish_row(_row(c, res, yq, ids))

    if use_ray:  # collect the cheap cells first: queued behind long ICL tasks they would sit unreported
        import ray

        t = time.time()
        for (c, yq, ids), ref in _in_finish_order({ref: (c, yq, ids) for c, yq, ids, ref in pending}):
            try:
                finish_row(_row(c, ray.get(ref), yq, ids))
            except Exception as e:  # noqa: BLE001 - a failed cell is reported, the rest go on
                progress.tick(False, f"cell {c.cell_id} failed: {e}")
        timings["cells_s"] += time.time() - t

    # -- ICL cells: one task per (dataset, backbone)
    icl_groups: dict[tuple, list[Cell]] = {}
    for c in todo:
        if c.method == "icl":
            icl_groups.setdefault(c.group, []).append(c)
    icl_pending = []
    for key, gcells in icl_groups.items():
        if use_ray:  # one task per seed: a lost task costs one seed's cells, not the group's
            for seed in sorted({c.seed for c in gcells}):
                part = [c for c in gcells if c.seed == seed]
                icl_pending.append((part, _remote_icl(spec.cpus_per_icl_task, spec.gpus_per_icl_task)
                                    .remote(part, spec.icl_batch_size)))
        else:  # each cell lands in the table as soon as it is scored
            t = time.time()
            for c, res in iter_icl_group(gcells, spec.icl_batch_size, skip=lambda c: _finished_elsewhere(spec, c)):
                if res is None:
                    progress.tick(True, f"icl k={c.k} seed={c.seed}: finished by a concurrent run")
                    continue
                finish_row(_row(c, res, res["labels"], res["ids"]))
            timings["cells_s"] += time.time() - t

    if use_ray:
        import ray

        t = time.time()
        for gcells, ref in _in_finish_order({ref: gcells for gcells, ref in icl_pending}):
            try:
                for c, res in zip(gcells, ray.get(ref)):
                    finish_row(_row(c, res, res["labels"], res["ids"]))
            except Exception as e:  # noqa: BLE001
                for c in gcells:
                    progress.tick(False, f"icl cell {c.cell_id} failed: {e}")
        timings["cells_s"] += time.time() - t

    table_uri = write_results_table(spec)
    summary = {"cells_total": len(cells), "cells_run": progress.done, "cells_failed": progress.failed,
               "cells_skipped": len(cells) - len(todo), "forward_passes": forward_passes,
               "mlflow_unlogged": view.unlogged if view is not None else len(todo),
               "wall_s": time.time() - t_start, **timings}
    if view is not None and view.unlogged:
        log(f"[grid] WARNING: {view.unlogged} cell(s) are in the results table but not in MLflow ({view.down}); "
            f"run `tart grid --sync-mlflow` (or re-run the grid) once MLflow is back")
    if view is not None:
        try:
            view.finish(summary, status="FAILED" if progress.failed else "FINISHED")
        except Exception as e:  # noqa: BLE001
            log(f"[grid] WARNING: could not close the MLflow parent run ({e})")
    summary["results_uri"] = table_uri
    summary["mlflow_uri"] = view.uri if view else None
    summary["parent_run_id"] = view.parent_id if view else None
    log(f"[grid] done: {json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in summary.items()})}")
    if progress.failed:
        raise RuntimeError(f"grid {spec.name}: {progress.failed} cell(s) failed; re-run to retry them")
    return summary


def _in_finish_order(tasks: dict):
    """Yield (what, ref) for the Ray refs in `tasks` (ref -> what) in the order they finish."""
    import ray

    tasks = dict(tasks)
    while tasks:
        ready, _ = ray.wait(list(tasks), num_returns=1)
        yield tasks.pop(ready[0]), ready[0]


def _remote_cell(cpus: float):
    import ray

    return ray.remote(num_cpus=cpus, max_retries=2)(run_embedding_cell)


def _remote_icl(cpus: float, gpus: float = 0.0):
    import ray

    return ray.remote(num_cpus=cpus, num_gpus=gpus or None, max_retries=1)(run_icl_group)


# ----------------------------------------------------------------------------- CLI


def _epilog() -> str:
    lines = ["exit status: 0 all cells done and logged; 2 invalid grid or unusable storage/MLflow (nothing run,",
             "  or stopped at the first failed write: finished cells are kept); 3 every cell is in the results",
             "  table but MLflow missed some (`tart grid --sync-mlflow` later); 1 some cells failed (re-run).", "",
             "grid spec keys (YAML and/or key=value overrides; defaults shown):"]
    for f in dataclasses.fields(GridSpec):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  {f.name}={json.dumps(default)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="tart grid", description="Run an evaluation grid (the main job).", epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", default=str(DEFAULT_GRID), help="grid spec YAML (default: configs/grids/default.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the spec")
    ap.add_argument("--force", action="store_true", help="recompute cells already in the results table")
    ap.add_argument("--sync-mlflow", action="store_true", help="only log results-table rows missing from MLflow")
    ap.add_argument("--dry-run", action="store_true", help="validate and list the cells, run nothing")
    ap.add_argument("--no-compare", action="store_true", help="do not print the comparison table at the end")
    a = ap.parse_args(argv)
    from .storage import StorageError
    from .tracking import TrackingError

    try:
        spec = load_config(GridSpec, a.config, a.overrides)
        if a.sync_mlflow:
            sync_mlflow(spec)
            return 0
        if a.dry_run:
            cells = expand(spec)
            print(f"grid {spec.name}: {len(cells)} valid cells")
            return 0
        summary = run_grid(spec, force=a.force)
    except (ConfigError, GridError, StorageError, TrackingError) as e:
        print(f"tart grid: error: {e}", file=sys.stderr)
        return 2
    if not a.no_compare:
        from .compare import compare_from_table

        compare_from_table(spec, summary)
    # 3: every cell is in the results table but MLflow missed some (sync later)
    return 3 if summary.get("mlflow_unlogged") else 0


if __name__ == "__main__":
    sys.exit(main())
