"""`generate(cfg)`: write (or finish) the shards of a config, idempotently, with the manifest.

The driver's steps, in order: refuse an existing output of another config (or a foreign
directory) before any write; probe writability; retire the old output if `overwrite`;
keep the shards a previous run already finished (size, row count, sha256); write the
rest (`tasks.run_shards`), saving the manifest as they land; mark it complete.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..config import config_digest
from .config import GenerateConfig, GenerateError, ShardError, data_config
from .layout import MANIFEST, shard_name
from .manifest import SHARD_KEYS, load_manifest, new_manifest, save_manifest, utc_now
from .tasks import run_shards

logger = logging.getLogger(__name__)

SAVE_EVERY_S = 2.0  # the manifest is rewritten at most this often while shards land


def generate(cfg: GenerateConfig, log: Optional[Callable[[str], None]] = None) -> dict:
    """Write (or complete) the shards of `cfg`; returns a report.

    Report keys: output, digest, written (shard names written now), skipped (already
    complete), seconds, episodes_written, manifest (the final manifest dict).
    Raises ConfigError / storage.StorageError / GenerateError before writing anything
    when the config or the output location is unusable. Progress goes to `log`
    (default: this module's logger).
    """
    say = log or logger.info
    t0 = time.time()
    cfg.validate()
    dcfg = data_config(cfg)
    digest = config_digest(dcfg)
    fs, base = storage.resolve(cfg.output, cfg.storage_options)
    exists, old = _existing_output(cfg, fs, base, dcfg, digest)  # 1. refuse a conflicting output, before any write
    storage.check_writable(fs, base, cfg.output)  # 2. probe writability before launching any task
    if cfg.overwrite and exists and (old is None or old.get("digest") != digest):
        _retire(fs, base, cfg, old, say)
        old = None
    storage.clean_tmp(fs, base)

    names = [shard_name(i, cfg.shards) for i in range(cfg.shards)]
    done = _reusable_shards(fs, base, old, names, cfg.verify)
    skipped = [names[i] for i in sorted(done)]
    todo = [i for i in range(cfg.shards) if i not in done]
    if not todo and old is not None and old.get("complete"):
        say(f"all {cfg.shards} shards at {cfg.output} are complete (digest {digest}); nothing to do")
        return {"output": cfg.output, "digest": digest, "written": [], "skipped": skipped,
                "seconds": time.time() - t0, "episodes_written": 0, "manifest": old}

    manifest = new_manifest(cfg, dcfg, digest, old.get("created") if old else utc_now())
    save_manifest(fs, base, manifest, done, complete=False)  # marks the output as ours (and incomplete) first
    written = _write_shards(cfg, dcfg, fs, base, todo, done, manifest)
    missing = [names[i] for i in range(cfg.shards) if not fs.exists(storage.join(base, names[i]))]
    if missing:
        save_manifest(fs, base, manifest, done, complete=False)
        raise GenerateError(f"shards missing at {cfg.output} after writing: {', '.join(missing)}")
    storage.clean_tmp(fs, base)
    save_manifest(fs, base, manifest, done, complete=True)
    secs = time.time() - t0
    n_written = sum(done[i]["rows"] for i in todo)
    say(f"wrote {len(written)} shard(s) ({n_written} episodes), skipped {len(skipped)}, "
        f"to {cfg.output} in {secs:.2f}s (digest {digest})")
    return {"output": cfg.output, "digest": digest, "written": sorted(written), "skipped": skipped,
            "seconds": secs, "episodes_written": n_written, "manifest": manifest}


def _existing_output(cfg: GenerateConfig, fs, base: str, dcfg: dict, digest: str) -> tuple[bool, dict | None]:
    """(whether the output directory exists, its manifest or None). Raises GenerateError when the
    output holds another config's episodes, an unreadable manifest or foreign files, unless
    `overwrite` (then an unreadable manifest counts as none)."""
    try:
        exists = fs.isdir(base)
        old = load_manifest(fs, base, cfg.output) if exists else None
    except ShardError as e:
        if not cfg.overwrite:
            raise GenerateError(f"{e}; refusing to write into it (set overwrite=true to replace)") from None
        return True, None
    except Exception as e:  # noqa: BLE001 - unreachable store, missing credentials, ...
        raise storage.as_storage_error(cfg.output, e, f"output {cfg.output!r} is not reachable",
                                       not storage.is_local(fs)) from None
    if exists and old is None and not cfg.overwrite:
        foreign = [n for n in storage.list_names(fs, base)
                   if not (n.startswith(("part-", storage.TMP_PREFIX, storage.PROBE_PREFIX)) or n == MANIFEST)]
        if foreign:
            raise GenerateError(
                f"output {cfg.output!r} is a non-empty directory without a {MANIFEST} (holds e.g. "
                f"{', '.join(foreign[:3])}); refusing to write into it (set overwrite=true to write anyway)"
            )
    if old is not None and old.get("digest") != digest and not cfg.overwrite:
        diffs = _diff(old.get("data_config", {}), dcfg)
        raise GenerateError(
            f"output {cfg.output!r} already holds episodes with a different config "
            f"(digest {old.get('digest')} vs requested {digest}: {'; '.join(diffs) or 'unknown difference'}); "
            "refusing to overwrite (set overwrite=true to replace it)"
        )
    return exists, old


def _retire(fs, base: str, cfg: GenerateConfig, old: dict | None, say: Callable[[str], None]) -> None:
    """Remove the old output: manifest first (so it can never vouch for a mix), then its shards."""
    say(f"overwrite=true: replacing the output at {cfg.output} (old digest {old and old.get('digest')})")
    if fs.exists(storage.join(base, MANIFEST)):
        fs.rm_file(storage.join(base, MANIFEST))
    for name in storage.list_names(fs, base):
        if name.startswith("part-") and name.endswith(".parquet"):
            fs.rm_file(storage.join(base, name))


def _reusable_shards(fs, base: str, old: dict | None, names: list[str], verify: bool) -> dict[int, dict]:
    """The records (by index) of the shards a previous run finished and that still match its manifest."""
    if old is None:
        return {}
    return {rec["index"]: {k: rec[k] for k in SHARD_KEYS}
            for rec in old.get("shards", []) if rec.get("name") in names and _shard_ok(fs, base, rec, verify)}


def _shard_ok(fs, base: str, rec: dict, verify: bool) -> bool:
    path = storage.join(base, rec["name"])
    try:
        if fs.size(path) != rec["bytes"]:
            return False
        if verify:
            return storage.sha256_bytes(storage.read_bytes(fs, path)) == rec["sha256"]
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows == rec["rows"]
    except (FileNotFoundError, OSError, pa.ArrowException):
        return False


def _write_shards(cfg: GenerateConfig, dcfg: dict, fs, base: str, todo: list[int], done: dict[int, dict],
                  manifest: dict) -> list[str]:
    """Run the shard tasks, recording each finished shard in `done` and the manifest (at most every
    SAVE_EVERY_S); returns the names written. GenerateError, after saving what finished, if any failed."""
    memory = storage.is_memory(cfg.output)
    task_uri = base if storage.is_local(fs) else cfg.output  # workers may have another cwd
    written, errors = [], []
    last_save = time.time()
    for i, rec, err in run_shards(cfg.executor, dcfg, todo, task_uri, cfg.storage_options, cfg.fail_at_shard,
                                  memory, cfg.cpus_per_task):
        if err is None:
            try:
                if "data" in rec:  # memory://: the driver writes
                    storage.atomic_write_bytes(fs, storage.join(base, rec["name"]), rec.pop("data"))
                done[i] = rec
                written.append(rec["name"])
            except Exception as e:  # noqa: BLE001 - keep the other shards' progress
                err = e
        if err is not None:
            errors.append(f"shard {i}: {type(err).__name__}: {err}")
        if time.time() - last_save > SAVE_EVERY_S:
            save_manifest(fs, base, manifest, done, complete=False)
            last_save = time.time()
    if errors:
        save_manifest(fs, base, manifest, done, complete=False)
        raise GenerateError(
            f"{len(errors)} of {len(todo)} shard task(s) failed for {cfg.output}; "
            f"{len(done)}/{cfg.shards} shards complete, re-run to finish: " + "; ".join(errors)
        )
    return written


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: existing {va!r} vs requested {vb!r}")
    return out
