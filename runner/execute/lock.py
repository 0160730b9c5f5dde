"""One run at a time per results folder: two runs into one --out would train the same trials into
the same checkpoint files and write every cell twice."""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from ...files import store_of
from ...objectstore import StoreBusy, StoreError, StoreLease
from ..spec import SpecError

LOCK_NAME = ".robustgrid.lock"


class FolderBusy(SpecError):
    """Another robustgrid process holds the results folder."""


class FolderLock:
    """An exclusive flock on <folder>/.robustgrid.lock for the life of the run. The kernel drops it
    when the process ends, however it ends, so a killed run leaves no stale lock behind. A working copy of an
    object store is locked in the store as well (objectstore.StoreLease): runs on other machines share it."""

    def __init__(self, root: Path):
        self.root, self.fd, self.lease = Path(root), None, None

    def __enter__(self) -> FolderLock:
        self._lock_folder()
        where = store_of(self.root)
        if where is not None:
            try:
                self.lease = StoreLease(where[0]).acquire()
            except StoreBusy as e:
                self.__exit__()
                raise FolderBusy(str(e)) from None
            except StoreError as e:
                self.__exit__()
                raise SpecError(str(e)) from None
        return self

    def _lock_folder(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise FolderBusy(f"{self.root}: in use by another robustgrid run ({holder}); wait for it to end "
                             "or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self.fd = fd

    def __exit__(self, *exc) -> None:
        if self.lease is not None:
            self.lease.release()
            if self.lease.lost:
                from ..console import console
                console.print(f"[yellow]warning: {self.lease.store.uri}: this run's lock lease ran out and another "
                              "run took the store over[/yellow]", highlight=False)
            self.lease = None
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def check_out(path: Path) -> None:
    """--out must be a folder robustgrid can write (or create): said before any work starts."""
    if path.exists() and not path.is_dir():
        raise SpecError(f"--out {path}: exists and is not a folder")
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(f"--out {path}: not writable ({existing} does not let this user create files)")
