"""Stage 5: MLflow runs (or a grid's results table) become tables and plots.

    tart compare                                  # every grid in the default experiment
    tart compare grids=[default,nightly]          # two grids side by side
    tart compare dataset=sms_spam backbone=smollm2-135m out=reports/

Outputs (`report`), into `out` and, by default, logged as the artifacts `compare/` of each grid's
parent run (its latest launch; a re-run replaces them): summary.md, a markdown table of mean
accuracy with its 95% bootstrap interval per dataset x backbone x method x k (one column per grid
when several are compared), the gain of tart over each baseline (every registered method without a
reasoner), paired on each seed's context and test set, with its interval and wins/ties/losses
(`pipeline.uncertainty`: seeds x test examples from a results table, seeds only from MLflow runs),
every metric's means, then the figures; CSV files (std, every metric's intervals, gains per k,
reliability bins); PNG figures per grid x dataset x backbone (`pipeline.figures`): the metric vs k,
every metric vs k, the seed spread, tart's paired gain over each baseline vs k and reliability
diagrams. A grid's rows come from its results table when its launch run names one this machine
reads (each query's probabilities: what intervals over examples and reliability diagrams need).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from . import figures
from .config import ConfigError, defaults_epilog, load_config, stage_parser
from .methods import TEXTS, known_methods, table_label
from .storage import atomic_write_bytes, join, resolve
from .uncertainty import PER_EXAMPLE, Interval, example_matrix, interval, pooled
from .tracking import (KIND_CELL, KIND_COMPARE, KIND_LAUNCH, QUALITY_METRICS, TAG_CELLS, TAG_GRID, TAG_KIND, connect,
                       decode_cells, experiment_url, flat_metric, resolve_tracking_uri, tag_filter)

logger = logging.getLogger(__name__)

KEYS = ["dataset", "backbone", "method", "k"]
ARTIFACT_PATH = "compare"  # where a report lies in an MLflow run's artifacts
MANIFEST = "report.json"  # the files the last report wrote into its folder (a re-run removes the stale ones)


def baselines(df: pd.DataFrame) -> list[str]:
    """What the reasoner methods' gains are reported against: every registered method of the frame
    that runs without a reasoner (the registry decides, not a list of names), in registry order."""
    present = set(df["method"]) if "method" in df else set()
    return [m for m in known_methods(needs_reasoner=False) if m in present]


class CompareError(ValueError):
    pass


def load_runs(mlflow_uri: Optional[str] = None, experiment: str = "tart-grid", grids: Optional[list[str]] = None,
              dataset: Optional[str] = None, backbone: Optional[str] = None,
              results_tables: bool = False) -> pd.DataFrame:
    """Cell runs from MLflow as a flat frame (one row per cell). `results_tables`: a grid whose
    results table its latest launch run names (param `storage`) and this machine can read gets its
    rows from there instead, per-query predictions included (`with_results_tables`)."""
    uri = connect(mlflow_uri)
    import mlflow  # imported by connect (~4 s), which checks the store first

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise CompareError(f"MLflow experiment {experiment!r} not found at {uri}")
    filt = [tag_filter(TAG_KIND, KIND_CELL)]
    if grids and len(grids) == 1:
        filt.append(tag_filter(TAG_GRID, grids[0]))
    if dataset:
        filt.append(f"params.dataset = '{dataset}'")
    if backbone:
        filt.append(f"params.backbone = '{backbone}'")
    runs = mlflow.search_runs([exp.experiment_id], filter_string=" and ".join(filt), max_results=100000)
    if runs.empty:
        return pd.DataFrame()
    rows = []  # a run holds a series: one row per cell it lists (TAG_CELLS), its metrics the flat <m>_k<k>
    for run in runs.to_dict("records"):
        for cell_id, k in decode_cells(run.get(f"tags.{TAG_CELLS}")).items():
            rows.append({
                "grid": run.get(f"tags.{TAG_GRID}"), "cell_id": cell_id,
                **{c: run.get(f"params.{c}") for c in ("dataset", "dataset_options", "backbone", "protocol", "method",
                                                       "reasoner", "reasoner_digest")},
                "k": k, "seed": int(run["params.seed"]),
                **{m: run.get(f"metrics.{flat_metric(m, k)}", np.nan) for m in QUALITY_METRICS},
            })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if grids:
        df = df[df["grid"].isin(grids)]
    df = df.drop_duplicates("cell_id")
    if results_tables:
        df = with_results_tables(df, grid_launches(exp.experiment_id, sorted(df["grid"].dropna().unique())),
                                 dataset, backbone)
    return df.assign(dataset=dataset_labels(df))


def grid_launches(experiment_id: str, grids: list[str]) -> dict[str, Any]:
    """Per grid, its parent run: the latest launch run (tags TAG_GRID = the grid, TAG_KIND =
    KIND_LAUNCH), which holds the grid's params and gets its report. A grid without one is left out."""
    import mlflow  # set up by connect

    out = {}
    for grid in grids:
        launch = f"{tag_filter(TAG_GRID, grid)} and {tag_filter(TAG_KIND, KIND_LAUNCH)}"
        runs = mlflow.search_runs([experiment_id], launch,
                                  order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        if runs:
            out[grid] = runs[0]
    return out


def with_results_tables(df: pd.DataFrame, launches: dict[str, Any], dataset: Optional[str] = None,
                        backbone: Optional[str] = None) -> pd.DataFrame:
    """`df` (cells read back from MLflow) with each grid's rows replaced by its results table where
    its launch run names one that can be read here (the table is the source of truth, and holds each
    query's probabilities: intervals over test examples, reliability diagrams). Else the MLflow rows
    stay (intervals over seeds, no reliability diagrams), and the log says why."""
    from .grid.results import read_results
    from .grid.spec import GridSpec

    frames = []
    for grid, rows in df.groupby("grid", sort=True):
        run = launches.get(grid)
        storage = run.data.params.get("storage") if run is not None else None
        table = pd.DataFrame()
        if storage:
            try:
                table = read_results(GridSpec(name=str(grid), storage=storage))
            except Exception as e:  # noqa: BLE001 - unreachable storage: MLflow's metrics still compare
                logger.warning(f"[compare] grid {grid!r}: cannot read its results table under {storage!r} "
                               f"({type(e).__name__}: {e}); using the metrics in MLflow")
        if len(table):
            table = table.assign(grid=grid)
            if dataset:
                table = table[table["dataset"] == dataset]
            if backbone:
                table = table[table["backbone"] == backbone]
            logger.info(f"[compare] grid {grid!r}: {len(table)} cells from its results table under {storage!r}")
            frames.append(table)
        else:
            logger.info(f"[compare] grid {grid!r}: no results table here (storage {storage!r}); MLflow's metrics "
                        f"only: intervals over seeds, no reliability diagrams")
            frames.append(rows)
    return pd.concat(frames, ignore_index=True) if frames else df


SIZE_OPTIONS = ("test_size", "train_size")  # set grid-wide: they make another test set, not another task


def dataset_labels(df: pd.DataFrame) -> pd.Series:
    """Per row, the dataset as tables name it: its name, plus the options that tell apart the tasks
    of one dataset in the frame (e.g. two newsgroups pairs: `newsgroups[positive_class=rec.autos]`),
    so that different tasks are never averaged into one row."""
    if "dataset_options" not in df:
        return df["dataset"]

    def task_options(raw: Any) -> dict:
        try:
            opts = json.loads(raw) if isinstance(raw, str) and raw else {}
        except json.JSONDecodeError:
            opts = {}
        return {k: v for k, v in opts.items() if k not in SIZE_OPTIONS}

    opts = df["dataset_options"].map(task_options)
    labels = df["dataset"].astype(str).copy()
    for name in labels.unique():
        rows = labels == name
        seen = opts[rows]
        keys = sorted({k for o in seen for k in o})
        differing = [k for k in keys if len({json.dumps(o.get(k), sort_keys=True) for o in seen}) > 1]
        if differing:  # the dataset's defaults (no such option) keep the plain name
            parts = [[f"{k}={o[k]}" for k in differing if o.get(k) is not None] for o in seen]
            labels[rows] = [f"{name}[{','.join(p)}]" if p else name for p in parts]
    return labels


REGISTRY_PREFIX = "models:/"  # a registry reasoner's cells record models:/NAME/VERSION


def _reasoner_names(df: pd.DataFrame) -> pd.Series:
    """Per row, how its reasoner is named in labels: NAME/VERSION for a registry version (any row of
    that digest), else the first 8 hex of the weights digest."""
    digest = df["reasoner_digest"].astype(str)
    names = dict.fromkeys(digest.unique())
    if "reasoner" in df:
        for d, ref in zip(digest, df["reasoner"].astype(str)):
            if names[d] is None and ref.startswith(REGISTRY_PREFIX):
                names[d] = ref[len(REGISTRY_PREFIX):]
    return digest.map(lambda d: names[d] or d[:8])


def _label(df: pd.DataFrame) -> pd.Series:
    """Method label; runs of a reasoner method (tart) with different reasoners get the reasoner
    appended (its registry NAME/VERSION, else its weights digest), and embedding methods their
    protocol when the grid has several."""
    lab = df["method"].astype(str)
    reasoned = df["method"].isin(known_methods(needs_reasoner=True))
    if "reasoner_digest" in df and df.loc[reasoned, "reasoner_digest"].nunique() > 1:
        lab = lab.where(~reasoned, lab + "@" + _reasoner_names(df))
    proto = df.get("protocol")
    own_protocol = df["method"].isin(known_methods(runs_on=TEXTS))  # icl: always "prompt"
    if proto is not None and proto[~own_protocol].nunique() > 1:
        lab = lab.where(own_protocol, lab + "/" + proto.astype(str))
    return lab


LOWER_IS_BETTER = ("nll", "brier", "ece")


def _has_values(v: Any) -> bool:
    """Whether a results-table cell holds a list of values (rows read back from MLflow hold NaN)."""
    return isinstance(v, (list, tuple, np.ndarray)) and len(v) > 0


def _values(rows: pd.DataFrame, metric: str = "accuracy") -> np.ndarray:
    """What a bootstrap resamples for these cells (one per seed): their per-example values (S, n)
    when the metric is a mean over the test examples (accuracy, NLL, Brier: `PER_EXAMPLE`) and the
    frame holds predictions (a results table), else the cells' values of the metric (S,)."""
    rows = rows.sort_values("seed")
    if metric in PER_EXAMPLE and "probs" in rows and "labels" in rows and rows["probs"].map(_has_values).all():
        m = example_matrix(rows["probs"].tolist(), rows["labels"].tolist(),
                           rows["n_classes"].tolist() if "n_classes" in rows else None, metric)
        if m is not None:
            return m
    return rows[metric].to_numpy(dtype=np.float64)


def summarize(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Mean, std over seeds and a 95% bootstrap interval (for accuracy: seeds x test examples where
    the predictions are known; else seeds) of `metric` per grid x dataset x backbone x method x k."""
    if df.empty:
        raise CompareError("no results to compare (no cell runs matched the filters)")
    d = df.assign(method=_label(df))
    d = d[d[metric].notna()]
    out = []
    for key, rows in d.groupby(["grid", *KEYS]):
        ci = interval(_values(rows, metric))
        out.append(dict(zip(["grid", *KEYS], key), mean=rows[metric].mean(), std=rows[metric].std(),
                        count=len(rows), ci_low=ci.low, ci_high=ci.high, ci_over=ci.level))
    out = pd.DataFrame(out)
    out["std"] = out["std"].fillna(0.0)
    return out


def gains(df: pd.DataFrame, ref: str, metric: str = "accuracy") -> pd.DataFrame:
    """Mean accuracy gain of tart (each reasoner method) over `ref`, paired on (grid, dataset, backbone, k, seed).

    One row per tart variant (`tart`, or `tart@<digest>` when the grid compares reasoners):
    averaging two reasoners' accuracies into one "tart" would report neither.
    """
    out = []
    for label, _, g in _paired(df, ref, metric):
        out.append(g.assign(tart=label))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _paired(df: pd.DataFrame, ref: str, metric: str = "accuracy"):
    """Per tart variant: (label, the paired differences per (grid, dataset, backbone) as bootstrap
    values, the gains frame with mean, count and its 95% interval)."""
    pair = ["grid", "dataset", "backbone", "k", "seed"]
    d = df.assign(label=_label(df))
    base = d[d["method"] == ref].drop_duplicates(pair).set_index(pair)
    for label, t_rows in d[d["method"].isin(known_methods(needs_reasoner=True))].groupby("label"):
        t = t_rows.drop_duplicates(pair).set_index(pair)
        common = t.index.intersection(base.index)
        if common.empty:
            continue
        rows, diffs = [], []
        for group, idx in pd.Series(range(len(common)), index=common).groupby(level=[0, 1, 2]):
            keys = common[idx.to_numpy()]
            per_k = []
            for k in sorted({key[3] for key in keys}):
                ks = [key for key in keys if key[3] == k]
                a, b = _values(t.loc[ks].reset_index(), metric), _values(base.loc[ks].reset_index(), metric)
                per_k.append(a - b if a.shape == b.shape else
                             t.loc[ks, metric].to_numpy() - base.loc[ks, metric].to_numpy())
            same = len({v.shape for v in per_k}) == 1 and per_k[0].ndim == 2
            values = np.stack(per_k) if same else np.concatenate([v.mean(axis=-1) if v.ndim == 2 else v for v in per_k])
            ci = interval(values)
            per_cell = np.array([t.loc[key, metric] - base.loc[key, metric] for key in keys])  # tart - ref
            better = -per_cell if metric in LOWER_IS_BETTER else per_cell  # > 0: tart wins the cell
            rows.append(dict(grid=group[0], dataset=group[1], backbone=group[2], mean=float(per_cell.mean()),
                             count=len(keys), ci_low=ci.low, ci_high=ci.high, ci_over=ci.level,
                             wins=int((better > 0).sum()), ties=int((better == 0).sum()),
                             losses=int((better < 0).sum())))
            diffs.append((values, len(keys)))
        yield label, diffs, pd.DataFrame(rows)


def average_gains(df: pd.DataFrame, ref: str, metric: str = "accuracy") -> dict[str, Interval]:
    """Per tart variant, its average gain over `ref` across every paired cell, with a stratified
    bootstrap interval (each dataset x backbone resampled on its own, weighted by its cells)."""
    return {label: pooled(diffs) for label, diffs, _ in _paired(df, ref, metric)}


def gains_by_k(df: pd.DataFrame, ref: str, metric: str = "accuracy") -> pd.DataFrame:
    """tart's (each reasoner method's) difference in `metric` over `ref` per grid x dataset x
    backbone x k, paired on each seed's context and test set: mean over the paired cells and its
    95% bootstrap interval (seeds x test examples where `_values` has per-example values, else
    seeds). One row per tart variant x k; columns tart, baseline, grid, dataset, backbone, k, mean,
    count, ci_low, ci_high, ci_over."""
    pair = ["grid", "dataset", "backbone", "k", "seed"]
    d = df[df[metric].notna()].assign(label=_label(df[df[metric].notna()]))
    base = d[d["method"] == ref].drop_duplicates(pair).set_index(pair)
    out = []
    for label, t_rows in d[d["method"].isin(known_methods(needs_reasoner=True))].groupby("label"):
        t = t_rows.drop_duplicates(pair).set_index(pair)
        common = t.index.intersection(base.index)
        for key, idx in pd.Series(range(len(common)), index=common).groupby(level=[0, 1, 2, 3]):
            keys = common[idx.to_numpy()]
            a, b = _values(t.loc[keys].reset_index(), metric), _values(base.loc[keys].reset_index(), metric)
            per_cell = (t.loc[keys, metric].to_numpy(dtype=np.float64)
                        - base.loc[keys, metric].to_numpy(dtype=np.float64))
            ci = interval(a - b if a.shape == b.shape else per_cell)
            out.append(dict(tart=label, baseline=ref, **dict(zip(pair[:4], key)), mean=float(per_cell.mean()),
                            count=len(keys), ci_low=ci.low, ci_high=ci.high, ci_over=ci.level))
    return pd.DataFrame(out)


def markdown_table(summary: pd.DataFrame) -> str:
    grids = sorted(summary["grid"].unique())
    cell = summary.assign(v=[f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in
                             zip(summary["mean"], summary["ci_low"], summary["ci_high"])])
    wide = cell.pivot_table(index=KEYS, columns="grid", values="v", aggfunc="first").reset_index()
    wide["method"] = wide["method"].map(table_label)  # a tuned method (setfit) is marked
    cols = KEYS + grids
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in wide.iterrows():
        lines.append("| " + " | ".join(str(row.get(c, "")) if pd.notna(row.get(c, "")) else "" for c in cols) + " |")
    return "\n".join(lines)


def metric_means(df: pd.DataFrame) -> pd.DataFrame:
    """Every quality metric a cell records (accuracy, macro-F1, AUC, NLL, Brier, ECE), mean over seeds,
    per grid x dataset x backbone x method x k (a metric no cell of a row has stays empty)."""
    d = df.assign(method=_label(df))
    cols = [m for m in QUALITY_METRICS if m in d]
    return d.groupby(["grid", *KEYS])[cols].mean().reset_index()


def metrics_markdown(means: pd.DataFrame) -> str:
    cols = [m for m in QUALITY_METRICS if m in means]
    head = ["grid", *KEYS, *cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    means = means.assign(method=means["method"].map(table_label))  # a tuned method (setfit) is marked
    for _, r in means.iterrows():
        vals = [f"{r[m]:.3f}" if pd.notna(r[m]) else "" for m in cols]
        lines.append("| " + " | ".join([str(r["grid"]), *(str(r[k]) for k in KEYS), *vals]) + " |")
    return "\n".join(lines)


def plot(summary: pd.DataFrame, out_dir: Path, metric: str = "accuracy",
         colour: Optional[dict] = None) -> list[tuple[tuple, Path]]:
    """`metric` vs k with 95% intervals, one PNG per grid x dataset x backbone, one line per method;
    returns ((grid, dataset, backbone), path) pairs."""
    plt = figures._pyplot()
    colour = colour or figures.colours(summary["method"])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (grid, ds, bb), g in summary.groupby(["grid", "dataset", "backbone"]):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method, m in g.groupby("method"):
            m = m.sort_values("k")
            yerr = [m["mean"] - m["ci_low"], m["ci_high"] - m["mean"]]  # the 95% bootstrap interval
            ax.errorbar(m["k"], m["mean"], yerr=yerr, marker="o", capsize=3, label=method, color=colour.get(method))
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(g["k"].unique()), labels=[str(k) for k in sorted(g["k"].unique())])
        ax.set_xlabel("k (context examples)")
        ax.set_ylabel(metric)
        ax.set_title(f"{ds} / {bb} ({grid})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.14, top=0.9)
        path = out_dir / figures.figure_name(f"{figures.metric_stem(metric)}_vs_k", grid, ds, bb)
        paths.append(((grid, ds, bb), figures.save(fig, path, dpi=110)))
    return paths


def _write(path: Path, data: bytes) -> None:
    fs, p = resolve(str(path))
    atomic_write_bytes(fs, p, data)


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def report(df: pd.DataFrame, out_dir: Path, metric: str = "accuracy") -> dict:
    """Write the report of `df` into `out_dir`: summary.md (the tables, then the figures), CSVs
    (summary, every metric's intervals, gains, gains per k, reliability bins) and the PNGs
    (`pipeline.figures`), each atomically; files an earlier report wrote there and this one does
    not are removed. `metric` (any of QUALITY_METRICS) is the one the tables, gains and seed
    spread show. Returns the paths (`files`: everything written), the markdown and the brief."""
    if metric not in QUALITY_METRICS:
        raise CompareError(f"metric={metric!r}: expected one of {', '.join(QUALITY_METRICS)}")
    if metric not in df or df[metric].isna().all():
        raise CompareError(f"no cell records {metric!r} (runs from before it was computed, or AUC of multi-class cells)")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(df, metric)
    over = "seeds x test examples" if (summary["ci_over"] == "seeds x examples").all() else "seeds"
    better = " (lower is better)" if metric in LOWER_IS_BETTER else ""
    name = "Accuracy" if metric == "accuracy" else metric
    md = [f"## {name}{better} (mean [95% bootstrap interval over {over}])", "", markdown_table(summary), ""]
    files = {}
    by_k = []
    for ref in baselines(df):
        g = gains(df, ref, metric)
        if not g.empty:
            what = "Gain" if metric == "accuracy" else f"Difference in {metric}{better}"
            md += [f"## {what} of tart over {ref} (paired on each seed's context and test set; 95% bootstrap interval)",
                   "", "| tart | grid | dataset | backbone | gain | 95% interval | cells | wins / ties / losses |",
                   "|---|---|---|---|---|---|---|---|"]
            md += [f"| {r.tart} | {r.grid} | {r.dataset} | {r.backbone} | {r['mean']:+.3f} | "
                   f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['count']} | {r.wins} / {r.ties} / {r.losses} |"
                   for _, r in g.iterrows()]
            md.append("")
            for label, ci in average_gains(df, ref, metric).items():
                md.append(f"Average {'gain' if metric == 'accuracy' else metric + ' difference'} of {label} over {ref}: "
                          f"**{ci.mean:+.3f}** "
                          f"(95% interval [{ci.low:+.3f}, {ci.high:+.3f}])")
            md.append("")
            files[f"gain_vs_{ref}.csv"] = g
            by_k.append(gains_by_k(df, ref, metric))
    brief = "\n".join(md)  # what a console shows; summary.md has every metric too
    means = metric_means(df)
    md += [f"## Every metric (mean over seeds; NLL, Brier and ECE: lower is better; AUC for two classes; "
           f"{figures.ECE_BINNING})", "", metrics_markdown(means), ""]
    files["metrics.csv"] = means
    text = "\n".join(md)

    # the figures: every metric's intervals, gains per k, reliability bins, seed spread
    labelled = df.assign(method=_label(df))
    colour = figures.colours(labelled["method"])
    summaries = {m: (summary if m == metric else summarize(df, m)) for m in figures.FIGURE_METRICS
                 if m in df and df[m].notna().any()}
    gk = pd.concat(by_k, ignore_index=True) if by_k else pd.DataFrame()
    rel = figures.reliability(labelled)
    files["intervals.csv"] = pd.concat([s.assign(metric=m) for m, s in summaries.items()], ignore_index=True)
    files[f"{figures.metric_stem(metric)}_gain_by_k.csv"] = gk
    if not rel.empty:
        files["reliability.csv"] = rel
    figs = (plot(summary, out_dir, metric, colour) + figures.plot_metrics(summaries, out_dir, colour)
            + figures.plot_seeds(labelled, out_dir, metric, colour) + figures.plot_gains(gk, out_dir, metric, colour)
            + figures.plot_reliability(rel, out_dir, colour))
    full = text + "\n" + figures.markdown(figs, metric) + "\n"

    written = [out_dir / "summary.md", out_dir / "summary.csv", *(out_dir / n for n in files), *(p for _, p in figs)]
    _write(out_dir / "summary.md", full.encode())
    _write(out_dir / "summary.csv", _csv(summary))
    for fname, frame in files.items():
        _write(out_dir / fname, _csv(frame))
    _replace_manifest(out_dir, written)
    return {"markdown": text, "brief": brief, "dir": str(out_dir), "plots": [str(p) for _, p in figs],
            "files": [str(p) for p in written]}


def _replace_manifest(out_dir: Path, written: list[Path]) -> None:
    """Record what this report wrote; remove what the previous one wrote and this one did not."""
    names = sorted({p.name for p in written})
    try:
        before = json.loads((out_dir / MANIFEST).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        before = []
    for stale in set(before) - set(names):
        if "/" not in stale and stale != MANIFEST:
            (out_dir / stale).unlink(missing_ok=True)
    _write(out_dir / MANIFEST, (json.dumps({"files": names}, indent=1) + "\n").encode())


def report_files(out_dir: Path) -> list[Path]:
    """The files of the report in `out_dir` (its manifest's; without one, every file there)."""
    try:
        names = json.loads((out_dir / MANIFEST).read_text())["files"]
        return [out_dir / n for n in names if (out_dir / n).is_file()]
    except (OSError, ValueError, KeyError, TypeError):
        return sorted(p for p in out_dir.iterdir() if p.is_file())


def log_artifacts(run_id: str, out_dir: Path, mlflow_uri: Optional[str] = None) -> int:
    """Log the report in `out_dir` as the run's `compare/` artifacts, replacing (not adding to) what
    an earlier compare logged there; returns how many files were logged."""
    from mlflow.tracking import MlflowClient  # ~4 s to import: only when there is a run to log to

    uri = resolve_tracking_uri(mlflow_uri)
    client = MlflowClient(uri)
    if client.list_artifacts(run_id, ARTIFACT_PATH):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            get_artifact_repository(client.get_run(run_id).info.artifact_uri, tracking_uri=uri).delete_artifacts(
                ARTIFACT_PATH)
        except Exception as e:  # noqa: BLE001 - a store that cannot delete: same-named files are still replaced
            logger.warning(f"[compare] WARNING: could not remove the earlier {ARTIFACT_PATH}/ artifacts of run "
                           f"{run_id} ({type(e).__name__}: {e}); files of the same name are overwritten")
    files = report_files(out_dir)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_PATH)
    return len(files)


def compare_from_table(table: pd.DataFrame, spec: Any, summary: dict) -> dict:
    """End of `tart grid`: compare a grid's results table (`pipeline.grid.read_results`), log the
    outputs to the grid's parent run; returns `report`'s dict plus `text`, what to print.

    `spec` is the grid's (name, storage, experiment); `summary` what `run_grid` returned.
    """
    df = table.assign(grid=spec.name)
    df = df.assign(dataset=dataset_labels(df))
    local = "://" not in spec.storage or spec.storage.startswith("file://")
    out_dir = Path(join(join(spec.storage, spec.name), "compare")) if local else Path("tart_runs/compare") / spec.name
    rep = report(df, out_dir)
    if summary.get("parent_run_id"):
        try:
            log_artifacts(summary["parent_run_id"], out_dir, summary.get("mlflow_uri"))
        except Exception as e:  # noqa: BLE001
            logger.warning(f"[compare] WARNING: could not log artifacts to MLflow ({e})")
    lines = [rep["brief"], f"\nthe report (every metric: macro-F1, AUC, NLL, Brier, ECE; figures; tables): "
                           f"{(out_dir / 'summary.md').resolve()}"]
    if summary.get("mlflow_uri"):
        uri, exp_id = summary["mlflow_uri"], summary.get("experiment_id")
        if uri.startswith("sqlite"):
            ui = f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1"
            ui += f", then open {experiment_url('http://127.0.0.1:5000', exp_id)}" if exp_id else ""
        else:
            ui = experiment_url(uri, exp_id) if exp_id else uri
        lines.append(f"MLflow: {ui}  (experiment {spec.experiment!r}, parent run {summary['parent_run_id']})")
    return {**rep, "text": "\n".join(lines)}


def grid_reports(df: pd.DataFrame, out_dir: Path, metric: str = "accuracy") -> dict[str, Path]:
    """Per grid, the folder of its own report: `out_dir` itself (written by `report`) when the frame
    holds one grid; with several, `out_dir/grids/<grid>/`, written here (a grid without `metric`
    gets none)."""
    grids = sorted(df["grid"].dropna().unique())
    if len(grids) == 1:
        return {grids[0]: out_dir}
    out = {}
    for grid in grids:
        try:
            out[grid] = Path(report(df[df["grid"] == grid], out_dir / "grids" / figures.slug(grid), metric)["dir"])
        except CompareError as e:
            logger.info(f"[compare] grid {grid!r}: no report of its own ({e})")
    return out


@dataclass
class CompareConfig:
    mlflow_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db
    experiment: str = "tart-grid"
    grids: list[str] = field(default_factory=list)  # grid ids to include (several: side by side); []: all
    dataset: Optional[str] = None
    backbone: Optional[str] = None
    out: str = "tart_runs/compare/latest"  # directory for markdown, CSV and PNG outputs
    log_grid: bool = True  # log each grid's report to its parent run (compare/, replacing an earlier one)
    log_run: bool = False  # log the outputs as artifacts of a new MLflow run
    metric: str = "accuracy"  # what the tables, intervals and plots show: any metric a cell records

    def validate(self) -> None:
        if self.metric not in QUALITY_METRICS:
            raise ConfigError(f"metric={self.metric!r}: expected one of {', '.join(QUALITY_METRICS)}")


FIELD_HELP = {
    "mlflow_uri": "tracking URI (null: $MLFLOW_TRACKING_URI or ./mlflow.db)",
    "experiment": "MLflow experiment of the grids",
    "grids": "grid ids to include, e.g. grids=[default,nightly] (empty: every grid)",
    "dataset": "only this dataset",
    "backbone": "only this backbone",
    "out": "directory for the report: summary.md (tables, then figures), CSVs, PNGs",
    "log_grid": "log each grid's report as artifacts compare/ of its parent run (its latest launch), "
                "replacing what an earlier compare logged there",
    "log_run": "also log the outputs as artifacts of a new MLflow run",
    "metric": "accuracy | macro_f1 | auc | nll | brier | ece (ECE: 10 bins over [1/C, 1] for C > 2, "
              "5 over [0.5, 1] for two classes)",
}


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("tart compare", "Compare grid results stored in MLflow: tables and plots.",
                     defaults_epilog(CompareConfig(), FIELD_HELP, [
                         "  tart compare grids=[nightly-2026-11-24,nightly-2026-11-25] out=reports/",
                         "  tart compare dataset=sms_spam backbone=smollm2-135m",
                         "  tart compare grids=[default] log_grid=false   # write the report, log nothing",
                         "",
                         "the report (out/): summary.md (intervals, paired gains, wins/ties/losses, every metric,",
                         "then the figures), CSVs (summary, intervals, gains, gains per k, reliability bins) and",
                         "PNGs per grid x dataset x backbone: <metric> vs k, every metric vs k, seed spread, tart's",
                         "paired gain over each baseline vs k, reliability diagrams (from the grid's results table:",
                         "its per-query probabilities). Several grids: each also gets out/grids/<grid>/.",
                     ]), "compare.yaml", "grids=[default] out=reports/", ray=False)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(CompareConfig, a.config, a.overrides)
        df = load_runs(cfg.mlflow_uri, cfg.experiment, cfg.grids or None, cfg.dataset, cfg.backbone,
                       results_tables=True)
        rep = report(df, Path(cfg.out), cfg.metric)
        reports = grid_reports(df, Path(cfg.out), cfg.metric)
    except (ConfigError, CompareError) as e:
        print(f"tart compare: error: {e}", file=sys.stderr)
        return 2
    print(rep["markdown"])
    print(f"\nreport (summary.md: tables and figures; CSVs, PNGs): {Path(cfg.out).resolve()}")
    if cfg.log_grid:
        import mlflow  # set up by load_runs' connect

        launches = grid_launches(mlflow.get_experiment_by_name(cfg.experiment).experiment_id, sorted(reports))
        for grid, folder in reports.items():
            run = launches.get(grid)
            if run is None:
                print(f"grid {grid!r}: no launch run in MLflow to log its report to")
                continue
            try:
                n = log_artifacts(run.info.run_id, folder, cfg.mlflow_uri)
                print(f"grid {grid!r}: report logged to its run {run.info.run_id} ({n} files under {ARTIFACT_PATH}/)")
            except Exception as e:  # noqa: BLE001 - the report is on disk either way
                print(f"tart compare: warning: could not log grid {grid!r}'s report to MLflow ({e})", file=sys.stderr)
    if cfg.log_run:
        import mlflow  # set up by load_runs' connect

        mlflow.set_experiment(cfg.experiment)
        with mlflow.start_run(run_name="compare", tags={TAG_KIND: KIND_COMPARE}) as run:
            mlflow.log_artifacts(cfg.out, artifact_path="compare")
            print(f"logged to MLflow run {run.info.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
