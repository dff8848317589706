"""jobs/_guard.py: a job run without the project's runtime env stops with one message and exit 2.

No Ray here: `python -m jobs.<stage> --help` runs in a subprocess with the environment a
submitted job's driver gets (Ray's job supervisor sets RAY_JOB_CONFIG_JSON_ENV_VAR there),
with or without the TART_RUNTIME_ENV marker of cluster/runtime_env.yaml, or with a
required module made unimportable. tests/test_jobs.py checks the same through a real cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs import _guard

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = "--runtime-env cluster/runtime_env.yaml"


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (_guard.MARKER, _guard.OVERRIDE, _guard.RAY_JOB_ENV)}
    env.update(RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path = ROOT, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(**extra), capture_output=True, text=True,
                          timeout=240)


# what the job supervisor puts there (a JSON job config); the guard only looks for the name
AS_SUBMITTED = {_guard.RAY_JOB_ENV: '{"runtime_env": {}, "metadata": {"job_submission_id": "t"}}'}


def test_the_env_var_is_the_one_rays_job_supervisor_sets():
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    assert _guard.RAY_JOB_ENV == RAY_JOB_CONFIG_JSON_ENV_VAR
    src = Path(__import__("ray.dashboard.modules.job.job_supervisor", fromlist=["x"]).__file__).read_text()
    assert "RAY_JOB_CONFIG_JSON_ENV_VAR:" in src  # set in the driver's env by _get_driver_env_vars


def test_submitted_job_without_the_runtime_env_is_refused():
    r = _run(["-m", "jobs.grid", "--help"], **AS_SUBMITTED)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "without the project's runtime env" in r.stderr and _guard.MARKER in r.stderr
    assert SUBMIT in r.stderr and "--working-dir ." in r.stderr and "python -m jobs.grid" in r.stderr
    assert "Traceback" not in r.stderr and "usage:" not in r.stdout


@pytest.mark.parametrize("extra", [{_guard.MARKER: "cluster/runtime_env.yaml"}, {_guard.OVERRIDE: "1"}, {}],
                         ids=["marker", "override", "not-a-submitted-job"])
def test_runtime_env_marker_or_override_or_a_local_run_passes(extra):
    env = {**AS_SUBMITTED, **extra} if extra else {}
    r = _run(["-m", "jobs.grid", "--help"], **env)
    assert r.returncode == 0, r.stderr
    assert "usage: tart grid" in r.stdout


def test_runtime_env_yaml_and_kuberay_manifests_carry_the_marker():
    rt = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    assert rt["env_vars"].get(_guard.MARKER)
    inline = []
    for p in sorted((ROOT / "cluster").glob("*.yaml")):
        for d in yaml.safe_load_all(p.read_text()):
            spec = (d or {}).get("spec") or {}
            for s in (spec, spec.get("jobTemplate") or {}):
                if "runtimeEnvYAML" in s:
                    inline.append((p.name, yaml.safe_load(s["runtimeEnvYAML"])))
    assert inline
    for name, env in inline:  # the same env as runtime_env.yaml (+ working_dir), or the guard refuses the job
        assert env.get("env_vars", {}).get(_guard.MARKER), name
        assert env.get("env_vars") == rt["env_vars"], f"{name}: env_vars differ from cluster/runtime_env.yaml"
        assert env.get("pip") == rt.get("pip"), f"{name}: pip differs from cluster/runtime_env.yaml"


def test_a_missing_required_module_is_named_with_the_runtime_env():
    # sys.modules[name] = None is how Python blocks an import: find_spec gives None and `import mlflow`
    # raises ModuleNotFoundError, as when mlflow is not installed on the cluster
    code = ("import runpy, sys; sys.modules['mlflow'] = None; sys.argv = ['jobs.grid', '--help']; "
            "runpy.run_module('jobs.grid', run_name='__main__', alter_sys=True)")
    r = _run(["-c", code])
    assert r.returncode == 2, r.stdout + r.stderr
    assert "required module 'mlflow' is not installed" in r.stderr
    assert SUBMIT in r.stderr and "--working-dir ." in r.stderr and "Traceback" not in r.stderr


def test_a_broken_install_is_named_with_the_runtime_env(tmp_path):
    # an installed package whose import fails (a dependency of it is missing): found, but not importable
    fake = tmp_path / "shadow" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch._C'\", name='torch._C')\n")
    r = _run(["-m", "jobs.train", "--help"], PYTHONPATH=str(tmp_path / "shadow"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "required module 'torch._C' is not installed" in r.stderr
    assert SUBMIT in r.stderr and "python -m jobs.train" in r.stderr and "Traceback" not in r.stderr


def test_submitted_job_without_the_working_dir_is_refused(tmp_path):
    # an installed copy of jobs/ (no configs/ next to it), as when --working-dir . was left out
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
    r = _run(["-m", "jobs.grid", "--help"], cwd=tmp_path, PYTHONPATH=str(ROOT),
             **AS_SUBMITTED, **{_guard.MARKER: "cluster/runtime_env.yaml"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no configs/ directory" in r.stderr and "--working-dir ." in r.stderr and SUBMIT in r.stderr
