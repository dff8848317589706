"""Stage 4/5: grid expansion, validation, execution on Ray, idempotence, MLflow view, compare."""

import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.grid import (CODE_VERSION, Cell, GridError, GridSpec, cell_metrics, expand, read_results, run_grid,
                           sync_mlflow)
from pipeline.tracking import TAG_CELLS, decode_cells

pytestmark = pytest.mark.timeout(1800)  # generous: a loaded 2-core box starves niced Ray workers


@pytest.fixture(autouse=True)
def _mlflow_store(tmp_path, mlflow_sqlite):
    """Each test's sqlite MLflow store (`_spec`'s mlflow_uri) starts as a copy of one migrated database."""
    mlflow_sqlite(tmp_path / "mlflow.db")


@pytest.fixture
def sms_cache(sms_minilm_cache):
    """The session's embedding cache of `_spec`'s sms_spam x minilm-l6 (tests/conftest.py)."""
    return sms_minilm_cache


def _spec(tmp_path, **over) -> GridSpec:
    base = [
        "name=t", "datasets=[sms_spam]", "backbones=[minilm-l6]", "methods=[tart,lr_probe,lr_full]",
        "ks=[18,32]", "seeds=[0]", "test_size=30", "train_size=64", "executor=local",
        f"storage={tmp_path}/grids", f"cache_uri={tmp_path}/emb", f"mlflow_uri=sqlite:///{tmp_path}/mlflow.db",
    ]
    return load_config(GridSpec, None, base + [f"{k}={v}" for k, v in over.items()])


def _mlflow_cells(spec):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(spec.mlflow_uri)
    exp = c.get_experiment_by_name(spec.experiment)
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`tart.kind` = 'cell'", max_results=1000)
    return [cid for r in runs for cid in decode_cells(r.data.tags.get(TAG_CELLS))], runs


def test_validation_reports_every_problem_before_work(tmp_path):
    spec = _spec(tmp_path, methods="[tart,nosuch]", ks="[8,33,300]", backbones="[minilm-l6,nope]",
                 datasets="[sms_spam,nodata]")
    with pytest.raises(GridError) as e:
        expand(spec)
    msg = str(e.value)
    for needle in ("method 'nosuch' is unknown", "k=33", "must be even", "backbone 'nope' is unknown",
                   "k=8 <= d=16", "k=300 exceeds", "unknown dataset 'nodata'", "needs 150 context examples per class"):
        assert needle in msg, needle
    assert not (tmp_path / "grids").exists()  # nothing written


@pytest.mark.parametrize("override,needle", [("executor=dask", "expected ray or local"),
                                             ("embed_torch_threads=0", "embed_torch_threads=0"),
                                             ("dtype=float64", "dtype='float64': expected one of"),
                                             ("seeds=[]", "grid seeds is empty")])
def test_bad_spec_values_are_named(tmp_path, override, needle):
    from pipeline.config import ConfigError

    k, v = override.split("=", 1)
    with pytest.raises(ConfigError, match=needle):
        _spec(tmp_path, **{k: v})


def test_cell_ids_are_content_addressed(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.runtime._CPU_BF16", False)  # a CPU without native bf16: auto = float32
    cells = expand(_spec(tmp_path))
    assert len(cells) == 6 and len({c.cell_id for c in cells}) == 6
    c = cells[0]
    same = Cell(**{**c.__dict__, "reasoner": "/elsewhere/same/weights"})
    assert same.cell_id == c.cell_id  # the path does not matter, the weights digest does
    for field, value in (("k", 64), ("seed", 9), ("reasoner_digest", "x" * 16), ("backbone", "other")):
        assert Cell(**{**c.__dict__, field: value}).cell_id != c.cell_id
    assert expand(_spec(tmp_path))[0].cell_id == c.cell_id  # stable across expansions
    # dtype: "auto" meaning float32 leaves the id as it was before the option; other dtypes are part of it
    old = {k: v for k, v in dataclasses.asdict(c).items() if k not in ("reasoner", "dtype", "prompt_max_chars")}
    assert c.dtype == "auto" and c.cell_id == hashlib.sha256(
        json.dumps({**old, "code_version": CODE_VERSION}, sort_keys=True).encode()).hexdigest()[:20]
    bf = expand(_spec(tmp_path, dtype="bfloat16"))[0]
    assert bf.dtype == "bfloat16" and bf.cell_id != c.cell_id
    # prompt_max_chars likewise: None (uncut) leaves the id as before, a cut is part of it
    assert c.prompt_max_chars is None and Cell(**{**c.__dict__, "prompt_max_chars": 80}).cell_id != c.cell_id


@pytest.mark.parametrize("native_bf16", [False, True])
def test_auto_dtype_is_resolved_per_device_into_the_cell(tmp_path, monkeypatch, native_bf16):
    monkeypatch.setattr("pipeline.runtime._CPU_BF16", native_bf16)
    over = dict(methods="[tart,icl]", backbones="[smollm2-135m]", ks="[18]")
    explicit = {c.method: c for c in expand(_spec(tmp_path, dtype="bfloat16", **over))}
    for c in expand(_spec(tmp_path, **over)):  # CPU work: bf16 only where the CPU has it natively
        if native_bf16:  # the same cell as an explicit bfloat16 grid's, so its result is shared
            assert c.dtype == "bfloat16" and c.cell_id == explicit[c.method].cell_id
        else:
            assert c.dtype == "auto" and c.backbone_dtype == "float32"
    gpu_icl = {c.method: c for c in expand(_spec(tmp_path, gpus_per_icl_task=1, **over))}
    assert gpu_icl["icl"].dtype == "bfloat16"  # on a GPU auto is bf16 whatever the driver's CPU
    assert gpu_icl["tart"].dtype == ("bfloat16" if native_bf16 else "auto")  # embedding stays on CPU
    assert expand(_spec(tmp_path, dtype="float32", **over))[0].backbone_dtype == "float32"  # explicit wins


def test_cpu_bf16_detection_reads_the_cpu_flags(monkeypatch):
    import pipeline.runtime as E

    monkeypatch.setattr(E, "_CPU_BF16", None)
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    assert E.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert E.resolve_dtype("auto", "cuda:0") == "bfloat16" and E.resolve_dtype("float16", "cpu") == "float16"


def test_bfloat16_grid_embeds_in_bf16_and_still_classifies(tmp_path):
    spec = _spec(tmp_path, dtype="bfloat16", methods="[tart,lr_probe]", ks="[32]")
    s = run_grid(spec)
    assert s["cells_run"] == 2 and s["forward_passes"] > 0
    df = read_results(spec)
    assert (df["accuracy"] > 0.7).all(), df[["method", "accuracy"]]  # MiniLM in bf16 still separates spam
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "emb").rglob("_manifest.json")]
    assert manifests and all("bfloat16" in json.dumps(m) for m in manifests)


@pytest.mark.slow  # SmolLM2 in-context scoring (the scorer itself: test_icl.py)
def test_icl_cell_scores_every_query_and_beats_chance(tmp_path):
    # the grid's icl path end to end (SmolLM2 loaded once per dataset x backbone, KV-cached prompt)
    spec = _spec(tmp_path, methods="[icl]", backbones="[smollm2-135m]", ks="[32]", test_size=20)
    s = run_grid(spec)
    assert s["cells_run"] == 1 and s["cells_failed"] == 0
    row = read_results(spec).iloc[0]
    assert row["method"] == "icl" and len(row["probs"]) == 20 and row["runtime_s"] > 0
    assert row["accuracy"] >= 0.7, row["accuracy"]  # SmolLM2 at k=32 on sms: 0.97 +- 0.03 over 3 seeds of 100

    # icl_max_chars: a new cell (its id records the cut), scored on the cut texts
    cut = _spec(tmp_path, methods="[icl]", backbones="[smollm2-135m]", ks="[32]", test_size=20, icl_max_chars=20)
    (cell,) = expand(cut)
    assert cell.prompt_max_chars == 20 and cell.cell_id != row["cell_id"]
    s2 = run_grid(cut)
    assert s2["cells_run"] == 1 and s2["cells_skipped"] == 0 and s2["cells_failed"] == 0
    short = read_results(cut).set_index("cell_id").loc[cell.cell_id]
    assert not np.allclose(short["probs"], row["probs"])  # 20 characters of each SMS is another prompt


def test_icl_prompts_that_do_not_fit_are_problems_before_work_with_two_ways_out(tmp_path):
    over = dict(methods="[icl,lr_probe]", backbones="[smollm2-135m]", ks="[32,256]", train_size=512, test_size=20)
    with pytest.raises(GridError) as e:
        expand(_spec(tmp_path, **over))
    msg = str(e.value)
    assert "1 problem(s)" in msg and "icl on sms_spam x smollm2-135m at k=256" in msg, msg
    assert re.search(r"up to \d{5} tokens \(context \d+ \+ longest query \d+ \+ 0 label tokens\), "
                     r"the model's limit is 8192", msg), msg
    assert "icl_max_chars=N" in msg and "method_ks" in msg
    assert not (tmp_path / "grids").exists()  # nothing written

    # way out 1: icl at fewer ks than the other methods; the lr_probe cells are the same cells as without it
    fewer = expand(_spec(tmp_path, **over, **{"method_ks.icl": "[32]"}))
    assert {(c.method, c.k) for c in fewer} == {("icl", 32), ("lr_probe", 32), ("lr_probe", 256)}
    plain = {c.cell_id for c in expand(_spec(tmp_path, **{**over, "methods": "[lr_probe]"}))}
    assert {c.cell_id for c in fewer if c.method == "lr_probe"} == plain
    # way out 2: every example cut to N characters, recorded in the icl cells (other ids unchanged)
    cut = expand(_spec(tmp_path, **over, icl_max_chars=60))
    assert {c.prompt_max_chars for c in cut if c.method == "icl"} == {60}
    assert {c.cell_id for c in cut if c.method == "lr_probe"} == plain
    # the cut is checked too: 60 characters still fits, 400 does not
    with pytest.raises(GridError, match="examples cut to 400 characters"):
        expand(_spec(tmp_path, **over, icl_max_chars=400))
    with pytest.raises(GridError, match="method_ks names 'tart', which is not a method of the grid"):
        expand(_spec(tmp_path, **over, **{"method_ks.tart": "[32]"}))


def test_icl_cells_only_for_causal_backbones(tmp_path):
    cells = expand(_spec(tmp_path, methods="[tart,icl]", backbones="[minilm-l6,smollm2-135m]"))
    icl = [c for c in cells if c.method == "icl"]
    assert icl and {c.backbone for c in icl} == {"smollm2-135m"}
    assert {c.protocol for c in icl} == {"prompt"}


def test_each_dataset_meets_only_backbones_of_its_modality(tmp_path, caplog):
    over = dict(datasets="[sms_spam,spoken_digits]", backbones="[minilm-l6,whisper-tiny-en]")
    cells = expand(_spec(tmp_path, methods="[tart,lr_probe]", **over))
    pairs = {(c.dataset, c.backbone) for c in cells}
    assert pairs == {("sms_spam", "minilm-l6"), ("spoken_digits", "whisper-tiny-en")}
    # a method that gets no cell at all (icl without a causal LM) is skipped with a warning: the default
    # method list must work with any one backbone
    with caplog.at_level("WARNING", logger="pipeline.grid.spec"):
        cells = expand(_spec(tmp_path, methods="[tart,icl,lr_probe]", **over))
    assert not [c for c in cells if c.method == "icl"] and {c.method for c in cells} == {"tart", "lr_probe"}
    assert "method 'icl' runs on causal backbones with text inputs, and no dataset x backbone of the grid is one" \
        in caplog.text
    with pytest.raises(GridError, match="'spoken_digits' is audio, but no backbone of the grid embeds audio"):
        expand(_spec(tmp_path, datasets="[sms_spam,spoken_digits]", backbones="[minilm-l6]"))


def test_audio_grid_runs_end_to_end_and_learns(tmp_path):
    # spoken five vs nine in noise, Whisper features: tart and the probe both far above chance
    spec = _spec(tmp_path, datasets="[spoken_digits]", backbones="[whisper-tiny-en]", methods="[tart,lr_probe]",
                 ks="[32]", seeds="[0,1]", test_size=60)
    s = run_grid(spec)
    assert s["cells_run"] == 4 and s["cells_failed"] == 0
    df = read_results(spec)
    assert (df["accuracy"] >= 0.7).all(), df[["method", "seed", "accuracy"]]  # measured 0.80-0.93 at k=32


def test_multi_class_grid_runs_end_to_end_and_compare_reads_it_back(tmp_path):
    # 4 newsgroups, k = 8 per class: tart (one-vs-rest) and the multinomial probe far above chance (0.25)
    from pipeline.compare import main as compare_main

    classes = "[comp.graphics,rec.autos,sci.space,talk.politics.guns]"
    spec = _spec(tmp_path, datasets=f"[{{name: newsgroups, options: {{classes: {classes}}}}}]",
                 methods="[tart,lr_probe]", ks="[32]", seeds="[0,1]", test_size=40, train_size=80)
    s = run_grid(spec)
    assert s["cells_run"] == 4 and s["cells_failed"] == 0
    df = read_results(spec)
    assert set(df["n_classes"]) == {4} and all(len(p) == 40 * 4 for p in df["probs"])
    assert (df["accuracy"] > 0.6).all(), df[["method", "seed", "accuracy"]]
    assert df["macro_f1"].notna().all() and df["nll"].notna().all() and df["auc"].isna().all()
    out = tmp_path / "cmp"
    assert compare_main([f"mlflow_uri={spec.mlflow_uri}", "grids=[t]", f"out={out}"]) == 0
    md = (out / "summary.md").read_text()
    assert "| newsgroups | minilm-l6 | tart | 32 |" in md and "macro_f1" in md
    with pytest.raises(GridError, match="multiple of 4"):
        expand(_spec(tmp_path, datasets=f"[{{name: newsgroups, options: {{classes: {classes}}}}}]", ks="[18]",
                     test_size=40, train_size=80))


def _unit(keys, fail_at=None, skip=None):
    """An executor unit: one result per key, a failure at `fail_at`, None where skipped."""
    for key in keys:
        if skip is not None and skip(key):
            yield None
            continue
        if key == fail_at:
            raise ValueError(f"boom at {key}")
        yield {"key": key}


def test_local_executor_hands_back_each_key_with_its_result_error_or_skip():
    from pipeline.grid.executor import Executor

    ex = Executor(remote=False, skip=lambda key: key == "s")
    ex.submit(_unit, ["a", "b", "c"], "b")  # fails at b: b and c fail, a is kept
    ex.submit(_unit, ["s", "d"])  # the other unit goes on; s was finished elsewhere
    got = [(o.key, o.result, type(o.error).__name__ if o.error else None) for o in ex.outcomes()]
    assert got == [("a", {"key": "a"}, None), ("b", None, "ValueError"), ("c", None, "ValueError"),
                   ("s", None, None), ("d", {"key": "d"}, None)]
    assert list(ex.outcomes()) == [] and ex.busy_s >= 0


def test_failed_cells_exit_1_with_one_line_and_the_comparison_still_prints(tmp_path, monkeypatch, capsys, sms_cache):
    import pipeline.grid.cells as cells
    from pipeline.grid import main

    def lr_full_fails(name, *args, **kw):
        if name == "lr_full":
            raise RuntimeError("injected failure")
        return run_method(name, *args, **kw)

    run_method = cells.run_method
    monkeypatch.setattr(cells, "run_method", lr_full_fails)
    over = ["name=t", "datasets=[sms_spam]", "backbones=[minilm-l6]", "methods=[lr_probe,lr_full]", "ks=[18]",
            "seeds=[0]", "test_size=30", "train_size=64", "executor=local", f"storage={tmp_path}/grids",
            f"cache_uri={sms_cache}", f"mlflow_uri=sqlite:///{tmp_path}/mlflow.db"]
    assert main(over) == 1
    out, err = capsys.readouterr()
    assert "tart grid: 1 of 2 cell(s) failed" in err and "Traceback" not in out + err
    assert "re-run to retry them" in err  # a RuntimeError may pass on a re-run
    assert "| sms_spam | minilm-l6 | lr_probe | 18 |" in out  # the comparison of what finished
    assert list(read_results(load_config(GridSpec, None, over))["method"]) == ["lr_probe"]

    # an error in the cell's input (a ValueError such as ICLError or DatasetError) is not "retry"
    def lr_full_refuses(name, *args, **kw):
        if name == "lr_full":
            raise ValueError("injected: this input cannot be scored")
        return run_method(name, *args, **kw)

    monkeypatch.setattr(cells, "run_method", lr_full_refuses)
    assert main(over) == 1
    err = capsys.readouterr().err
    assert "1 of 1 cell(s) failed" in err and "a re-run fails the same way): change the grid" in err, err
    assert "retry" not in err


def test_auc_equals_sklearn_to_one_ulp_with_and_without_ties():
    from sklearn.metrics import roc_auc_score

    from pipeline.grid.results import auc

    rng = np.random.default_rng(0)
    for i in range(300):
        n = int(rng.integers(4, 200))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        p = rng.random(n)
        if i % 3 == 0:
            p = np.round(p, 1)  # many ties
        assert abs(auc(y, p) - roc_auc_score(y, p)) <= 2.3e-16
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert auc(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.9])) == 1.0


def test_metrics_are_correct():
    y = np.array([0, 0, 1, 1])
    m = cell_metrics(y, np.array([0.1, 0.6, 0.8, 0.9]))
    assert m["accuracy"] == 0.75 and m["auc"] == 1.0
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.04 + 0.01) / 4)
    perfect = cell_metrics(y, np.array([0.0, 0.0, 1.0, 1.0]))
    assert perfect["ece"] == pytest.approx(0.0) and perfect["brier"] == 0.0


@pytest.mark.slow  # SmolLM2 prompts (the protocols themselves: test_embed.py)
def test_vanilla_protocol_grid_embeds_every_k_seed_once(tmp_path):
    # context-dependent embeddings: every (k, seed) of the group is computed up front, then each cell
    # reads its own from the cache. In-process: the same call on Ray (one task per seed) is
    # test_embed.py's test_context_protocol_on_ray_runs_a_task_per_seed_and_equals_in_process.
    spec = _spec(tmp_path, backbones="[smollm2-135m]", protocols="[vanilla]", methods="[lr_probe]",
                 ks="[18]", seeds="[0,1]", test_size=10)
    s = run_grid(spec)
    assert s["cells_run"] == 2 and s["cells_failed"] == 0
    assert s["forward_passes"] == 2 * (1 + 2)  # per seed: the k=18 prompt once, then 10 queries in 2 batches on its cache
    df = read_results(spec)
    assert set(df["protocol"]) == {"vanilla"} and set(df["seed"]) == {0, 1}
    assert df["accuracy"].mean() >= 0.7, df[["seed", "accuracy"]]  # SmolLM2 in-context vectors separate spam
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "emb").rglob("_manifest.json")]
    assert len(manifests) == 4 and {m["executor"] for m in manifests} == {"local"}  # (train, test) x 2 seeds
    assert run_grid(spec)["forward_passes"] == 0


@pytest.mark.slow  # ~20 s: the inner loop keeps the local-executor grid tests
def test_grid_on_ray_is_idempotent_and_logs_each_cell_once(tmp_path, ray_local):
    spec = _spec(tmp_path, executor="ray", embed_torch_threads=2)  # the actor's threads, as default.yaml sets them
    s1 = run_grid(spec)
    assert s1["cells_run"] == 6 and s1["cells_failed"] == 0
    df = read_results(spec)
    assert len(df) == 6 and df["cell_id"].is_unique
    assert set(df["method"]) == {"tart", "lr_probe", "lr_full"}
    # honest quality on real embeddings: MiniLM separates spam well even at k=18
    # (30 test SMS: one cell's accuracy has a ~0.07 standard error, hence two bounds)
    assert df["accuracy"].mean() > 0.75 and df["accuracy"].min() > 0.65, df[["method", "k", "accuracy"]]
    assert all(len(p) == 30 for p in df["probs"])
    ids, runs = _mlflow_cells(spec)
    assert sorted(ids) == sorted(df["cell_id"])
    # one run per series (the cells that differ only in k): 3 methods x 1 seed, each with its 2 ks as steps
    assert len(runs) == 3 and all(r.data.params["ks"] == "18,32" for r in runs)
    assert all({"accuracy_k18", "accuracy_k32", "accuracy"} <= set(r.data.metrics) for r in runs)

    # re-run: nothing recomputed, nothing logged twice, embeddings come from the cache
    s2 = run_grid(spec)
    assert s2["cells_run"] == 0 and s2["cells_skipped"] == 6 and s2["forward_passes"] == 0
    ids2, _ = _mlflow_cells(spec)
    assert sorted(ids2) == sorted(ids)

    # a grid killed mid-way: finished cells survive as files; the re-run fills only the gap
    cells_dir = tmp_path / "grids" / "t" / "cells"
    victims = sorted(cells_dir.glob("*.parquet"))[:2]
    for v in victims:
        v.unlink()
    before = {p.name: p.stat().st_mtime_ns for p in cells_dir.glob("*.parquet")}
    s3 = run_grid(spec)
    assert s3["cells_run"] == 2 and s3["forward_passes"] == 0
    after = {p.name: p.stat().st_mtime_ns for p in cells_dir.glob("*.parquet")}
    assert all(after[n] == t for n, t in before.items())  # untouched
    assert len(read_results(spec)) == 6
    assert sorted(_mlflow_cells(spec)[0]) == sorted(ids)  # still each cell in one MLflow run


@pytest.mark.slow  # 15 s of it: tracking.connect's retry back-off (1+2+4+8 s) on the dead URI
def test_unreachable_mlflow_keeps_results_and_sync_completes_later(tmp_path, sms_cache):
    spec = _spec(tmp_path, ks="[18]", methods="[lr_full]", mlflow_uri="http://127.0.0.1:9", cache_uri=sms_cache)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    s = run_grid(spec)
    assert s["cells_run"] == 1 and s["mlflow_uri"] is None
    assert len(read_results(spec)) == 1
    spec.mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert sync_mlflow(spec) == 1
    assert sync_mlflow(spec) == 0  # idempotent
    assert len(_mlflow_cells(spec)[0]) == 1


def test_compare_reads_mlflow_and_writes_tables_and_plots(tmp_path, sms_cache):
    from pipeline.compare import main as compare_main

    spec = _spec(tmp_path, methods="[tart,lr_probe]", seeds="[0,1]", cache_uri=sms_cache)
    run_grid(spec)
    out = tmp_path / "cmp"
    rc = compare_main([f"mlflow_uri={spec.mlflow_uri}", "grids=[t]", f"out={out}"])
    assert rc == 0
    md = (out / "summary.md").read_text()
    assert "| sms_spam | minilm-l6 | tart | 18 |" in md and "Gain of tart over lr_probe" in md
    pngs = list(out.glob("acc_vs_k__*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 5000
    assert list(out.glob("reliability__*.png"))  # from the grid's results table: its per-query predictions
    import pandas as pd

    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["count"]) == {2}  # two seeds per (method, k)
    assert compare_main([f"mlflow_uri={spec.mlflow_uri}", "grids=[nosuchgrid]", f"out={out}"]) == 2


def test_dry_run_asks_the_hub_for_each_hub_backbone_and_reports_a_bad_id_with_the_others(tmp_path):
    """`tart grid --dry-run` fetches each HF id's config.json (here from a local server shaped like the
    hub: the real one is unreachable from this machine); a mistyped id is a problem listed with the
    grid's others, a known one gets its kind (a causal LM gets icl cells). Offline: not checked."""
    import subprocess
    import sys
    from pathlib import Path

    from servers import HubServer

    hub = HubServer({"someorg/tiny-causal": {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                             "max_position_embeddings": 2048}})
    tart = str(Path(sys.executable).parent / "tart")
    base = ["--dry-run", "datasets=[sms_spam]", "methods=[lr_probe,nosuch]", "ks=[18]", "seeds=[0]",
            f"storage={tmp_path}/grids", f"mlflow_uri=sqlite:///{tmp_path}/mlflow.db"]
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    env.pop("TRANSFORMERS_OFFLINE", None)
    try:
        r = subprocess.run([tart, "grid", *base, "backbones=[minilm-l6,someorg/tiny-causal,someorg/mistyped-id]"],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "2 problem(s)" in r.stderr and "method 'nosuch' is unknown" in r.stderr
        assert "backbone 'someorg/mistyped-id': the hub has no model with that id" in r.stderr
        assert "tiny-causal" not in r.stderr  # the id the hub knows is fine
        ok = subprocess.run([tart, "grid", *base[:2], "methods=[lr_probe]", *base[3:],
                             "backbones=[minilm-l6,someorg/tiny-causal]"], capture_output=True, text=True, env=env,
                            timeout=300)
        assert ok.returncode == 0 and "2 valid cells" in ok.stdout, ok.stdout + ok.stderr
    finally:
        hub.stop()
    # offline (HF_HUB_OFFLINE=1, as on this box): hub ids cannot be checked and are not refused
    off = subprocess.run([tart, "grid", *base[:2], "methods=[lr_probe]", *base[3:],
                          "backbones=[minilm-l6,someorg/mistyped-id]"], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert off.returncode == 0 and "2 valid cells" in off.stdout, off.stdout + off.stderr


def test_mlflow_shows_a_grid_the_way_its_users_expect(tmp_path, sms_cache):
    """What a person opening the experiment in MLflow 3 sees: the runs (not the GenAI overview), the
    commit and source, the dataset evaluated on, the package versions, the predictions as a table."""
    from mlflow.tracking import MlflowClient

    spec = _spec(tmp_path, methods="[lr_probe]", seeds="[0,1]", cache_uri=sms_cache)
    s = run_grid(spec)
    assert s["cells_run"] == 4 and s["mlflow_runs"] == 2  # two seeds: two series of two ks
    c = MlflowClient(spec.mlflow_uri)
    exp = c.get_experiment_by_name(spec.experiment)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = c.get_run(s["parent_run_id"])
    assert re.fullmatch(r"[0-9a-f]{40}", parent.data.tags["mlflow.source.git.commit"])
    assert parent.data.tags["mlflow.source.name"] == "tart grid"
    import importlib.metadata

    for pkg in ("torch", "transformers", "ray", "mlflow"):
        assert parent.data.tags[f"tart.version.{pkg}"] == importlib.metadata.version(pkg)
    assert [d.dataset.name for d in parent.inputs.dataset_inputs] == ["sms_spam"]
    _, runs = _mlflow_cells(spec)
    for r in runs:
        full = c.get_run(r.info.run_id)
        assert full.data.tags["mlflow.source.git.commit"] == parent.data.tags["mlflow.source.git.commit"]
    table = c.load_table(exp.experiment_id, "predictions.json", run_ids=[s["parent_run_id"]])
    df = read_results(spec)
    assert sorted(table["cell_id"]) == sorted(df["cell_id"]) and all(len(p) == 30 for p in table["probs"])
    # the printed link opens the runs, not MLflow 3's GenAI overview (checked in headless Chromium)
    from pipeline.compare import compare_from_table

    text = compare_from_table(df, spec, s)["text"]
    assert f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in text, text
    # an experiment made before the kind tag existed gets it on the next launch
    c.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", "genai_development")
    run_grid(spec)
    assert c.get_experiment(exp.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_results_table_reads_only_what_changed_since_consolidation(tmp_path, sms_cache, pipeline_log):
    """read_results after a launch: one listing + the consolidated table and its index, then only cell
    files that are new or whose size changed (on object storage a GET each): a file overwritten with
    other bytes of the same size is not even opened; a changed size is read (and skipped if broken)."""
    spec = _spec(tmp_path, methods="[lr_probe,lr_full]", cache_uri=sms_cache)
    run_grid(spec)
    base = tmp_path / "grids" / "t"
    index = json.loads((base / "results.index.json").read_text())
    files = sorted((base / "cells").glob("*.parquet"))
    assert set(index) == {p.stem for p in files} and all(index[p.stem] == p.stat().st_size for p in files)
    full = read_results(spec)
    same_size, other_size = files[0], files[1]
    same_size.write_bytes(b"x" * same_size.stat().st_size)  # not opened: the consolidation holds its row
    other_size.write_bytes(b"broken")  # opened, unreadable: skipped with a warning
    df = read_results(spec)
    assert set(df["cell_id"]) == set(full["cell_id"]) - {other_size.stem}
    assert f"skipping unreadable result file {other_size}" in pipeline_log.text
    assert f"{same_size}" not in pipeline_log.text
    files[2].unlink()  # a deleted cell file takes its row along (its cell runs again)
    assert files[2].stem not in set(read_results(spec)["cell_id"])
