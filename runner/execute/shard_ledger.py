"""Which shards of which cells are on disk: a cell goes to eval/ once, when its last shard has landed.

Both executors run an evaluation as shards (fixed image ranges) and hand each finished shard's rows
here: they are written to shards/ at once (a killed run loses only the shards in flight), and every
cell they complete is merged (runner/evaluate/shards.py) and returned for eval/. On resume the stored
shards count, but only those made by the same code on the same images: a cell never mixes commits.
"""
from __future__ import annotations

from ..evaluate.shards import merge_shards, shard_ranges
from ..provenance import SOFTWARE_FIELDS, software
from ..results import ResultStore
from ..results.store import key_of_row


def cell_key(row: dict) -> tuple:
    """The cell a shard row belongs to, as ResultStore.eval_keys spells it (n: the whole cell's)."""
    return key_of_row(row, n=int(row["cell_n"]))


class ShardLedger:
    def __init__(self, store: ResultStore, n: int, shard_images: int, data_digest: str):
        self.store, self.n, self.data_digest = store, n, data_digest
        self.ranges = shard_ranges(n, shard_images)
        self.done = store.eval_keys()
        self._made_by = {"data_digest": data_digest, **{k: software()[k] for k in SOFTWARE_FIELDS}}
        self._shards: dict[tuple, dict[tuple[int, int], dict]] = {}
        for row in store.read_shards():
            if self._fits(row):
                self._keep(row)

    def _fits(self, row: dict) -> bool:
        """Made on these images by this code: a CIFAR-10-C row carries its corrupted set's digest (the official
        files, md5-checked when fetched, cut to the same first n images), the rest the test set's."""
        made_by = self._made_by if (row.get("corruption") or "none") == "none" else \
            {k: v for k, v in self._made_by.items() if k != "data_digest"}
        return (row["cell_n"] == self.n and (row["shard_start"], row["shard_stop"]) in self.ranges
                and all(row.get(k) == v for k, v in made_by.items()))

    def _keep(self, row: dict) -> tuple:
        key = cell_key(row)
        self._shards.setdefault(key, {})[(int(row["shard_start"]), int(row["shard_stop"]))] = row
        return key

    def done_in(self, shard: tuple[int, int]) -> set[tuple]:
        """Cells a shard need not compute: whole in eval/, or this shard of them already stored."""
        return self.done | {k for k, parts in self._shards.items() if shard in parts}

    def shards_left(self, cell_keys: set[tuple], shard: tuple[int, int]) -> bool:
        """Whether any of these cells still needs this shard."""
        return bool(cell_keys - self.done_in(shard))

    def add(self, rows: list[dict]) -> list[dict]:
        """Store a task's shard rows; return the rows of the cells they complete (each cell once)."""
        self.store.append_shards(rows)
        return self._complete({self._keep(r) for r in rows})

    def landed_before(self) -> list[dict]:
        """Cells whose every shard was stored by an earlier run that stopped before writing the cell."""
        return self._complete(set(self._shards))

    def _complete(self, keys: set[tuple]) -> list[dict]:
        out = []
        for key in sorted(keys, key=str):
            parts = self._shards.get(key, {})
            if key in self.done or any(r not in parts for r in self.ranges):
                continue
            out.append(merge_shards([parts[r] for r in self.ranges]))
            self.done.add(key)
        return out
