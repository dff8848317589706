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
