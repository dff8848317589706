"""One shard, written by one function (`write_shard`), run sequentially here or as one Ray task each.

`write_shard` is a module-level function so that Ray workers import it by name. Tasks
write their shard straight to the output URI; for `memory://` (a per-process filesystem)
they return the bytes and the driver writes them. `run_shards` yields each shard's result
as it finishes, whichever executor ran it, so the driver has one loop for both.
"""

from __future__ import annotations

from typing import Iterator, Optional

from .. import storage
from ..runtime import init_ray
from .layout import shard_bounds, shard_bytes, shard_name


class InjectedFailure(RuntimeError):
    """The failure `fail_at_shard` injects (tests)."""


def write_shard(dcfg: dict, i: int, uri: str | None, storage_options: dict | None = None,
                fail: bool = False, return_bytes: bool = False) -> dict:
    """Generate shard i and write it under `uri` (temp name, then move). Runs in a Ray task.

    Returns the shard's manifest record. With `return_bytes=True` nothing is written; the
    bytes come back in the record under "data" (used for memory://, whose filesystem is
    private to each process).
    """
    data, rows = shard_bytes(dcfg, i)
    name = shard_name(i, dcfg["shards"])
    rec = {"index": i, "name": name, "rows": rows, "episode_start": shard_bounds(dcfg["episodes"], dcfg["shards"], i)[0],
           "bytes": len(data), "sha256": storage.sha256_bytes(data)}
    if return_bytes:
        if fail:
            raise InjectedFailure(f"injected failure while generating shard {i} ({name})")
        rec["data"] = data
        return rec
    fs, base = storage.resolve(uri, storage_options)
    if fail:  # simulate a crash after part of the shard reached storage
        fs.pipe_file(storage.join(base, f"{storage.TMP_PREFIX}crash-{name}"), data[: len(data) // 2])
        raise InjectedFailure(f"injected failure while writing shard {i} ({name})")
    storage.atomic_write_bytes(fs, storage.join(base, name), data)
    return rec


ShardResult = tuple[int, Optional[dict], Optional[BaseException]]  # (index, record, or the error that stopped it)


def run_shards(executor: str, dcfg: dict, todo: list[int], uri: str, storage_options: dict,
               fail_at: Optional[int], return_bytes: bool, cpus_per_task: float) -> Iterator[ShardResult]:
    """Write the shards `todo`, yielding (i, record, None) or (i, None, error) per shard as each finishes."""
    if executor == "local":
        yield from _run_local(dcfg, todo, uri, storage_options, fail_at, return_bytes)
    else:
        yield from _run_ray(dcfg, todo, uri, storage_options, fail_at, return_bytes, cpus_per_task)


def _run_local(dcfg, todo, uri, storage_options, fail_at, return_bytes) -> Iterator[ShardResult]:
    for i in todo:
        try:
            rec = write_shard(dcfg, i, uri, storage_options, fail=i == fail_at, return_bytes=return_bytes)
        except Exception as e:  # noqa: BLE001 - keep the other shards' progress
            yield i, None, e
        else:
            yield i, rec, None


def _run_ray(dcfg, todo, uri, storage_options, fail_at, return_bytes, cpus_per_task) -> Iterator[ShardResult]:
    import ray  # only the Ray executor needs it

    init_ray()
    remote = ray.remote(num_cpus=cpus_per_task, max_retries=0)(write_shard)
    refs = {remote.remote(dcfg, i, uri, storage_options, i == fail_at, return_bytes): i for i in todo}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            try:
                rec = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a task failed; keep the others' progress
                yield refs[ref], None, getattr(e, "cause", None) or e  # RayTaskError wraps the task's exception
            else:
                yield refs[ref], rec, None
