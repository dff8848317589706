"""`tart pipeline`: generate -> train -> grid as one job on a real local Ray, then the same job again.

Tiny sizes (64 episodes, a 6-step tiny reasoner, MiniLM on 30 test messages): the point is
that the stages hand over to each other (shards -> trained reasoner -> a grid that scores
it next to the shipped default) and that a re-submitted pipeline redoes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from pipeline.full import main
from pipeline.grid import GridSpec, read_results
from pipeline.config import load_config

pytestmark = [pytest.mark.timeout(1200), pytest.mark.slow]


def _write(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def configs(tmp_path_factory, mlflow_sqlite, sms_minilm_cache):
    d = tmp_path_factory.mktemp("pipe")
    mlflow = mlflow_sqlite(d / "mlflow.db")  # train and grid share it (a copy of a migrated store)
    os.environ["TART_MLFLOW_ARTIFACTS"] = str(d / "mlartifacts")
    gen = _write(d / "gen.yaml", {"seed": 0, "episodes": 64, "shards": 2, "task": {"d": 16, "points": 34},
                                  "executor": "local"})
    train = _write(d / "train.yaml", {
        "name": "pipe", "size": "tiny", "model": {"d": 16, "max_points": 34}, "steps": 6, "batch_size": 8,
        "micro_batch": 8, "lr": 1e-3, "warmup_steps": 2, "checkpoint_every": 3, "eval_every": 3,
        "eval_episodes": 32, "eval_ks": [8, 16], "log_every": 1, "workers": 1, "cpus_per_worker": 0.5,
        "mlflow_uri": mlflow})
    grid = _write(d / "grid.yaml", {
        "name": "pipe", "datasets": ["sms_spam"], "backbones": ["minilm-l6"], "methods": ["tart", "lr_probe"],
        "reasoners": ["default"], "ks": [18], "seeds": [0], "test_size": 30, "train_size": 64,
        "cache_uri": sms_minilm_cache, "mlflow_uri": mlflow, "cpus_per_cell": 0.5})  # test_grid's embeddings
    return {"root": d, "grid": grid, "args": [f"generate_config={gen}", f"train_config={train}", f"grid_config={grid}",
                                f"storage={d}/runs"]}


def _stage_times(out: str) -> dict:
    line = next(ln for ln in out.splitlines() if ln.startswith("[pipeline] stage times: "))
    return json.loads(line.split(": ", 1)[1])


def test_pipeline_hands_over_stages_and_resubmission_redoes_nothing(ray_local, configs, capsys, pipeline_log):
    root = configs["root"]
    assert main(configs["args"]) == 0
    out = capsys.readouterr().out
    shards = sorted((root / "runs" / "episodes").glob("*.parquet"))
    assert len(shards) == 2
    final = root / "runs" / "train" / "pipe" / "final"
    assert (final / "model.safetensors").exists() and (final / "config.json").exists()

    spec = load_config(GridSpec, configs["grid"], [f"storage={root}/runs/grids"])
    df = read_results(spec)
    # every cell twice over reasoners for tart (shipped default + the one just trained), once for lr_probe
    tart = df[df["method"] == "tart"]
    assert len(tart) == 2 and tart["reasoner_digest"].nunique() == 2
    assert len(df[df["method"] == "lr_probe"]) == 1
    # the shipped reasoner and the probe classify spam well; the 6-step smoke reasoner is at chance,
    # but its cell is complete (a probability for each of the 30 test messages)
    shipped = tart[tart["reasoner"] == "default"]
    assert shipped["accuracy"].iloc[0] > 0.7 and df[df["method"] == "lr_probe"]["accuracy"].iloc[0] > 0.7, df
    assert all(len(p) == 30 and all(0.0 <= x <= 1.0 for x in p) for p in df["probs"])
    times = _stage_times(out)
    assert set(times) >= {"generate_s", "train_s", "grid_s", "grid_embed_s", "grid_cells_s", "grid_mlflow_s"}
    assert all(v >= 0 for v in times.values())
    assert times["grid_embed_s"] + times["grid_cells_s"] <= times["grid_s"] + 1

    # the same job submitted again: shards skipped, training already at its last step, no cell recomputed
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    pipeline_log.clear()
    assert main(configs["args"]) == 0
    out = capsys.readouterr().out
    assert "3 cells, 3 already in the results table, 0 to run" in pipeline_log.text, pipeline_log.text[-3000:]
    assert {p: p.stat().st_mtime_ns for p in shards} == mtimes
    assert len(read_results(spec)) == 3


def test_an_invalid_grid_stops_the_pipeline_before_it_generates_or_trains(tmp_path, capsys):
    grid = _write(tmp_path / "grid.yaml", {"datasets": ["sms_spam", "nodata"], "backbones": ["minilm-l6"],
                                          "methods": ["tart", "lr_probe"], "ks": [18], "seeds": [0]})
    assert main([f"storage={tmp_path}/run", f"grid_config={grid}"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'nodata'" in err
    assert not (tmp_path / "run").exists()  # no episodes, no checkpoints: nothing was started
