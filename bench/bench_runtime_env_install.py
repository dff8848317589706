"""Benchmark: how long a node's first job waits for the CPU runtime env's pip install, with pip's
byte-compiling (Ray's default options) against `--no-compile` (what the generated envs use).

Each variant pip-installs cluster/runtime_env.cpu.yaml's package list into a fresh venv of this
Python (the same resolver and index a Ray node's runtime-env agent uses here), alternating the
order across --repeats so the page cache favours neither. Then, in the `--no-compile` venv, it
times the grid's imports twice with bytecode writing on: the first run compiles what a job
imports (a cost the job pays once per node), the second reads the cached bytecode.

    .venv/bin/python bench/bench_runtime_env_install.py --repeats 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = ("import torch, transformers, mlflow, sklearn.linear_model, pandas, pyarrow.parquet, ray.data, "
           "ray.train.torch, datasets, matplotlib.pyplot")


def install(packages: list[str], where: Path, compile_: bool) -> float:
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(where)], check=True)
    req = where / "requirements.txt"
    req.write_text("\n".join(packages) + "\n")
    opts = ["--disable-pip-version-check", "--no-cache-dir"] + ([] if compile_ else ["--no-compile"])
    t0 = time.perf_counter()
    subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "--quiet", *opts, "-r", str(req)],
                   check=True)
    return time.perf_counter() - t0


def import_time(venv: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as on a cluster node
    t0 = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-c", IMPORTS], check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    packages = yaml.safe_load((ROOT / "cluster/runtime_env.cpu.yaml").read_text())["pip"]["packages"]
    times: dict[str, list[float]] = {"compile": [], "no-compile": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench-renv-"))
    try:
        for r in range(args.repeats):
            order = ("compile", "no-compile") if r % 2 == 0 else ("no-compile", "compile")
            for variant in order:
                venv = tmp / f"{variant}-{r}"
                times[variant].append(install(packages, venv, compile_=variant == "compile"))
                print(f"[bench] {variant} install: {times[variant][-1]:.1f} s", flush=True)
                if variant == "no-compile" and r == 0:
                    first, second = import_time(venv), import_time(venv)
                    print(f"[bench] no-compile env, the grid's imports: first {first:.1f} s (compiles), "
                          f"then {second:.1f} s", flush=True)
                shutil.rmtree(venv)  # GBs each
        c, n = statistics.median(times["compile"]), statistics.median(times["no-compile"])
        print(f"[bench] {len(packages)} packages; install median: compile {c:.1f} s, no-compile {n:.1f} s; "
              f"no-compile is {c / n:.2f}x faster")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
