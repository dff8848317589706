"""The figures of a `tart compare` report, one set per grid x dataset x backbone (PNG, Agg backend).

    metrics_vs_k__<grid>__<dataset>__<backbone>.png   every metric a cell records vs k, one panel
                                                      each, a line per method, 95% bootstrap bars
    reliability__<...>.png                            reliability diagrams: a panel per method x k,
                                                      the seeds pooled (RELIABILITY_BINNING)
    <metric>_gain_vs_k__<...>.png                     tart's paired gain over each baseline vs k
    <metric>_seeds__<...>.png                         each seed's value (a point) around the mean

(`<metric>` is `acc` for accuracy.) The numbers come from `pipeline.compare` (intervals, paired
gains) and from `reliability`, here, which bins the per-query probabilities of a results table.
File names are deterministic, so a re-run replaces its figures; each is written atomically
(`pipeline.storage.atomic_write_bytes`). Methods are whatever the frame holds (the registry
decides what a method is): colours follow the sorted method labels, the same in every figure.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .storage import atomic_write_bytes, resolve

BINS = 10
RELIABILITY_BINNING = (
    "Reliability diagrams pool the seeds of each method and k. Two classes: P(y=1) in 10 equal bins over "
    "[0, 1], the observed frequency of y=1 in a bin against the bin's mean P(y=1). C > 2 classes: the "
    "top-label confidence in 10 equal bins over [1/C, 1], the accuracy in a bin against its mean confidence. "
    "Grey bars: how many test predictions fall in each bin (the number on each).")
ECE_BINNING = ("ECE is over the predicted class's confidence: 5 equal bins over [0.5, 1] for two classes, "
               "10 over [1/C, 1] for C > 2 (each cell's; tables and legends show the mean over seeds)")
METRIC_NAMES = {"accuracy": "accuracy", "auc": "AUC", "nll": "NLL", "brier": "Brier", "ece": "ECE",
                "macro_f1": "macro-F1"}
FIGURE_METRICS = ("accuracy", "auc", "nll", "brier", "ece", "macro_f1")  # the panels' order
LOWER_IS_BETTER = ("nll", "brier", "ece")


# ----------------------------------------------------------------------------- numbers


def reliability_bins(probs: Sequence, labels: Sequence, n_classes: int = 2, bins: int = BINS) -> pd.DataFrame:
    """The reliability diagram of some cells' predictions, pooled: one row per bin (bin, low, high,
    count, mean_prob, freq; mean_prob and freq NaN for an empty bin). `probs`/`labels` are per cell,
    as a results table holds them (P(y=1) per query, or (q, C) flat for C > 2 classes).

    Two classes: x = P(y=1) binned over [0, 1], freq = the share of y = 1. C > 2: x = the top-label
    confidence binned over [1/C, 1], freq = the share predicted right. Bins are [low, high), the last
    one closed, as `pipeline.grid.results.cell_metrics` bins for ECE."""
    y = np.concatenate([np.asarray(v, dtype=np.int64) for v in labels])
    p = np.concatenate([np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0) for v in probs])
    if n_classes > 2:
        p = p.reshape(len(y), n_classes)
        x, hit, lo = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64), 1.0 / n_classes
    else:
        x, hit, lo = p, (y == 1).astype(np.float64), 0.0
    edges = np.linspace(lo, 1.0, bins + 1)
    idx = np.clip(np.digitize(x, edges[1:-1]), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(idx, weights=x, minlength=bins) / count
        freq = np.bincount(idx, weights=hit, minlength=bins) / count
    return pd.DataFrame({"bin": np.arange(bins), "low": edges[:-1], "high": edges[1:], "count": count,
                         "mean_prob": mean_prob, "freq": freq})


def reliability(df: pd.DataFrame) -> pd.DataFrame:
    """`reliability_bins` per grid x dataset x backbone x method x k of a frame holding predictions
    (a results table; `method` already labelled), with `ece`, the mean of the cells' ECE (what the
    tables show) and `x` ("P(y=1)" or "top-label confidence"). Empty without predictions."""
    if "probs" not in df or "labels" not in df:
        return pd.DataFrame()
    d = df[df["probs"].map(lambda v: isinstance(v, (list, tuple, np.ndarray)) and len(v) > 0)]
    out = []
    for (grid, ds, bb, method, k), rows in d.groupby(["grid", "dataset", "backbone", "method", "k"]):
        C = int(rows["n_classes"].iloc[0]) if "n_classes" in rows and pd.notna(rows["n_classes"].iloc[0]) else 2
        b = reliability_bins(rows["probs"].tolist(), rows["labels"].tolist(), C)
        ece = float(rows["ece"].mean()) if "ece" in rows else float("nan")
        out.append(b.assign(grid=grid, dataset=ds, backbone=bb, method=method, k=k, n_classes=C,
                            x="top-label confidence" if C > 2 else "P(y=1)", ece=ece, seeds=len(rows)))
    if not out:
        return pd.DataFrame()
    cols = ["grid", "dataset", "backbone", "method", "k", "n_classes", "x", "seeds", "ece"]
    r = pd.concat(out, ignore_index=True)
    return r[cols + [c for c in r.columns if c not in cols]]


# ----------------------------------------------------------------------------- files


def slug(text: str) -> str:
    """A file-name part: characters other than letters, digits and ._-=,+@[] become _ ."""
    return re.sub(r"[^A-Za-z0-9._=,+@\[\]-]", "_", str(text))


def figure_name(kind: str, grid: str, dataset: str, backbone: str) -> str:
    return f"{kind}__{slug(grid)}__{slug(dataset)}__{slug(backbone)}.png"


def metric_stem(metric: str) -> str:
    return "acc" if metric == "accuracy" else metric


def _pyplot():
    import matplotlib  # only to plot; the Agg backend must be chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 100) -> Path:
    """Render `fig` as PNG and write it atomically to `path`; closes the figure."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    fs, p = resolve(str(path))
    atomic_write_bytes(fs, p, buf.getvalue())
    return path


def colours(labels) -> dict[str, tuple]:
    """One colour per method label, by sorted label: the same method looks the same in every figure."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(set(labels)) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(sorted(set(labels)))}


def _k_axis(ax, ks) -> None:
    ks = sorted(int(k) for k in ks)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, labels=[str(k) for k in ks])
    ax.minorticks_off()


def _title(grid: str, ds: str, bb: str) -> str:
    return f"{ds} / {bb} ({grid})"


# ----------------------------------------------------------------------------- figures


def plot_metrics(summaries: dict[str, pd.DataFrame], out_dir: Path, colour: dict) -> list[tuple[tuple, Path]]:
    """Every metric vs k (`summaries`: metric -> `compare.summarize`'s frame), one PNG per grid x
    dataset x backbone, a panel per metric that any of its cells records."""
    plt = _pyplot()
    keys = sorted({key for s in summaries.values() for key in map(tuple, s[["grid", "dataset", "backbone"]].values)})
    paths = []
    for grid, ds, bb in keys:
        panels = []
        for m in FIGURE_METRICS:
            s = summaries.get(m)
            if s is None:
                continue
            g = s[(s["grid"] == grid) & (s["dataset"] == ds) & (s["backbone"] == bb)]
            if len(g) and g["mean"].notna().any():
                panels.append((m, g))
        if not panels:
            continue
        ncol = min(3, len(panels))
        nrow = math.ceil(len(panels) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.0 * ncol, 3.0 * nrow + 0.6), squeeze=False)
        for ax, (m, g) in zip(axes.ravel(), panels):
            for method, r in g.groupby("method"):
                r = r.sort_values("k")
                yerr = [r["mean"] - r["ci_low"], r["ci_high"] - r["mean"]]
                ax.errorbar(r["k"], r["mean"], yerr=yerr, marker="o", ms=4, capsize=3, label=method,
                            color=colour.get(method))
            _k_axis(ax, g["k"].unique())
            ax.set_title(METRIC_NAMES.get(m, m) + (" (lower is better)" if m in LOWER_IS_BETTER else ""), fontsize=9)
            ax.set_xlabel("k (context examples)", fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
        for ax in axes.ravel()[len(panels):]:
            ax.set_visible(False)
        handles, names = axes.ravel()[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=min(6, len(names)), fontsize=8, frameon=False)
        fig.suptitle(f"{_title(grid, ds, bb)}: mean over seeds, 95% bootstrap interval", fontsize=9)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1 + 0.05 / nrow, top=0.9 - 0.02 * nrow,
                            wspace=0.25, hspace=0.45)  # a fixed layout: tight_layout costs ~0.5 s a figure
        paths.append(((grid, ds, bb), save(fig, out_dir / figure_name("metrics_vs_k", grid, ds, bb))))
    return paths


def plot_reliability(rel: pd.DataFrame, out_dir: Path, colour: dict) -> list[tuple[tuple, Path]]:
    """Reliability diagrams (`reliability`'s frame): per grid x dataset x backbone, a panel per
    method (rows) x k (columns): observed frequency vs mean probability per bin, the diagonal, the
    bin counts as grey bars, the tables' ECE in the legend."""
    if rel.empty:
        return []
    plt = _pyplot()
    paths = []
    for (grid, ds, bb), g in rel.groupby(["grid", "dataset", "backbone"]):
        methods, ks = sorted(g["method"].unique()), sorted(g["k"].unique())
        fig, axes = plt.subplots(len(methods), len(ks), figsize=(2.7 * len(ks) + 0.4, 2.5 * len(methods) + 0.9),
                                 squeeze=False)
        for i, method in enumerate(methods):
            for j, k in enumerate(ks):
                ax = axes[i, j]
                b = g[(g["method"] == method) & (g["k"] == k)].sort_values("bin")
                if b.empty:
                    ax.set_visible(False)
                    continue
                lo = float(b["low"].iloc[0])
                # the bin counts: grey bars over the lowest quarter of the panel, each bin's count on it
                base = 0.0
                height = 0.25 * b["count"] / max(1, b["count"].max())
                mid = (b["low"] + b["high"]) / 2
                ax.bar(mid, height, width=(b["high"] - b["low"]) * 0.9, bottom=base, color="0.87", zorder=0)
                for x, h, n in zip(mid, height, b["count"]):
                    if n:
                        ax.text(x, base + h, str(int(n)), ha="center", va="bottom", fontsize=5, color="0.35")
                ax.plot([lo, 1], [lo, 1], ls="--", lw=0.8, color="0.4")
                seen = b[b["count"] > 0]
                ax.plot(seen["mean_prob"], seen["freq"], marker="o", ms=3.5, color=colour.get(method),
                        label=f"ECE {b['ece'].iloc[0]:.3f}")
                ax.set_xlim(lo, 1)
                ax.set_ylim(-0.02, 1.04)
                ax.legend(fontsize=7, loc="upper left", handlelength=1)
                ax.tick_params(labelsize=7)
                ax.set_title(f"{method}, k={k} ({int(b['seeds'].iloc[0])} seeds)", fontsize=8)
                if i == len(methods) - 1:
                    ax.set_xlabel(str(b["x"].iloc[0]), fontsize=8)
                if j == 0:
                    ax.set_ylabel("observed frequency" if int(b["n_classes"].iloc[0]) <= 2 else "accuracy", fontsize=8)
        fig.suptitle(f"{_title(grid, ds, bb)}: reliability, seeds pooled; ECE: the tables' "
                     f"(mean over seeds)", fontsize=9)
        fig.subplots_adjust(left=0.55 / fig.get_figwidth(), right=0.98, bottom=0.5 / fig.get_figheight(),
                            top=1 - 0.6 / fig.get_figheight(), wspace=0.3, hspace=0.55)
        paths.append(((grid, ds, bb), save(fig, out_dir / figure_name("reliability", grid, ds, bb), dpi=90)))
    return paths


def plot_gains(gk: pd.DataFrame, out_dir: Path, metric: str, colour: dict) -> list[tuple[tuple, Path]]:
    """tart's paired gain over each baseline vs k (`compare.gains_by_k`'s frame), with its 95%
    interval: one PNG per grid x dataset x backbone, a line per (tart variant, baseline)."""
    if gk.empty:
        return []
    plt = _pyplot()
    paths = []
    lower = metric in LOWER_IS_BETTER
    for (grid, ds, bb), g in gk.groupby(["grid", "dataset", "backbone"]):
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        pairs = sorted(map(tuple, g[["tart", "baseline"]].drop_duplicates().values))
        for n, (tart, base) in enumerate(pairs):
            r = g[(g["tart"] == tart) & (g["baseline"] == base)].sort_values("k")
            shift = 2 ** ((n - (len(pairs) - 1) / 2) * 0.03)  # side by side on the log axis
            ax.errorbar(r["k"] * shift, r["mean"], yerr=[r["mean"] - r["ci_low"], r["ci_high"] - r["mean"]],
                        marker="o", ms=4, capsize=3, label=f"{tart} - {base}", color=colour.get(base))
        ax.axhline(0.0, color="0.3", lw=0.8)
        _k_axis(ax, g["k"].unique())
        ax.set_xlabel("k (context examples)")
        name = METRIC_NAMES.get(metric, metric)
        ax.set_ylabel(f"{name} difference" + (" (< 0: tart better)" if lower else " (> 0: tart better)"), fontsize=8)
        ax.set_title(f"{_title(grid, ds, bb)}: tart vs each baseline, paired, 95% interval", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.14, top=0.9)
        path = out_dir / figure_name(f"{metric_stem(metric)}_gain_vs_k", grid, ds, bb)
        paths.append(((grid, ds, bb), save(fig, path)))
    return paths


def plot_seeds(df: pd.DataFrame, out_dir: Path, metric: str, colour: dict) -> list[tuple[tuple, Path]]:
    """Seed spread: each cell's `metric` (one point per seed) per method at each k, the mean over
    seeds as a bar across them; one PNG per grid x dataset x backbone (`method` already labelled)."""
    d = df[df[metric].notna()] if metric in df else df.iloc[0:0]
    if d.empty:
        return []
    plt = _pyplot()
    paths = []
    for (grid, ds, bb), g in d.groupby(["grid", "dataset", "backbone"]):
        methods, ks = sorted(g["method"].unique()), sorted(g["k"].unique())
        width = 0.8 / len(methods)
        fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(ks) * max(1, len(methods) / 3)), 3.6))
        for j, method in enumerate(methods):
            for i, k in enumerate(ks):
                v = g[(g["method"] == method) & (g["k"] == k)].sort_values("seed")[metric].to_numpy(dtype=float)
                if not len(v):
                    continue
                x = i + (j - (len(methods) - 1) / 2) * width
                spread = np.linspace(-0.25, 0.25, len(v)) * width if len(v) > 1 else np.zeros(1)
                ax.scatter(x + spread, v, s=12, color=colour.get(method), alpha=0.8,
                           label=method if i == 0 else None, zorder=3)
                ax.hlines(v.mean(), x - 0.4 * width, x + 0.4 * width, color=colour.get(method), lw=2, zorder=2)
        ax.set_xticks(range(len(ks)), labels=[str(k) for k in ks])
        ax.set_xlabel("k (context examples)")
        ax.set_ylabel(METRIC_NAMES.get(metric, metric) + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
        ax.set_title(f"{_title(grid, ds, bb)}: each seed (point) and the mean (bar)", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.14, top=0.9)
        paths.append(((grid, ds, bb), save(fig, out_dir / figure_name(f"{metric_stem(metric)}_seeds", grid, ds, bb))))
    return paths


def markdown(figures: list[tuple[tuple, Path]], metric: str) -> str:
    """The report's figures section: per grid x dataset x backbone, links to its PNGs (relative:
    the markdown lies next to them, in the output folder and in the MLflow run's artifacts)."""
    name = METRIC_NAMES.get(metric, metric)
    lines = ["## Figures", "",
             f"Per grid, dataset and backbone: every metric vs k; {name} of each seed; tart's paired {name} gain "
             "over each baseline vs k; reliability diagrams. Intervals are 95% bootstrap intervals (over seeds x "
             "test examples where the predictions are known and the metric is a mean over examples: accuracy, "
             "NLL, Brier; else over seeds).", "", RELIABILITY_BINNING + " " + ECE_BINNING + ".", ""]
    groups: dict[tuple, list[Path]] = {}
    for key, path in figures:
        groups.setdefault(tuple(key), []).append(path)
    for (grid, ds, bb), paths in sorted(groups.items()):
        lines += [f"### {_title(grid, ds, bb)}", ""]
        lines += [f"![{p.name.split('__')[0]}]({p.name})" for p in sorted(paths, key=lambda p: p.name)]
        lines.append("")
    return "\n".join(lines)
