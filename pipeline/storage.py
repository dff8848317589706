"""fsspec helpers shared by the stages: resolve URIs, atomic writes, writability probes.

Any URI fsspec understands works: a local path (`out/episodes` or `file:///...`),
`s3://bucket/prefix` (needs `s3fs`), `gs://bucket/prefix` (needs `gcsfs`),
`memory://name` (in-process only: another process, e.g. a Ray worker, sees an empty
memory filesystem of its own).

Atomicity: `atomic_write_bytes` writes `<dir>/_tmp-<uuid>-<name>` and then moves it
to the final name. On a local filesystem the move is `os.replace` (atomic on POSIX);
on object stores the move is copy + delete, and each object PUT/COPY is itself
atomic, so a reader never sees a half-written object under its final name. Leftover
`_tmp-*` objects from a crashed writer are ignored by readers and removed by
`clean_tmp` on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any, Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem

TMP_PREFIX = "_tmp-"
PROBE_PREFIX = "_probe-"


class StorageError(OSError):
    """An output or input location is unusable; the message names the URI and why."""


def resolve(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """`uri` -> (filesystem, path inside it). Raises StorageError naming the URI."""
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError(f"empty storage URI {uri!r}")
    try:
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    except ImportError as e:  # e.g. s3fs / gcsfs not installed
        raise StorageError(f"cannot open {uri!r}: the filesystem driver is missing ({e})") from None
    except (ValueError, TypeError) as e:  # unknown protocol, bad options
        raise StorageError(f"cannot open {uri!r}: {e}") from None
    return fs, path.rstrip("/") or path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def is_memory(uri: str) -> bool:
    return uri.startswith("memory://")


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` to `path` so that `path` either holds all of it or is unchanged."""
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}") if parent else f"{TMP_PREFIX}{name}"
    if is_local(fs):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    try:
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    finally:
        try:
            if fs.exists(tmp):
                fs.rm_file(tmp)
        except OSError:
            pass


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    atomic_write_bytes(fs, path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    return fs.cat_file(path)


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    return json.loads(read_bytes(fs, path).decode())


def check_writable(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> None:
    """Create `path` as a directory if needed and write/delete a probe file in it.

    Raises StorageError naming `uri` when the location is unreachable, read-only, or
    an existing regular file. Nothing but the (deleted) probe is written.
    """
    try:
        if fs.isfile(path):
            raise StorageError(f"output {uri!r} is an existing file, not a directory/prefix")
        fs.makedirs(path, exist_ok=True)
        probe = join(path, f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}")
        fs.pipe_file(probe, b"probe")
        if fs.cat_file(probe) != b"probe":
            raise StorageError(f"output {uri!r}: a probe file read back differently")
        fs.rm_file(probe)
    except StorageError:
        raise
    except Exception as e:  # PermissionError, NotADirectoryError, botocore errors, ...
        raise StorageError(f"output {uri!r} is not writable: {type(e).__name__}: {e}") from None


def list_names(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Base names of the entries directly under `path` ([] if it does not exist)."""
    try:
        entries: Iterable = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)


def clean_tmp(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Remove leftover `_tmp-*` / `_probe-*` entries under `path`; returns their names."""
    removed = []
    for name in list_names(fs, path):
        if name.startswith((TMP_PREFIX, PROBE_PREFIX)):
            try:
                fs.rm_file(join(path, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed
