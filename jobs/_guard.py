"""The check every `python -m jobs.<stage>` entrypoint runs first, before pipeline's heavy imports.

A job submitted without the project's runtime env otherwise dies in a traceback deep inside
an import, or runs an installed copy of the code without `configs/`. Here those end in one
message and exit status 2:

- a required module is not installed (found with `find_spec`, nothing is imported), or an
  import fails with ModuleNotFoundError later (a broken install);
- as a submitted Ray job: the TART_RUNTIME_ENV marker that cluster/runtime_env.yaml sets is
  absent, or the job does not run from the project's working dir (no configs/ next to jobs/).
  TART_ALLOW_NO_RUNTIME_ENV=1 skips these two (a cluster image that already holds the project).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

# import name -> pip name; the project itself ("pipeline") comes from the working dir
REQUIRED = {"pipeline": None, "yaml": "pyyaml", "numpy": "numpy", "pandas": "pandas", "fsspec": "fsspec",
            "pyarrow": "pyarrow", "safetensors": "safetensors", "sklearn": "scikit-learn", "torch": "torch",
            "transformers": "transformers", "mlflow": "mlflow", "ray": "ray[data,train,default]"}
MARKER = "TART_RUNTIME_ENV"  # set by cluster/runtime_env.yaml (env_vars)
OVERRIDE = "TART_ALLOW_NO_RUNTIME_ENV"
# Ray's job supervisor sets this in the environment of a submitted job's entrypoint (the driver)
# only: ray/dashboard/modules/job/job_supervisor.py, JobSupervisor._get_driver_env_vars.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
PROJECT = Path(__file__).resolve().parents[1]


def submit_command(stage: str) -> str:
    return f"ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m jobs.{stage} ..."


def _fail(stage: str, problem: str) -> None:
    print(f"python -m jobs.{stage}: error: {problem}", file=sys.stderr)
    sys.exit(2)


def _missing_module(stage: str, name: str, detail: str = "") -> str:
    root = name.split(".")[0]
    if root == "pipeline":
        what = "the project package 'pipeline' is not importable (the job does not run from the project's directory)"
    else:
        pip = REQUIRED.get(root) or root
        what = f"required module {name!r} is not installed" + (f" (pip package {pip})" if pip != root else "")
    return (f"{what}{detail}. Submit the job with the project's runtime env and working dir "
            f"(`--runtime-env cluster/runtime_env.yaml --working-dir .`): `{submit_command(stage)}`; "
            f"or use a cluster image that already holds the project's dependencies (pip install -e .).")


def check(stage: str) -> None:
    """Exit 2 with one message if this process cannot run jobs.<stage> (see the module docstring)."""
    for mod in REQUIRED:
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):  # a parent package that fails to import, a module set to None
            found = False
        if not found:
            _fail(stage, _missing_module(stage, mod))
    if RAY_JOB_ENV not in os.environ or os.environ.get(OVERRIDE) == "1":
        return
    if not os.environ.get(MARKER):
        _fail(stage, f"this Ray job was submitted without the project's runtime env ({MARKER} is not set; "
                     f"cluster/runtime_env.yaml sets it). Submit it as `{submit_command(stage)}` "
                     f"(on the stock Ray image: cluster/runtime_env.stock-image.yaml; on CPU nodes: "
                     f"cluster/runtime_env.cpu.yaml; a KubeRay runtimeEnvYAML carries their env_vars), or set "
                     f"{OVERRIDE}=1 in the runtime env if the cluster image already holds the project and its "
                     f"dependencies.")
    if not (PROJECT / "configs").is_dir():
        _fail(stage, f"this Ray job runs jobs/ from {PROJECT}, which has no configs/ directory: it was submitted "
                     f"without `--working-dir .` (run from the project's root). Submit it as `{submit_command(stage)}`.")


def run(stage: str, module: str) -> None:
    """check(), then import `module` and exit with its main()'s status (ModuleNotFoundError: exit 2)."""
    check(stage)
    try:
        from pipeline.cli import start_console

        start_console(stage, sys.argv[1:])  # line-buffered: progress visible in `ray job logs` as it is printed
        sys.exit(importlib.import_module(module).main())
    except ModuleNotFoundError as e:  # installed but broken (a dependency of a dependency is missing)
        if (e.name or "").startswith(("pipeline.", "jobs.")):
            raise  # a bug in the project's own imports: keep the traceback
        _fail(stage, _missing_module(stage, e.name or "?", f" ({e})"))
