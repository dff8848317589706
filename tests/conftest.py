"""Shared pytest fixtures.

`ray_local`: a real local Ray (2 logical CPUs, no dashboard, usage stats off) for the
test module that asks for it; shut down at the end of that module. If Ray is already
initialised (e.g. by another fixture), it is reused and left running. Give Ray tests
a `@pytest.mark.timeout(...)`: on 2 cores a mis-sized actor/task request hangs forever.
Tasks and actors should request fractional CPUs (e.g. 0.5) — see docs/environment.md.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        yield ray
        return
    # Workers must import `pipeline` even when the package is not pip-installed.
    # (Local workers inherit the driver's environment at ray.init.)
    parts = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if REPO_ROOT not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [REPO_ROOT, *parts] if p)
    for attempt in range(3):  # a loaded 2-core box can miss Ray's fixed 30 s raylet start deadline
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
            break
        except Exception:  # noqa: BLE001 - "node timed out during startup"
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        yield ray
    finally:
        ray.shutdown()
