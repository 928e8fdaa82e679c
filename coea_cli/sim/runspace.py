"""A system's own workspace in the simulation: a copy of the real workspace whose log stops at
the simulation's start and then grows by the items the oracle accepts.

The copy holds what the systems read (data, item and SID artifacts, groups, DSIE, the LLM
backbone, adapters and PCO states); the oracle is never in it. Unchanged files are hard links
(every write replaces a file, never edits one in place).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coea_cli import store
from coea_cli.workspace import Workspace

COPIED = ("data", "items", "sids", "groups", "dsie", "llm", "pco")


def make_runspace(base: Workspace, root: Path, start: int) -> Workspace:
    """Copy `base` into `root` with the log cut before period `start`."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name in COPIED:
        src = base.root / name
        if src.exists():
            shutil.copytree(src, root / name, copy_function=_link)
    ws = Workspace(root)
    table = base.interactions()
    table = table.filter(pc.less(table["period"], start))
    meta = dict(base.dataset())
    meta["periods"] = [r for r in meta["periods"] if r["period"] < start]
    meta["test_period"] = start - 1
    meta["interactions"] = table.num_rows
    _write(ws, table, meta)
    return Workspace(root)


def append_period(ws: Workspace, period: int, users: np.ndarray, items: np.ndarray) -> Workspace:
    """Add accepted (user, item) pairs as `period`; returns a fresh Workspace (no caches)."""
    table = ws.interactions()
    meta = dict(ws.dataset())
    ts = table["timestamp"].to_numpy()
    span = int(ts.max() - ts.min()) // max(1, len(meta["periods"])) if len(ts) else 86400
    start = int(ts.max()) + 1 if len(ts) else 0
    order = np.arange(len(users))
    cols = {
        "user_id": pa.array(users.astype(np.int32)),
        "item_id": pa.array(items.astype(np.int32)),
        "timestamp": pa.array(start + order * max(1, span // max(1, len(users)))),
        "period": pa.array(np.full(len(users), period), type=table.schema.field("period").type),
    }
    new = pa.table(
        {
            f.name: (cols[f.name].cast(f.type) if f.name in cols else pa.nulls(len(users), f.type))
            for f in table.schema
        }
    )
    grown = pa.concat_tables([table, new])
    meta["periods"] = [
        *meta["periods"],
        {"period": period, "interactions": len(users), "users": len(np.unique(users))},
    ]
    meta["test_period"] = period
    meta["interactions"] = grown.num_rows
    _write(ws, grown, meta)
    return Workspace(ws.root)


def _write(ws: Workspace, table: pa.Table, meta: dict) -> None:
    store.write_parquet(ws.data.file("interactions"), table)
    store.write_json(ws.data.file("dataset"), meta)


def _link(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
