"""Stage 4: evaluation grids — datasets x backbones x methods x reasoners x k x seeds.

    tart grid                                   # the default grid (configs/grids/default.yaml)
    tart grid --config configs/grids/paper.yaml mlflow_uri=http://mlflow:5000
    tart grid --sync-mlflow                     # log table rows that MLflow is missing

Flow, one module per step:
1. `spec`: expand the spec into cells; each has a content-addressed id (a hash of everything
   that decides its result). The whole grid is validated first and every problem reported
   at once, before any work; `models:/` reasoners are resolved then (`pipeline.registry`).
2. `driver`: skip cells already in the results table (unless --force).
3. `cells`: each (dataset, backbone, protocol) is embedded once through the embed stage's
   cache; cost grows with distinct examples, not with k x seeds x methods.
4. `executor`: cells run locally or as Ray tasks over the cached embeddings (text methods,
   i.e. icl: one unit per (dataset, backbone) that loads the causal LM once, one per seed on Ray).
5. `results`: the results table is the source of truth: one Parquet file per cell under
   `<storage>/<grid>/cells/<cell_id>.parquet`, written atomically, so a killed grid loses
   nothing finished and two concurrent grids cannot corrupt or duplicate a row.
   `mlflow_view`: MLflow is the view: one parent run per launch, one child run per cell
   (tag cell_id); only the driver logs, and a cell already in MLflow is never logged twice.
6. `cli`: `tart grid` prints the comparison (`pipeline.compare`) and exits with the status.
"""

from .cli import main
from .driver import run_grid
from .mlflow_view import MlflowView, sync_mlflow
from .results import cell_metrics, read_results, write_results_table
from .spec import CODE_VERSION, Cell, Expansion, GridError, GridSpec, cell_dtype, expand, expand_grid

__all__ = ["CODE_VERSION", "Cell", "Expansion", "GridError", "GridSpec", "MlflowView", "cell_dtype", "cell_metrics",
           "expand", "expand_grid", "main", "read_results", "run_grid", "sync_mlflow", "write_results_table"]
