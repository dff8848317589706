"""The train stage's MLflow run: one per training run (name + storage), resumed on re-runs.

The driver is the only MLflow writer (sqlite locks under concurrent writers). After the
fit it logs the full loss / synthetic_acc curves from the checkpoint's `metrics.jsonl`
(so retried segments are not logged twice), the reasoner twice: the raw checkpoint folder as
the `reasoner` artifact and an MLflow Model (`pipeline.registry.log_reasoner`: pyfunc with a
signature, the model card of `card`), and, with `register_as`, that model as a new registered
version with alias `register_alias`.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

from .. import registry, tracking
from .card import model_card
from .config import TrainConfig
from .runs import EXPORTED_FILES, read_checkpoint_file, run_path


@contextlib.contextmanager
def mlflow_run(cfg: TrainConfig, say: Callable[[str], None]) -> Iterator[tuple[str, str]]:
    """Connect, start (or resume) the run and record the config; yields (run_id, tracking URI).

    The run ends FINISHED when the block completes, FAILED when it raises. Settings that
    changed since an earlier attempt of the same run are recorded as override.* tags.
    """
    import mlflow

    uri = tracking.connect(cfg.mlflow_uri, log=say)
    exp_id = tracking.ensure_experiment(cfg.experiment, uri)
    sysm = cfg.system_metrics and tracking.system_metrics_available()
    if cfg.system_metrics and not sysm:
        say("[mlflow] psutil is not installed: system metrics are not logged")
    run = tracking.start_or_resume_run(
        exp_id, run_key=f"{run_path(cfg)}", run_name=cfg.name, system_metrics=sysm,
        tags={"tart.stage": "train", "tart.storage": run_path(cfg), "tart.data": cfg.data,
              "tart.workers": cfg.workers, "tart.device": "gpu" if cfg.gpu else "cpu"},
    )
    run_id = run.info.run_id
    status = "FAILED"
    try:
        changed = tracking.log_params_once(run_id, tracking.flatten_params(cfg))
        if changed:
            say(f"[mlflow] resumed run {run_id}: changed settings recorded as override.* tags: {sorted(changed)}")
        yield run_id, uri
        status = "FINISHED"
    finally:
        mlflow.end_run(status=status)


def log_outputs(run_id: str, cfg: TrainConfig, ckpt, history: list[dict], final_metrics: dict, final_dir: str,
                say: Callable[[str], None]) -> tuple[int, Optional[str]]:
    """Curves, the reasoner (artifact and MLflow Model), the registry version and the output tags;
    returns (metric points logged, registered version or None)."""
    import mlflow

    n_points = tracking.log_history(run_id, history, skip=("step", "time"))
    with tempfile.TemporaryDirectory(prefix="tart-final-") as tmp:  # works for remote storage too
        for name in EXPORTED_FILES:
            try:
                (Path(tmp) / name).write_bytes(read_checkpoint_file(ckpt, name))
            except FileNotFoundError:
                pass
        mlflow.log_artifacts(tmp, artifact_path="reasoner")  # the raw folder: load_reasoner(download) reads it
        logged = registry.log_reasoner(
            tmp, card=model_card(cfg, final_metrics, tmp, run_id), register_as=cfg.register_as,
            alias=cfg.register_alias, description="TART reasoner trained on synthetic logistic-regression episodes",
            tags={"step": final_metrics.get("step"), "storage": run_path(cfg)},
        )
    version = logged.version
    if version is not None:
        again = " (these weights were registered before)" if logged.reused else ""
        say(f"[mlflow] registered {cfg.register_as} version {version}{again} (alias @{cfg.register_alias}); "
            f"weights {logged.digest}")
    mlflow.set_tags({"tart.checkpoint": ckpt.path, "tart.final_dir": final_dir,
                     "tart.final_step": final_metrics.get("step"), registry.DIGEST_TAG: logged.digest})
    return n_points, version
