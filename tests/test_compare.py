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
