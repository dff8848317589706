"""`<output>/_manifest.json`: what it holds, how it is written and how it is loaded.

Fields (JSON object)::

    format, format_version   "tart-episodes", 1
    complete                 false while shards are being written, true once all S are there
    config                   the full GenerateConfig (runtime knobs included)
    data_config, digest      the data-defining config and its short sha256 (= the shards' `tart.digest`)
    task, episodes, num_shards, schema (text of the Parquet schema, without metadata)
    created, updated         UTC ISO-8601 timestamps (created survives re-runs)
    code_version             tart-pipeline, numpy, pyarrow and python versions of the writer
    shards                   [{index, name, rows, episode_start, bytes, sha256}] in shard order

It is rewritten atomically (`storage.write_json_atomic`) every time it changes.
"""

from __future__ import annotations

import datetime as _dt
import sys

import numpy as np
import pyarrow as pa

from .. import storage
from ..synthetic import task_record
from .config import GenerateConfig, ShardError, config_record
from .layout import FORMAT, FORMAT_VERSION, MANIFEST, episode_schema

SHARD_KEYS = ("index", "name", "rows", "episode_start", "bytes", "sha256")  # one shard's record


def code_version() -> dict:
    from importlib import metadata

    try:
        pkg = metadata.version("tart-pipeline")
    except metadata.PackageNotFoundError:
        pkg = "unknown"
    return {"tart-pipeline": pkg, "numpy": np.__version__, "pyarrow": pa.__version__,
            "python": sys.version.split()[0]}


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def load_manifest(fs, base: str, uri: str) -> dict | None:
    """The manifest under `base` (None if there is none); ShardError if it is not JSON, foreign or of another version."""
    path = storage.join(base, MANIFEST)
    if not fs.exists(path):
        return None
    try:
        man = storage.read_json(fs, path)
    except (ValueError, UnicodeDecodeError) as e:
        raise ShardError(f"{uri}/{MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise ShardError(f"{uri}/{MANIFEST} is not a {FORMAT} manifest (format={man.get('format') if isinstance(man, dict) else None!r})")
    if man.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"{uri}/{MANIFEST}: format_version={man.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    return man


def new_manifest(cfg: GenerateConfig, dcfg: dict, digest: str, created: str) -> dict:
    """An incomplete manifest with no shards yet."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "complete": False,
        "config": config_record(cfg), "data_config": dcfg, "digest": digest,
        "task": task_record(cfg.task), "episodes": cfg.episodes, "num_shards": cfg.shards,
        "schema": episode_schema(cfg.task.d, cfg.task.points).to_string(show_schema_metadata=False),
        "created": created, "code_version": code_version(), "shards": [],
    }


def save_manifest(fs, base: str, manifest: dict, done: dict[int, dict], complete: bool) -> None:
    """Rewrite the manifest atomically with the shard records in `done` (by index)."""
    manifest["shards"] = [done[i] for i in sorted(done)]
    manifest["complete"] = complete
    manifest["updated"] = utc_now()
    storage.write_json_atomic(fs, storage.join(base, MANIFEST), manifest)
