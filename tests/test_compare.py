"""`tart compare` arithmetic on hand-built result frames (no MLflow needed for the numbers)."""

import pandas as pd

from pipeline.compare import gains, report


def _rows(method, acc_by_seed, reasoner_digest="-", k=18):
    return [{"grid": "g", "dataset": "sms_spam", "backbone": "smollm2-135m", "protocol": "stream",
             "method": method, "reasoner_digest": reasoner_digest, "k": k, "seed": s, "accuracy": a,
             "cell_id": f"{method}-{reasoner_digest}-{k}-{s}"} for s, a in enumerate(acc_by_seed)]


def test_gain_is_per_reasoner_when_a_grid_compares_reasoners(tmp_path):
    df = pd.DataFrame(_rows("icl", [0.70, 0.80]) + _rows("tart", [0.90, 0.90], "a" * 16)
                      + _rows("tart", [0.50, 0.50], "b" * 16))
    g = gains(df, "icl").set_index("tart")
    # paired per seed: (0.9-0.7 + 0.9-0.8)/2 and (0.5-0.7 + 0.5-0.8)/2, not their average
    assert abs(g.loc["tart@aaaaaaaa", "mean"] - 0.15) < 1e-9
    assert abs(g.loc["tart@bbbbbbbb", "mean"] + 0.25) < 1e-9
    assert set(g["count"]) == {2}
    md = report(df, tmp_path)["markdown"]
    assert "Average gain of tart@aaaaaaaa over icl: **+0.150**" in md
    assert "Average gain of tart@bbbbbbbb over icl: **-0.250**" in md


def test_gain_with_one_reasoner_is_labelled_tart(tmp_path):
    df = pd.DataFrame(_rows("lr_probe", [0.6, 0.8]) + _rows("tart", [0.75, 0.85], "a" * 16))
    g = gains(df, "lr_probe")
    assert list(g["tart"]) == ["tart"] and abs(g["mean"].iloc[0] - 0.1) < 1e-9
    assert gains(df, "icl").empty  # nothing to pair with
    assert "Average gain of tart over lr_probe: **+0.100**" in report(df, tmp_path)["markdown"]


def test_tasks_of_one_dataset_are_never_averaged_into_one_row(tmp_path):
    import json

    from pipeline.compare import dataset_labels, summarize

    def task(rows, **opts):
        return [dict(r, dataset_options=json.dumps({"test_size": 300, **opts}, sort_keys=True)) for r in rows]

    rows = (task(_rows("lr_probe", [0.9, 0.9]))  # the default pair: no class options
            + task([dict(r, cell_id=r["cell_id"] + "-autos") for r in _rows("lr_probe", [0.5, 0.5])],
                   positive_class="rec.autos", negative_class="rec.motorcycles"))
    df = pd.DataFrame(rows)
    labels = dataset_labels(df)
    assert set(labels) == {"sms_spam", "sms_spam[negative_class=rec.motorcycles,positive_class=rec.autos]"}
    s = summarize(df.assign(dataset=labels)).set_index("dataset")["mean"]
    assert s["sms_spam"] == 0.9 and s["sms_spam[negative_class=rec.motorcycles,positive_class=rec.autos]"] == 0.5
    # a grid-wide size option alone does not split a dataset (another test set, the same task)
    sizes = pd.DataFrame(task(_rows("lr_probe", [0.9]), ) + task(
        [dict(r, cell_id="x") for r in _rows("lr_probe", [0.9])], test_size=100))
    assert set(dataset_labels(sizes)) == {"sms_spam"}


# ----------------------------------------------------------------------------- the report of a real grid
# A small real grid without models: cells with made-up predictions, written as a grid writes them
# (`cell_row` -> per-cell Parquet files -> results.parquet), logged by `MlflowView` to a real sqlite
# MLflow store (one launch run, one run per series). Binary sms_spam and 3-class newsgroups; tart and
# two baselines; 3 seeds x 2 ks.

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

GRID_KS, GRID_SEEDS, N_TEST = (18, 32), (0, 1, 2), 40
TASKS = {  # dataset -> (options, classes)
    "sms_spam": ({"test_size": N_TEST, "train_size": 64}, 2),
    "newsgroups": ({"classes": ["comp.graphics", "rec.autos", "sci.space"], "test_size": 39, "train_size": 96}, 3),
}
GRID_METHODS = {"tart": 1.4, "lr_probe": 1.0, "lr_full": 0.6}  # method -> how well it separates the classes


def _probs(rng, y, C, sharp):
    """Predictions of a made-up method: logits = sharp x one-hot(truth) + noise, softmaxed."""
    logits = sharp * np.eye(C)[y] * 2 + rng.normal(0, 1, size=(len(y), C))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return p[:, 1] if C == 2 else p


@pytest.fixture(scope="module")
def real_grid(tmp_path_factory, mlflow_sqlite):
    from pipeline.grid.mlflow_view import MlflowView
    from pipeline.grid.results import cell_row, read_results, write_cell_result, write_results_table
    from pipeline.grid.spec import Cell, GridSpec

    root = tmp_path_factory.mktemp("report-grid")
    uri = mlflow_sqlite(root / "mlflow.db")
    spec = GridSpec(name="g", storage=str(root / "grids"), mlflow_uri=uri, experiment="tart-grid")
    rng = np.random.default_rng(0)
    rows, cells = [], []
    for ds, (opts, C) in TASKS.items():
        n = opts["test_size"]
        y = np.arange(n) % C
        for method, sharp in GRID_METHODS.items():
            for k in GRID_KS:
                for seed in GRID_SEEDS:
                    tart = method == "tart"
                    cell = Cell(ds, json.dumps(opts, sort_keys=True), "minilm-l6", "stream", method,
                                "default" if tart else "-", "a" * 16 if tart else "-", k, seed)
                    probs = _probs(rng, y, C, sharp * (1 + k / 64))
                    row = cell_row(cell, {"probs": probs, "labels": y, "ids": [f"t{i}" for i in range(n)],
                                          "runtime_s": 0.01}, spec.name)
                    write_cell_result(spec, row)
                    rows.append(row)
                    cells.append(cell)
    write_results_table(spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TART_MLFLOW_ARTIFACTS", str(root / "mlartifacts"))
        view = MlflowView(spec, "launch-1")
        view.expect(cells)
        for row in rows:
            view.log_cell(row)
        view.finish({"cells_run": len(rows)})
    return {"spec": spec, "uri": uri, "parent": view.parent_id, "table": read_results(spec), "root": root}


def _artifacts(uri, run_id):
    from mlflow.tracking import MlflowClient

    return sorted(a.path for a in MlflowClient(uri).list_artifacts(run_id, "compare"))


def test_reliability_bins_equal_a_hand_computation():
    from pipeline.figures import reliability, reliability_bins
    from pipeline.grid.results import cell_metrics

    # two binary cells, pooled: P(y=1) in 10 bins over [0, 1], [low, high) (0.5 opens the 6th bin)
    probs, labels = [[0.05, 0.15, 0.15, 0.95], [0.55, 0.5, 0.12]], [[0, 0, 1, 1], [0, 1, 1]]
    b = reliability_bins(probs, labels).set_index("bin")
    assert b["count"].tolist() == [1, 3, 0, 0, 0, 2, 0, 0, 0, 1]
    assert b.loc[1, "freq"] == pytest.approx(2 / 3) and b.loc[1, "mean_prob"] == pytest.approx((0.15 + 0.15 + 0.12) / 3)
    assert b.loc[5, "freq"] == 0.5 and b.loc[5, "mean_prob"] == pytest.approx(0.525)
    assert b.loc[0, "freq"] == 0 and b.loc[9, "freq"] == 1 and np.isnan(b.loc[2, "freq"])
    assert b.loc[0, "low"] == 0.0 and b.loc[9, "high"] == 1.0
    # 3 classes: the top-label confidence in 10 bins over [1/3, 1]; freq is the accuracy in a bin
    p3 = np.array([[0.9, 0.05, 0.05], [0.38, 0.37, 0.25], [0.2, 0.7, 0.1], [0.11, 0.11, 0.78], [0.34, 0.33, 0.33]])
    y3 = np.array([0, 1, 1, 0, 0])
    b3 = reliability_bins([p3.ravel()], [y3], 3)
    width = (1 - 1 / 3) / 10  # confidences 0.9, 0.38, 0.7, 0.78, 0.34 -> bins 8, 0, 5, 6, 0
    assert b3["low"].iloc[0] == pytest.approx(1 / 3) and b3["high"].iloc[-1] == 1.0
    assert b3["count"].tolist() == [2, 0, 0, 0, 0, 1, 1, 0, 1, 0]
    assert [int((c - 1 / 3) // width) for c in (0.9, 0.38, 0.7, 0.78, 0.34)] == [8, 0, 5, 6, 0]
    assert b3.loc[0, "freq"] == 0.5 and b3.loc[6, "freq"] == 0.0 and b3.loc[8, "freq"] == 1.0
    # C > 2: the diagram's bins are the ECE's, so the ECE read off the diagram is the cell's
    seen = b3[b3["count"] > 0]
    ece = float((seen["count"] / 5 * (seen["freq"] - seen["mean_prob"]).abs()).sum())
    assert ece == pytest.approx(cell_metrics(y3, p3)["ece"])
    # per method x k, pooled over seeds; the ECE shown is the tables' (mean of the cells')
    frame = pd.DataFrame([{"grid": "g", "dataset": "d", "backbone": "b", "method": "m", "k": 8, "seed": s,
                           "probs": p, "labels": y, "n_classes": 2, "ece": cell_metrics(y, p)["ece"]}
                          for s, (p, y) in enumerate(zip(probs, labels))])
    r = reliability(frame)
    assert r["count"].tolist() == b["count"].tolist() and set(r["x"]) == {"P(y=1)"}
    assert r["ece"].iloc[0] == pytest.approx(np.mean([cell_metrics(y, p)["ece"] for p, y in zip(probs, labels)]))


def _png_ok(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, path
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 300 and img[..., :3].std() > 0.05, path  # not blank


def test_compare_writes_the_report_and_replaces_it_on_the_grids_parent_run(real_grid, tmp_path):
    from pipeline.compare import main
    from pipeline.figures import figure_name

    uri, parent, table = real_grid["uri"], real_grid["parent"], real_grid["table"]
    out = tmp_path / "cmp"
    assert main([f"mlflow_uri={uri}", "grids=[g]", f"out={out}"]) == 0
    md = (out / "summary.md").read_text()
    # the rows came from the results table (per-query predictions): intervals over test examples
    assert "95% bootstrap interval over seeds x test examples" in md
    assert "Gain of tart over lr_full" in md and "Gain of tart over lr_probe" in md  # every registered baseline
    kinds = ("acc_vs_k", "metrics_vs_k", "acc_seeds", "acc_gain_vs_k", "reliability")
    for ds in TASKS:
        for kind in kinds:
            png = out / figure_name(kind, "g", ds, "minilm-l6")
            _png_ok(png)
            assert f"]({png.name})" in md  # the report links it
    assert "## Figures" in md and "P(y=1) in 10 equal bins over [0, 1]" in md and "5 equal bins over [0.5, 1]" in md

    # every metric has its intervals (AUC: only the two-class task), each containing its mean
    iv = pd.read_csv(out / "intervals.csv")
    assert set(iv["metric"]) == {"accuracy", "auc", "nll", "brier", "ece", "macro_f1"}
    assert set(iv[iv["metric"] == "auc"]["dataset"]) == {"sms_spam"}
    assert (iv["ci_low"] <= iv["mean"] + 1e-12).all() and (iv["mean"] <= iv["ci_high"] + 1e-12).all()
    assert set(iv[iv["metric"].isin(["accuracy", "nll", "brier"])]["ci_over"]) == {"seeds x examples"}

    # gains per k: paired over the 3 seeds, the point estimate inside its interval, equal to a hand mean
    gk = pd.read_csv(out / "acc_gain_by_k.csv")
    assert len(gk) == len(TASKS) * 2 * len(GRID_KS) and set(gk["count"]) == {3}
    assert (gk["ci_low"] <= gk["mean"]).all() and (gk["mean"] <= gk["ci_high"]).all()
    r = gk[(gk["dataset"] == "sms_spam") & (gk["baseline"] == "lr_full") & (gk["k"] == 18)].iloc[0]
    acc = table[(table["dataset"] == "sms_spam") & (table["k"] == 18)].set_index(["method", "seed"])["accuracy"]
    assert r["mean"] == pytest.approx(np.mean([acc["tart", s] - acc["lr_full", s] for s in GRID_SEEDS]))

    # reliability bins pooled over the seeds: every test prediction of a (method, k) counted once
    rel = pd.read_csv(out / "reliability.csv")
    counts = rel.groupby(["dataset", "method", "k"])["count"].sum()
    assert set(counts.loc["sms_spam"]) == {N_TEST * 3} and set(counts.loc["newsgroups"]) == {39 * 3}
    assert set(rel[rel["dataset"] == "newsgroups"]["x"]) == {"top-label confidence"}

    # the grid's parent run holds the report, exactly its files
    manifest = json.loads((out / "report.json").read_text())["files"]
    assert _artifacts(uri, parent) == sorted(f"compare/{n}" for n in manifest)
    assert "compare/summary.md" in _artifacts(uri, parent)

    # a second compare (another metric: other file names) replaces the report, here and on the run
    assert main([f"mlflow_uri={uri}", "grids=[g]", f"out={out}", "metric=nll"]) == 0
    again = json.loads((out / "report.json").read_text())["files"]
    assert not any(n.startswith("acc_") for n in again) and "nll_gain_by_k.csv" in again
    assert not list(out.glob("acc_*"))  # the first report's own files are gone from the folder too
    assert _artifacts(uri, parent) == sorted(f"compare/{n}" for n in again)  # replaced, nothing duplicated
    # log_grid=false: the report is written, the run is left as it was
    other = tmp_path / "other"
    assert main([f"mlflow_uri={uri}", "grids=[g]", f"out={other}", "log_grid=false", "dataset=sms_spam"]) == 0
    assert (other / "summary.md").exists() and not list(other.glob("*newsgroups*"))
    assert _artifacts(uri, parent) == sorted(f"compare/{n}" for n in again)


def test_compare_without_a_readable_results_table_falls_back_to_mlflow_metrics(real_grid, tmp_path):
    """The launch run names a storage this machine cannot read: MLflow's per-cell metrics still
    give every table and figure but the reliability diagrams (no per-query predictions)."""
    from pipeline.compare import load_runs, report, with_results_tables

    df = load_runs(real_grid["uri"], "tart-grid", ["g"])
    assert "probs" not in df
    rep = report(with_results_tables(df, {}), tmp_path)
    assert "interval over seeds" in rep["markdown"]
    names = {p.split("/")[-1].split("__")[0] for p in rep["plots"]}
    assert names == {"acc_vs_k", "metrics_vs_k", "acc_seeds", "acc_gain_vs_k"}


def test_several_grids_get_a_report_each_besides_the_side_by_side_one(tmp_path):
    from pipeline.compare import grid_reports, report

    df = pd.DataFrame(_rows("lr_probe", [0.6, 0.8]) + _rows("tart", [0.75, 0.85], "a" * 16))
    both = pd.concat([df, df.assign(grid="h", cell_id=df["cell_id"] + "-h")], ignore_index=True)
    assert "| dataset | backbone | method | k | g | h |" in report(both, tmp_path)["markdown"]
    folders = grid_reports(both, tmp_path)
    assert folders == {"g": tmp_path / "grids" / "g", "h": tmp_path / "grids" / "h"}
    for grid, folder in folders.items():
        md = (folder / "summary.md").read_text()
        assert f"| {grid} |" in md and f"({'h' if grid == 'g' else 'g'})" not in md
        assert {p.name.split("__")[1] for p in folder.glob("*.png")} == {grid}
    assert grid_reports(df, tmp_path) == {"g": tmp_path}  # one grid: the report in out= is its own
