"""`tart` console script: one subcommand per stage, each dispatched lazily.

Heavy libraries (torch, ray, transformers) are imported only by the stage that runs,
so `tart --help` is instant. Every stage module exposes `main(argv) -> int`, which
is also what `python -m jobs.<stage>` calls for `ray job submit`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

STAGES = {
    "generate": ("pipeline.generate", "write synthetic episodes as Parquet shards (Ray tasks)"),
    "train": ("pipeline.train", "train the reasoner with Ray Train (DDP on CPU or GPU)"),
    "grid": ("pipeline.grid", "run an evaluation grid into a results table and MLflow (the main job)"),
    "pipeline": ("pipeline.full", "generate -> train -> grid -> compare in one job"),
    "compare": ("pipeline.compare", "tables and plots from MLflow grid runs"),
    "eval-synthetic": ("pipeline.synthetic_eval", "score a reasoner on held-out synthetic episodes"),
    "embed": ("pipeline.embed", "embed a dataset with a frozen backbone into a Parquet cache (Ray Data)"),
}


def usage() -> str:
    lines = ["usage: tart <stage> [options]   (tart <stage> --help for its options; tart --version)", "", "stages:"]
    lines += [f"  {name:<15} {desc}" for name, (_, desc) in STAGES.items()]
    return "\n".join(lines)


def version() -> str:
    """The installed project version (pyproject's, when run from a checkout that is not installed)."""
    try:
        return importlib.metadata.version("tart-pipeline")
    except importlib.metadata.PackageNotFoundError:
        import re
        from pathlib import Path

        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
        return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"tart {version()}")
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"tart: unknown stage {stage!r}\n\n{usage()}", file=sys.stderr)
        return 2
    start_console(stage, rest)
    module = importlib.import_module(STAGES[stage][0])
    return int(module.main(rest) or 0)


def start_console(stage: str, argv: list[str]) -> None:
    """Set up what a stage prints (pipeline.console): our lines on stdout, the libraries' in a log file
    under $TART_LOG_DIR (default tart_runs/logs; the grid moves it under its storage)."""
    import os
    import time

    from . import console

    line_buffered_output()
    log_dir = os.environ.get("TART_LOG_DIR") or os.path.join("tart_runs", "logs")
    log_file = os.path.join(log_dir, f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    console.setup(verbose="--verbose" in argv or "-v" in argv, log_file=log_file)


def line_buffered_output() -> None:
    """Progress lines reach a log file or `ray job logs` as they are printed, not 8 KiB later."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)


if __name__ == "__main__":
    sys.exit(main())
