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
import re
import uuid
from typing import Any, Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem

TMP_PREFIX = "_tmp-"
PROBE_PREFIX = "_probe-"


class StorageError(OSError):
    """An output or input location is unusable; the message names the URI and why."""


# scheme -> the pip package holding its fsspec driver
DRIVERS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}
# how to supply credentials, per driver (by reference only: configs and storage_options are
# stored with the outputs and in MLflow, so secret values never go there)
CREDENTIALS_HELP = {
    "s3fs": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (or storage_options.profile=NAME), "
            "or give the nodes an IAM role; storage_options.anon=true reads a public bucket",
    "gcsfs": "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (or storage_options.token=PATH), "
             "or give the nodes a service account",
    "adlfs": "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY",
}
# Credential failures are recognised by class name / message text, so no cloud SDK is imported:
# botocore NoCredentialsError & co, google.auth DefaultCredentialsError / RefreshError, azure's
# ClientAuthenticationError, and S3/GCS 403s (which s3fs/gcsfs turn into PermissionError).
_CRED_CLASSES = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "NoAuthTokenError",
                 "DefaultCredentialsError", "RefreshError", "ClientAuthenticationError"}
_CRED_TEXT = re.compile(r"unable to locate credentials|credentials were not found|could not automatically determine "
                        r"credentials|AccessDenied|Access Denied|InvalidAccessKeyId|SignatureDoesNotMatch|"
                        r"ExpiredToken|InvalidToken|\b403\b|Forbidden", re.IGNORECASE)


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def redact(uri: str) -> str:
    """`uri` with any user:password@ part masked, for error messages."""
    return re.sub(r"://[^/@]*@", "://***@", uri)


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_credentials_error(e: BaseException, remote: bool = True) -> bool:
    """Whether `e` (or what caused it) is a missing/invalid-credentials failure of a remote store.

    For a local filesystem only the class names count: a local PermissionError is file
    modes, and a path may well contain "403".
    """
    for x in _chain(e):
        if type(x).__name__ in _CRED_CLASSES:
            return True
        if remote and (isinstance(x, PermissionError) or _CRED_TEXT.search(str(x))):
            return True
    return False


def credentials_error(uri: str, e: BaseException) -> StorageError:
    """A StorageError saying how to supply credentials. Only the exception's class is named:
    its text may quote request details, and no secret value may reach a log."""
    how = CREDENTIALS_HELP.get(DRIVERS.get(scheme(uri), ""), "supply this filesystem's credentials in the environment")
    return StorageError(
        f"{redact(uri)!r}: no or invalid credentials ({type(e).__name__}), or they lack permission on this "
        f"location. To fix: {how}. On a Ray cluster every node needs them "
        "(a cluster secret or node role), not only the submitting machine; keep secret values out of configs."
    )


def as_storage_error(uri: str, e: BaseException, what: str, remote: bool = True) -> StorageError:
    """The StorageError for `e`, raised while using `uri`: the credentials message if it is one,
    else `<what>: <class>: <text>`."""
    if is_credentials_error(e, remote):
        return credentials_error(uri, e)
    return StorageError(f"{what}: {type(e).__name__}: {e}")


def resolve(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """`uri` -> (filesystem, path inside it). Raises StorageError naming the URI."""
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError(f"empty storage URI {uri!r}")
    try:
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    except ImportError as e:  # e.g. s3fs / gcsfs not installed
        pkg = DRIVERS.get(scheme(uri))
        fix = f"`pip install {pkg}`" if pkg else f"install the fsspec driver for {scheme(uri)}://"
        raise StorageError(f"cannot open {redact(uri)!r}: the {scheme(uri)}:// filesystem driver is not installed "
                           f"({e}); {fix} (on a cluster: in cluster/runtime_env.yaml's pip list)") from None
    except (ValueError, TypeError) as e:  # unknown protocol, bad options
        raise StorageError(f"cannot open {redact(uri)!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - some drivers authenticate when the filesystem is built
        if is_credentials_error(e, scheme(uri) != "file"):
            raise credentials_error(uri, e) from None
        raise
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
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:  # disk full, killed mid-write: leave no temp file behind
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
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

    Raises StorageError naming `uri` when the location is unreachable, read-only, lacks
    credentials, or is an existing regular file. Nothing but the (deleted) probe is written.
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
        raise as_storage_error(uri, e, f"output {uri!r} is not writable", not is_local(fs)) from None


def list_names(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Base names of the entries directly under `path` ([] if it does not exist)."""
    try:
        entries: Iterable = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)


def list_sizes(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, int]:
    """{base name: size} of the files directly under `path`, in one listing ({} if it does not exist)."""
    try:
        entries: Iterable = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    return {str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
            for e in entries if e.get("type", "file") == "file"}


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
