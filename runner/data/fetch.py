"""Fetching a published file: streamed into a temporary beside its place, its md5 checked against the one its
authors publish, then renamed into place (a failed or corrupt download leaves nothing behind); one process
fetches a data set while any other waits on its flock, then reads what was fetched."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import time
import urllib.request
import uuid
from pathlib import Path

LOCK_WAIT_S = 2400     # longer than one fetch may take


class DownloadError(RuntimeError):
    """The data set could not be fetched; the message says what to do."""


def md5_of(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_verified(url: str, dest: Path, md5: str, timeout_s: float = 30) -> None:
    """`url` into `dest`, whole and with the published md5, or a DownloadError and no file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
        got = md5_of(tmp)
        if got != md5:
            raise DownloadError(f"{url}: md5 {got}, published {md5} (a corrupt or tampered download); nothing kept")
        os.replace(tmp, dest)
    except OSError as e:          # unreachable host, refused, timed out, HTTP error
        raise DownloadError(f"{url}: {type(e).__name__}: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def fetch_lock(root: Path, name: str, say):
    """An exclusive flock on <root>/.<name>.lock; the kernel drops it however the holder ends."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline, told = time.monotonic() + LOCK_WAIT_S, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    say(f"another process is fetching {name} into {root}; waiting for it")
                    told = True
                if time.monotonic() > deadline:
                    raise DownloadError(f"{root / f'.{name}.lock'}: held by another process for over "
                                        f"{LOCK_WAIT_S} s; remove it if no fetch is running") from None
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)     # closing the descriptor releases the lock
