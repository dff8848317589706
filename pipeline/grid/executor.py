"""Where a grid's work runs: one abstraction for here (executor=local) and Ray tasks (executor=ray).

A *unit* is `fn(keys, *args, skip=None)`, a generator yielding one result per key, in
order: e.g. the keys are the cells of one ICL seed and `fn` loads the LM once and scores
each. `Executor.submit` queues a unit; `Executor.outcomes()` hands back one `Outcome` per
key as units finish, whichever way they ran:

- local: units run in this process, in submission order, when `outcomes()` is iterated, so
  each result reaches the caller as soon as it is computed (a killed driver loses at most
  the key in progress); `skip(key)` true (finished by a concurrent driver) yields no work
  for that key (its outcome has result None).
- ray: each unit is one Ray task (its CPUs, GPUs and retries), started at `submit`; it
  returns all its results at once, and units are handed back in the order they finish.

A unit that raises fails its keys that have no result yet (`Outcome.error`); the others
go on. `busy_s` is the time spent computing or waiting for results inside `outcomes()`,
not the caller's time handling them.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional


@dataclass
class Outcome:
    key: Any
    result: Any = None  # None with no error: skipped (finished elsewhere)
    error: Optional[BaseException] = None


def _run_unit(fn: Callable, keys: list, *args: Any) -> list:
    """Ray task body: a unit's results as one list (a task returns once)."""
    results = list(fn(keys, *args))
    if len(results) != len(keys):
        raise RuntimeError(f"{fn.__name__} yielded {len(results)} result(s) for {len(keys)} key(s)")
    return results


class Executor:
    def __init__(self, remote: bool, skip: Optional[Callable[[Any], bool]] = None):
        self.remote, self.skip = remote, skip
        self.busy_s = 0.0
        self._local: deque = deque()  # (fn, keys, args) not run yet
        self._tasks: dict = {}  # Ray ObjectRef -> keys
        if remote:
            import ray  # ~2 s to import, and only executor=ray needs it

            self._ray = ray
            self._task = ray.remote(_run_unit)

    def slots(self, cpus_per_unit: float) -> int:
        """How many units of `cpus_per_unit` CPUs run at once (1 here; on Ray, the cluster's CPUs now)."""
        if not self.remote:
            return 1
        return max(1, int(self._ray.cluster_resources().get("CPU", 1) // cpus_per_unit))

    def submit(self, fn: Callable, keys: list, *args: Any, cpus: float = 1.0, gpus: float = 0.0,
               retries: int = 0) -> None:
        """Queue the unit `fn(keys, *args)`; on Ray it starts now as a task asking for `cpus` / `gpus`."""
        if not self.remote:
            self._local.append((fn, list(keys), args))
            return
        task = self._task.options(num_cpus=cpus, num_gpus=gpus or None, max_retries=retries, name=fn.__name__)
        self._tasks[task.remote(fn, list(keys), *args)] = list(keys)

    def outcomes(self, wait: bool = True) -> Iterator[Outcome]:
        """One Outcome per key of the units submitted so far, as they finish.

        wait=False: only what is ready without waiting for Ray tasks (local units always are:
        they run here and now).
        """
        source = self._remote_outcomes(wait) if self.remote else self._local_outcomes()
        t = time.time()
        for outcome in source:
            self.busy_s += time.time() - t
            yield outcome
            t = time.time()
        self.busy_s += time.time() - t

    def _local_outcomes(self) -> Iterator[Outcome]:
        while self._local:
            fn, keys, args = self._local.popleft()
            done = 0
            try:
                for key, result in zip(keys, fn(keys, *args, skip=self.skip)):
                    yield Outcome(key, result)
                    done += 1
                if done < len(keys):
                    raise RuntimeError(f"{fn.__name__} yielded {done} result(s) for {len(keys)} key(s)")
            except Exception as e:  # noqa: BLE001 - a failed unit fails its keys; the other units go on
                yield from (Outcome(key, error=e) for key in keys[done:])

    def _remote_outcomes(self, wait: bool) -> Iterator[Outcome]:
        while self._tasks:
            ready, _ = self._ray.wait(list(self._tasks), num_returns=1, timeout=None if wait else 0)
            if not ready:
                return
            keys = self._tasks.pop(ready[0])
            try:
                results = self._ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - a failed task (after its retries) fails its keys
                yield from (Outcome(key, error=e) for key in keys)
                continue
            yield from (Outcome(key, result) for key, result in zip(keys, results))
