"""Stage 5: MLflow runs (or a grid's results table) become tables and plots.

    tart compare                                  # every grid in the default experiment
    tart compare grids=[default,nightly]          # two grids side by side
    tart compare dataset=sms_spam backbone=smollm2-135m out=reports/

Outputs: a markdown table of mean accuracy with its 95% bootstrap interval per
dataset x backbone x method x k (one column per grid when several are compared), the gain
of tart over icl and over lr_probe, paired on each seed's context and test set, with its
interval (`pipeline.uncertainty`: seeds x test examples from a results table, seeds only from
MLflow runs), CSV files (std too), and PNG plots of accuracy vs k per dataset/backbone (a
line per method, interval bars), also logged as artifacts to an MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from .config import ConfigError, defaults_epilog, load_config, stage_parser
from .methods import TEXTS, known_methods
from .storage import join
from .uncertainty import Interval, correct_matrix, interval, pooled
from .tracking import (KIND_CELL, KIND_COMPARE, QUALITY_METRICS, TAG_CELLS, TAG_GRID, TAG_KIND, connect, decode_cells,
                       experiment_url, flat_metric, resolve_tracking_uri, tag_filter)

logger = logging.getLogger(__name__)

KEYS = ["dataset", "backbone", "method", "k"]
BASELINES = ("icl", "lr_probe")  # what the reasoner methods' gains are reported against


class CompareError(ValueError):
    pass


def load_runs(mlflow_uri: Optional[str] = None, experiment: str = "tart-grid", grids: Optional[list[str]] = None,
              dataset: Optional[str] = None, backbone: Optional[str] = None) -> pd.DataFrame:
    """Cell runs from MLflow as a flat frame (one row per cell)."""
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
    return df.assign(dataset=dataset_labels(df))


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


def _values(rows: pd.DataFrame, metric: str = "accuracy") -> np.ndarray:
    """What a bootstrap resamples for these cells (one per seed): their per-example correctness
    (S, n) when the metric is accuracy and the frame holds predictions (a results table), else the
    cells' values of the metric (S,)."""
    rows = rows.sort_values("seed")
    if metric != "accuracy":
        return rows[metric].to_numpy(dtype=np.float64)
    if "probs" in rows and "labels" in rows:
        m = correct_matrix(rows["probs"].tolist(), rows["labels"].tolist(),
                           rows["n_classes"].tolist() if "n_classes" in rows else None)
        if m is not None:
            return m
    return rows["accuracy"].to_numpy(dtype=np.float64)


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


def markdown_table(summary: pd.DataFrame) -> str:
    grids = sorted(summary["grid"].unique())
    cell = summary.assign(v=[f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in
                             zip(summary["mean"], summary["ci_low"], summary["ci_high"])])
    wide = cell.pivot_table(index=KEYS, columns="grid", values="v", aggfunc="first").reset_index()
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
    for _, r in means.iterrows():
        vals = [f"{r[m]:.3f}" if pd.notna(r[m]) else "" for m in cols]
        lines.append("| " + " | ".join([str(r["grid"]), *(str(r[k]) for k in KEYS), *vals]) + " |")
    return "\n".join(lines)


def plot(summary: pd.DataFrame, out_dir: Path, metric: str = "accuracy") -> list[Path]:
    """`metric` vs k with 95% intervals, one PNG per grid x dataset x backbone, one line per method."""
    import matplotlib  # only to plot; the Agg backend must be chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (grid, ds, bb), g in summary.groupby(["grid", "dataset", "backbone"]):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method, m in g.groupby("method"):
            m = m.sort_values("k")
            yerr = [m["mean"] - m["ci_low"], m["ci_high"] - m["mean"]]  # the 95% bootstrap interval
            ax.errorbar(m["k"], m["mean"], yerr=yerr, marker="o", capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(g["k"].unique()), labels=[str(k) for k in sorted(g["k"].unique())])
        ax.set_xlabel("k (context examples)")
        ax.set_ylabel(metric)
        ax.set_title(f"{ds} / {bb} ({grid})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        stem = "acc" if metric == "accuracy" else metric
        path = out_dir / f"{stem}_vs_k__{grid}__{ds}__{bb.replace('/', '_')}.png"
        tmp = path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def report(df: pd.DataFrame, out_dir: Path, metric: str = "accuracy") -> dict:
    """Write summary.md, summary.csv, gains CSVs and plots of `metric` (any of QUALITY_METRICS);
    returns paths and the markdown."""
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
    for ref in BASELINES:
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
    brief = "\n".join(md)  # what a console shows; summary.md has every metric too
    means = metric_means(df)
    md += ["## Every metric (mean over seeds; NLL, Brier and ECE: lower is better; AUC for two classes)", "",
           metrics_markdown(means), ""]
    files["metrics.csv"] = means
    text = "\n".join(md)
    (out_dir / "summary.md").write_text(text)
    summary.to_csv(out_dir / "summary.csv", index=False)
    for name, frame in files.items():
        frame.to_csv(out_dir / name, index=False)
    plots = plot(summary, out_dir, metric)
    return {"markdown": text, "brief": brief, "dir": str(out_dir), "plots": [str(p) for p in plots]}


def log_artifacts(run_id: str, out_dir: Path, mlflow_uri: Optional[str] = None) -> None:
    from mlflow.tracking import MlflowClient  # ~4 s to import: only when there is a run to log to

    MlflowClient(resolve_tracking_uri(mlflow_uri)).log_artifacts(run_id, str(out_dir), artifact_path="compare")


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
    lines = [rep["brief"], f"\nevery metric (macro-F1, AUC, NLL, Brier, ECE), plots and tables: {out_dir.resolve()}"]
    if summary.get("mlflow_uri"):
        uri, exp_id = summary["mlflow_uri"], summary.get("experiment_id")
        if uri.startswith("sqlite"):
            ui = f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1"
            ui += f", then open {experiment_url('http://127.0.0.1:5000', exp_id)}" if exp_id else ""
        else:
            ui = experiment_url(uri, exp_id) if exp_id else uri
        lines.append(f"MLflow: {ui}  (experiment {spec.experiment!r}, parent run {summary['parent_run_id']})")
    return {**rep, "text": "\n".join(lines)}


@dataclass
class CompareConfig:
    mlflow_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db
    experiment: str = "tart-grid"
    grids: list[str] = field(default_factory=list)  # grid ids to include (several: side by side); []: all
    dataset: Optional[str] = None
    backbone: Optional[str] = None
    out: str = "tart_runs/compare/latest"  # directory for markdown, CSV and PNG outputs
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
    "out": "directory for the markdown, CSV and PNG outputs",
    "log_run": "also log the outputs as artifacts of a new MLflow run",
    "metric": "accuracy | macro_f1 | auc | nll | brier | ece (ECE: 10 bins over [1/C, 1] for C > 2, "
              "5 over [0.5, 1] for two classes)",
}


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("tart compare", "Compare grid results stored in MLflow: tables and plots.",
                     defaults_epilog(CompareConfig(), FIELD_HELP, [
                         "  tart compare grids=[nightly-2026-11-24,nightly-2026-11-25] out=reports/",
                         "  tart compare dataset=sms_spam backbone=smollm2-135m",
                     ]), "compare.yaml", "grids=[default] out=reports/", ray=False)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(CompareConfig, a.config, a.overrides)
        df = load_runs(cfg.mlflow_uri, cfg.experiment, cfg.grids or None, cfg.dataset, cfg.backbone)
        rep = report(df, Path(cfg.out), cfg.metric)
    except (ConfigError, CompareError) as e:
        print(f"tart compare: error: {e}", file=sys.stderr)
        return 2
    print(rep["markdown"])
    print(f"\nplots and tables: {Path(cfg.out).resolve()}")
    if cfg.log_run:
        import mlflow  # set up by load_runs' connect

        mlflow.set_experiment(cfg.experiment)
        with mlflow.start_run(run_name="compare", tags={TAG_KIND: KIND_COMPARE}) as run:
            mlflow.log_artifacts(cfg.out, artifact_path="compare")
            print(f"logged to MLflow run {run.info.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
