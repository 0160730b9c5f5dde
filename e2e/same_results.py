"""Are two results folders the same results? `python e2e/same_results.py BEFORE AFTER` (exit 0: yes).

The check behind a change that must not change behaviour (a renovation): run the same sweep before and after it,
into two folders, and compare every table (trials, epochs, eval) row for row and column for column, ignoring
only what differs between any two runs (when, how long, where, which commit made it). Prints each differing
column with an example; exit 1 when any differs.
"""
from __future__ import annotations

import json
import sys

import pandas as pd

# what two runs of the same code on the same sweep never share (model_sha256: the checkpoint file's, whose bytes
# say when it was written; the weights are compared through every cell)
VOLATILE = {"run_id", "seconds", "train_seconds", "created_at", "git_commit", "git_dirty", "code_version", "node",
            "node_ip", "node_id", "checkpoint", "out_dir", "lineage", "model_sha256"}
KEYS = {"trials": ["trial_id"], "epochs": ["trial_id", "epoch"],
        "eval": ["trial_id", "quant", "quant_params", "attack", "attack_params", "attack_source", "threat", "eps",
                 "defense", "defense_params", "n", "seed", "corruption", "severity"]}


def tables(folder: str) -> dict[str, pd.DataFrame]:
    import robustgrid
    res = robustgrid.load(folder)
    ev = res.eval
    # a shard's images stay; the Ray node that ran it does not
    ev["shards"] = ev["shards"].map(lambda s: json.dumps([{k: v for k, v in d.items() if k != "node"}
                                                          for d in json.loads(s)]) if isinstance(s, str) else s)
    return {"trials": res.trials, "epochs": res.epochs, "eval": ev}


def differences(before: pd.DataFrame, after: pd.DataFrame, keys: list[str]) -> list[str]:
    out = []
    if len(before) != len(after):
        out.append(f"{len(before)} rows before, {len(after)} after")
    cols = [c for c in before.columns if c not in VOLATILE]
    if set(cols) != {c for c in after.columns if c not in VOLATILE}:
        out.append(f"columns differ: {sorted(set(cols) ^ {c for c in after.columns if c not in VOLATILE})}")
        return out
    a = before[cols].sort_values(keys).reset_index(drop=True)
    b = after[cols].sort_values(keys).reset_index(drop=True)
    if len(a) != len(b):
        return out
    for c in cols:
        same = a[c].equals(b[c]) or (a[c].isna() & b[c].isna() | (a[c] == b[c])).all()
        if not same:
            i = int((~(a[c].isna() & b[c].isna() | (a[c] == b[c]))).to_numpy().nonzero()[0][0])
            out.append(f"{c}: e.g. row {dict(a.loc[i, keys])}: {a.loc[i, c]!r} before, {b.loc[i, c]!r} after")
    return out


def main(argv: list[str]) -> int:
    before, after = tables(argv[0]), tables(argv[1])
    bad = 0
    for name, keys in KEYS.items():
        diff = differences(before[name], after[name], keys)
        print(f"{name}: {len(before[name])} rows, " + ("the same" if not diff else f"{len(diff)} differences"))
        for d in diff:
            print("  " + d)
        bad += bool(diff)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
