"""Where backbones (and other built artefacts) are cached, and how an entry is made once.

$TART_CACHE (default ~/.cache/tart) holds `backbones/` (converted or built models) and
`datasets/` (synthesised audio). `materialise` writes an entry to a temporary folder and
renames it into place under a file lock, so two processes that build at once neither clash
nor leave a half-written entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

CACHE_META = "tart_backbone.json"


def tart_cache_dir() -> Path:
    """The project's cache folder: $TART_CACHE, default ~/.cache/tart."""
    base = os.environ.get("TART_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "tart"


def cache_root() -> Path:
    """Where converted/built backbones live: <tart_cache_dir>/backbones."""
    return tart_cache_dir() / "backbones"


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def materialise(final: Path, build: Callable[[Path], dict]) -> Path:
    """Make cache entry `final` once: `build(tmp_dir)` writes the files and returns metadata.

    The entry appears atomically (temp folder, then rename) and a lock keeps a second
    process from building it again; a process that finds it complete just returns it.
    """
    final = Path(final)
    if (final / CACHE_META).is_file():
        return final
    with _file_lock(final.parent / f".{final.name}.lock"):
        if (final / CACHE_META).is_file():  # another process finished while we waited
            return final
        if final.exists():  # leftover of an interrupted, non-atomic writer: replace it
            shutil.rmtree(final, ignore_errors=True)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            meta = build(tmp)
            (tmp / CACHE_META).write_text(json.dumps({**meta, "created": time.time()}, indent=2, sort_keys=True))
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def read_cache_meta(folder: Path) -> dict:
    return json.loads((Path(folder) / CACHE_META).read_text())


_HASH_MEMO: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Full sha256 (hex) of one file; memoised per path, size and mtime."""
    p = Path(path)
    st = p.stat()
    key = ("file", str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASH_MEMO[key] = h.hexdigest()
    return _HASH_MEMO[key]


def content_hash(folder: str | os.PathLike) -> str:
    """sha256 (16 hex) over a model folder's config and weight files; memoised per size+mtime."""
    folder = Path(folder)
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and (p.suffix in (".safetensors", ".gguf")
                            or p.name in ("config.json", "tokenizer.json", "model.bin"))
    )
    key = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files) + (str(folder),)
    if key in _HASH_MEMO:
        return _HASH_MEMO[key]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    _HASH_MEMO[key] = h.hexdigest()[:16]
    return _HASH_MEMO[key]
