"""Bootstrap intervals (`pipeline.uncertainty`): they cover the truth at their stated rate, pairing
narrows a difference's interval, and `tart compare` prints them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.uncertainty import correct_matrix, interval, pooled


def _cells(rng, acc, S=5, n=300, seed_sd=0.03):
    """(S, n) correctness: each seed (context set) has its own accuracy around `acc`."""
    per_seed = np.clip(acc + rng.normal(0, seed_sd, size=S), 0, 1)
    return (rng.random((S, n)) < per_seed[:, None]).astype(float)


def test_intervals_cover_the_true_mean_at_about_their_level():
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(200):
        ci = interval(_cells(rng, 0.8), seed=i)
        hits += ci.low <= 0.8 <= ci.high
    # 95% nominal; percentile bootstraps over 5 seeds run a little narrow, never wildly
    assert 0.85 <= hits / 200 <= 0.99, hits


def test_pairing_narrows_the_interval_of_a_difference():
    rng = np.random.default_rng(1)
    a = _cells(rng, 0.8)
    flip = rng.random(a.shape) < 0.05  # b is a with 5% of the answers changed: strongly correlated
    b = np.where(flip, 1 - a, a)
    paired = interval(a - b)
    unpaired = pooled([(a, 1.0)]).high - pooled([(a, 1.0)]).low + pooled([(b, 1.0)]).high - pooled([(b, 1.0)]).low
    assert paired.high - paired.low < 0.5 * unpaired
    assert paired.low <= (a - b).mean() <= paired.high


def test_intervals_are_reproducible_and_say_what_they_resampled():
    rng = np.random.default_rng(2)
    m = _cells(rng, 0.7)
    assert interval(m) == interval(m)
    assert interval(m).level == "seeds x examples"
    assert interval(m.mean(axis=1)).level == "seeds"
    assert correct_matrix([[0.9, 0.2], [0.4, 0.6]], [[1, 0], [1, 1]]).tolist() == [[1, 1], [0, 1]]
    assert correct_matrix([[0.9], [0.4, 0.6]], [[1], [1, 1]]) is None  # test sets of different sizes


def test_compare_reports_intervals_for_accuracies_and_paired_gains(tmp_path):
    from pipeline.compare import report

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, size=200)
    rows = []
    for seed in range(5):
        for method, noise in (("lr_probe", 0.3), ("tart", 0.25)):
            p = np.clip(truth + rng.normal(0, noise, 200) * np.where(truth, -1, 1), 0, 1)
            correct = ((p >= 0.5) == truth).mean()
            rows.append({"grid": "g", "dataset": "toy", "backbone": "b", "protocol": "stream", "method": method,
                         "reasoner_digest": "a" * 16 if method == "tart" else "-", "k": 18, "seed": seed,
                         "accuracy": correct, "cell_id": f"{method}{seed}", "probs": p.tolist(),
                         "labels": truth.tolist()})
    md = report(pd.DataFrame(rows), tmp_path)["markdown"]
    assert "95% bootstrap interval over seeds x test examples" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("Average gain of tart over lr_probe"))
    low, high = (float(x) for x in line.split("[")[1].rstrip("])").split(","))
    gain = float(line.split("**")[1])
    assert low < gain < high and gain > 0
    row = next(ln for ln in md.splitlines() if ln.startswith("| tart | g | toy |"))
    wins, ties, losses = (int(x) for x in row.rstrip(" |").split("|")[-1].split("/"))
    assert wins + ties + losses == 5 and wins > losses


def test_compare_any_metric_with_lower_is_better_wins(tmp_path):
    from pipeline.compare import CompareError, main, report

    rows = []
    for seed in range(4):
        for method, nll, acc in (("lr_probe", 0.50, 0.80), ("tart", 0.40, 0.78)):
            rows.append({"grid": "g", "dataset": "toy", "backbone": "b", "protocol": "stream", "method": method,
                         "reasoner_digest": "a" * 16 if method == "tart" else "-", "k": 18, "seed": seed,
                         "accuracy": acc + 0.01 * seed, "nll": nll + 0.01 * seed, "cell_id": f"{method}{seed}"})
    df = pd.DataFrame(rows)
    md = report(df, tmp_path, "nll")["markdown"]
    assert "## nll (lower is better)" in md and "Difference in nll (lower is better) of tart over lr_probe" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| tart | g | toy |"))
    assert "-0.100" in row and row.rstrip(" |").endswith("4 / 0 / 0")  # lower NLL in every cell: 4 wins
    assert list(tmp_path.glob("nll_vs_k__*.png"))
    with pytest.raises(CompareError, match="no cell records 'auc'"):
        report(df, tmp_path, "auc")
    assert main(["metric=f1"]) == 2


def test_per_example_values_average_to_the_cells_metrics():
    """NLL and Brier intervals resample per-example values: each cell's row must average to its metric."""
    from pipeline.grid.results import cell_metrics
    from pipeline.uncertainty import example_matrix

    rng = np.random.default_rng(4)
    y2, y4 = rng.integers(0, 2, 50), rng.integers(0, 4, 50)
    p2 = [rng.random(50) for _ in range(3)]
    p4 = [rng.dirichlet(np.ones(4), 50) for _ in range(3)]
    for metric in ("accuracy", "nll", "brier"):
        m2 = example_matrix(p2, [y2] * 3, None, metric)
        m4 = example_matrix([p.ravel() for p in p4], [y4] * 3, [4] * 3, metric)
        assert m2.shape == m4.shape == (3, 50)
        assert m2.mean(axis=1) == pytest.approx([cell_metrics(y2, p)[metric] for p in p2])
        assert m4.mean(axis=1) == pytest.approx([cell_metrics(y4, p)[metric] for p in p4])
    assert example_matrix(p2, [y2] * 3, None, "auc") is None  # not a mean over examples
