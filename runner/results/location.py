"""Where results live: a folder (local or NFS), or an s3:// URI whose working copy robustgrid reads and writes
(objectstore.py). Everything that names a results location (`--out`, `show`, `report`, `eval`, `load`)
turns it into the folder to use here, so the rest of robustgrid only ever sees a folder."""
from __future__ import annotations

import os
from pathlib import Path

from ...files import add_mirror, store_of
from ...objectstore import ObjectStore, StoreError, is_uri, working_copy
from ..console import console

FOR_RUN = ("ray",)                      # Ray Tune keeps its experiment in the store itself (ray_trials.py)
FOR_READING = ("ray", "checkpoints")    # the views read the tables, plots and examples, never the weights


def results_location(value: str | os.PathLike, key: str, skip: tuple[str, ...] = FOR_READING) -> Path:
    """The folder for a results location: a path as given (absolute), or a URI's working copy made equal to the
    store and registered as its mirror (every file written there goes to the store first). A scheme robustgrid
    does not support, a missing bucket or a store that does not answer is a SpecError (exit 2), never a folder
    named `s3:`."""
    from ..spec import SpecError
    if not is_uri(value):
        return Path(value).expanduser().resolve()
    uri = os.fspath(value)
    try:
        store = ObjectStore(uri)
        store.check_bucket()
        local = working_copy(uri)
        counts = store.pull(local, skip)
    except StoreError as e:
        raise SpecError(f"{key}: {e}") from None
    add_mirror(local, store.uri)
    console.print(f"[dim]{store.uri}: {counts['objects']} objects, {counts['downloaded']} fetched into the working "
                  f"copy {local}[/dim]", highlight=False, soft_wrap=True)
    return local


def store_uri(folder: str | os.PathLike) -> str | None:
    """The URI a working copy mirrors (None for a plain folder)."""
    where = store_of(folder)
    return f"{where[0].uri}/{where[1]}".rstrip("/").removesuffix("/.") if where else None


def shown(folder: str | os.PathLike) -> str:
    """How messages name a results folder: its store's URI where it is a working copy."""
    return store_uri(folder) or str(folder)


def refresh(folder: str | os.PathLike, skip: tuple[str, ...] = FOR_RUN) -> None:
    """With the lock held: a working copy made equal to its store again (the run that held the lock before
    may have written since the first pull; a cell it wrote is not computed twice)."""
    where = store_of(folder)
    if where is not None:
        where[0].pull(Path(folder), skip)
