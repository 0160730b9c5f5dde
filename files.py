"""One way to write a file: atomically, with the permissions any new file of the user's gets, and, inside a
results folder that is the working copy of an object store (objectstore.py), in the store first."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import uuid
from pathlib import Path
from typing import IO, Iterator

# {working copy: store URI}, in the environment so the trials and tasks this process starts inherit it
MIRRORS_ENV = "ROBUSTGRID_MIRRORS"


def mirrors() -> dict[str, str]:
    return json.loads(os.environ.get(MIRRORS_ENV) or "{}")


def add_mirror(local: str | os.PathLike, uri: str) -> None:
    """Files written under `local` (by this process and those it starts) go to the store at `uri` too."""
    adopt_mirrors({str(Path(local).resolve()): uri})


def adopt_mirrors(more: dict[str, str] | str | None) -> None:
    """In a trial or task: the driver's mirrors (handed over explicitly, Ray may have started us before), as a
    dict or its JSON (a searcher's parameter space takes a string whole, where it would split a dict's keys)."""
    if isinstance(more, str):
        more = json.loads(more or "{}")
    if more:
        os.environ[MIRRORS_ENV] = json.dumps({**mirrors(), **more}, sort_keys=True)


def store_of(path: str | os.PathLike):
    """(ObjectStore, key relative to its prefix) where `path` lies in a working copy, else None."""
    path = Path(path).resolve()
    for local, uri in mirrors().items():
        if path.is_relative_to(local):
            return _store(uri), path.relative_to(local).as_posix()
    return None


@functools.lru_cache(maxsize=8)
def _store(uri: str):
    from .objectstore import ObjectStore
    return ObjectStore(uri)


def ensure_local(path: str | os.PathLike) -> bool:
    """Whether the file is here, fetching it from the store first where it lies in a working copy
    (a checkpoint a trial on another node wrote)."""
    path = Path(path)
    if path.is_file():
        return True
    where = store_of(path)
    if where is None or not where[0].has(where[1]):
        return False
    where[0].get(where[1], path)
    return True


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """os.replace, in the store as well where the folder is a working copy."""
    where, to = store_of(src), store_of(dst)
    if where is not None and to is not None and where[0].has(where[1]):
        where[0].move(where[1], to[1])
    os.replace(src, dst)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary file beside `path`, then rename it into place.

    A crash or an exception mid-write leaves the old file (or none) and no temporary behind.
    The temporary is created with mode 0666 minus the umask, as open() would create `path`
    itself (tempfile.mkstemp's 0600 would make results unreadable to the user's group).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:     # say which file could not be written
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def _publish(tmp: Path, path: Path) -> None:
    """Upload before the rename: a working copy never holds a file its store lacks. The temporary takes the
    object's mtime, so the next pull sees the two as one."""
    where = store_of(path)
    if where is not None:
        mtime = where[0].put(tmp, where[1])
        os.utime(tmp, (mtime, mtime))


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
