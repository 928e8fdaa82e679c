"""Raw log -> canonical tables: filters, dense ids, chronological periods.

All work is vectorised with numpy/pyarrow so that tens of millions of interactions go
through in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coea_cli.data.readers import RawLog
from coea_cli.errors import BadInput


@dataclass
class Prepared:
    interactions: pa.Table  # user_id, item_id, timestamp, [rating], period (time-sorted)
    items: pa.Table  # item_id, original_id, title, year, categories, ...
    users: pa.Table  # user_id, original_id, attributes...
    stats: dict = field(default_factory=dict)


def parse_periods(spec: str) -> list[float]:
    """`0.6,0.1,0.1,0.1,0.1` (fractions summing to 1) or `N` (N equal slices)."""
    spec = str(spec).strip()
    if "," not in spec and "." not in spec:
        try:
            n = int(spec)
        except ValueError:
            raise BadInput(
                f"--periods: expected N or a comma list of fractions, got {spec!r}"
            ) from None
        if n < 2:
            raise BadInput("--periods: need at least 2 periods (training and test)")
        return [1.0 / n] * n
    try:
        fracs = [float(x) for x in spec.split(",")]
    except ValueError:
        raise BadInput(f"--periods: not a list of numbers: {spec!r}") from None
    if len(fracs) < 2 or any(f <= 0 for f in fracs):
        raise BadInput("--periods: need at least 2 positive fractions")
    if abs(sum(fracs) - 1.0) > 1e-6:
        raise BadInput(f"--periods: fractions sum to {sum(fracs):.6g}, not 1")
    return fracs


def _codes(col) -> tuple[np.ndarray, pa.Array]:
    """Factorise a column: integer codes and the distinct original values (as strings)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    enc = pc.dictionary_encode(col)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), pc.cast(
        enc.dictionary, pa.string()
    )


def kcore(users: np.ndarray, items: np.ndarray, min_user: int, min_item: int) -> np.ndarray:
    """Boolean mask of interactions kept by the iterated k-core filter."""
    keep = np.ones(len(users), dtype=bool)
    if min_user <= 1 and min_item <= 1:
        return keep
    nu, ni = int(users.max()) + 1, int(items.max()) + 1
    while True:
        cu = np.bincount(users[keep], minlength=nu)
        ci = np.bincount(items[keep], minlength=ni)
        new = keep & (cu[users] >= min_user) & (ci[items] >= min_item)
        if new.sum() == keep.sum():
            return keep
        keep = new


def duplicate_mask(keys: list[np.ndarray]) -> np.ndarray:
    """True for rows that repeat an earlier row exactly (first occurrence in file order kept)."""
    order = np.lexsort(keys[::-1])  # stable: equal rows stay in file order
    same = np.ones(len(order) - 1, dtype=bool) if len(order) > 1 else np.zeros(0, dtype=bool)
    for k in keys:
        s = k[order]
        same &= s[1:] == s[:-1]
    dup = np.zeros(len(order), dtype=bool)
    dup[order[1:][same]] = True
    return dup


def period_bounds(ts_sorted: np.ndarray, fracs: list[float]) -> np.ndarray:
    """Row indices splitting time-sorted rows into periods; never splits equal timestamps."""
    n = len(ts_sorted)
    cuts = np.round(np.cumsum(fracs)[:-1] * n).astype(np.int64)
    # Move each cut forward past rows sharing the timestamp just before it.
    cuts = np.searchsorted(ts_sorted, ts_sorted[np.clip(cuts - 1, 0, n - 1)], side="right")
    cuts = np.maximum.accumulate(np.clip(cuts, 0, n))
    return np.concatenate([[0], cuts, [n]])


def prepare_log(
    raw: RawLog,
    *,
    min_user: int = 5,
    min_item: int = 5,
    rating_threshold: float | None = None,
    dedup: bool = True,
    periods: str = "0.6,0.1,0.1,0.1,0.1",
) -> Prepared:
    fracs = parse_periods(periods)
    t = raw.interactions
    n_raw = t.num_rows
    if n_raw == 0:
        raise BadInput(f"{raw.source}: no interactions")
    u, user_values = _codes(t["user"])
    i, item_values = _codes(t["item"])
    ts = t["timestamp"].to_numpy()
    rating = t["rating"].to_numpy().astype(np.float32) if "rating" in t.column_names else None
    counts = {"raw": _count(u, i)}
    keep = np.ones(n_raw, dtype=bool)

    if rating_threshold is not None:
        if rating is None:
            raise BadInput(f"{raw.source}: --rating-threshold given but the log has no rating")
        keep &= rating >= rating_threshold
        counts["after_rating_threshold"] = _count(u[keep], i[keep])
    if dedup:
        idx = np.flatnonzero(keep)
        keys = [u[idx], i[idx], ts[idx]] + ([rating[idx]] if rating is not None else [])
        keep[idx[duplicate_mask(keys)]] = False
        counts["after_dedup"] = _count(u[keep], i[keep])
    idx = np.flatnonzero(keep)
    sub = kcore(u[idx], i[idx], min_user, min_item)
    keep[idx[~sub]] = False
    counts["after_kcore"] = _count(u[keep], i[keep])
    if not keep.any():
        raise BadInput(
            f"{raw.source}: no interactions left after the filters "
            f"(min_user={min_user}, min_item={min_item}, rating_threshold={rating_threshold})"
        )

    idx = np.flatnonzero(keep)
    order = idx[np.argsort(ts[idx], kind="stable")]  # ties keep file order
    ts_s = ts[order]
    # Dense ids in order of first appearance in time.
    user_id, user_orig = _dense(u[order])
    item_id, item_orig = _dense(i[order])
    bounds = period_bounds(ts_s, fracs)
    period = np.repeat(np.arange(len(fracs), dtype=np.int16), np.diff(bounds))

    cols = {
        "user_id": pa.array(user_id.astype(np.int32)),
        "item_id": pa.array(item_id.astype(np.int32)),
        "timestamp": pa.array(ts_s),
    }
    if rating is not None:
        cols["rating"] = pa.array(rating[order])
    cols["period"] = pa.array(period)
    interactions = pa.table(cols)
    items = _join_meta(pc.take(item_values, pa.array(item_orig)), raw.items, "item_id", raw.source)
    users = _join_meta(pc.take(user_values, pa.array(user_orig)), raw.users, "user_id", raw.source)
    stats = {
        "counts": counts,
        "filters": {
            "min_user": min_user,
            "min_item": min_item,
            "rating_threshold": rating_threshold,
            "dedup": dedup,
        },
        "periods": period_table(ts_s, user_id, item_id, bounds),
    }
    return Prepared(interactions, items, users, stats)


def _count(u: np.ndarray, i: np.ndarray) -> dict:
    return {
        "interactions": len(u),
        "users": len(np.unique(u)) if len(u) else 0,
        "items": len(np.unique(i)) if len(i) else 0,
    }


def _dense(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber codes 0..n-1 in order of first appearance; also return old code per new id."""
    uniq, first = np.unique(codes, return_index=True)
    by_first = np.argsort(first)
    old_of_new = uniq[by_first]
    new_of_old = np.empty(int(uniq.max()) + 1, dtype=np.int64)
    new_of_old[old_of_new] = np.arange(len(old_of_new))
    return new_of_old[codes], old_of_new


def period_table(ts, users, items, bounds) -> list[dict]:
    rows = []
    for p in range(len(bounds) - 1):
        a, b = int(bounds[p]), int(bounds[p + 1])
        rows.append(
            {
                "period": p,
                "start": int(ts[a]) if b > a else None,
                "end": int(ts[b - 1]) if b > a else None,
                "interactions": b - a,
                "users": len(np.unique(users[a:b])),
                "items": len(np.unique(items[a:b])),
            }
        )
    return rows


def _join_meta(original: pa.Array, meta: pa.Table | None, id_name: str, source: str) -> pa.Table:
    """Table of dense id + original id, with metadata columns joined by original id."""
    n = len(original)
    base = pa.table({id_name: pa.array(np.arange(n, dtype=np.int32)), "original_id": original})
    if id_name == "item_id":
        base = base.append_column("title", pa.nulls(n, pa.string()))
        base = base.append_column("year", pa.nulls(n, pa.int32()))
        base = base.append_column("categories", pa.array([[]] * n, pa.list_(pa.string())))
    if meta is None or meta.num_rows == 0:
        return base
    ids = meta["original_id"]
    if pc.count_distinct(ids).as_py() != meta.num_rows:
        raise BadInput(f"{source}: {id_name.split('_')[0]} table has duplicate ids")
    pos = pc.index_in(original, value_set=ids)
    matched = pc.fill_null(pos, -1).to_numpy(zero_copy_only=False)
    for name in meta.column_names:
        if name == "original_id":
            continue
        col = meta[name].combine_chunks()
        taken = pc.take(col, pa.array(np.where(matched >= 0, matched, 0)))
        taken = pc.if_else(pa.array(matched >= 0), taken, pa.nulls(n, col.type))
        if name == "categories":
            taken = pc.fill_null(taken, pa.scalar([], pa.list_(pa.string())))
        if name in base.column_names:
            base = base.set_column(base.column_names.index(name), name, taken)
        else:
            base = base.append_column(name, taken)
    return base


def append_log(
    existing: Prepared, raw: RawLog, *, rating_threshold: float | None, dedup: bool
) -> Prepared:
    """Add a new period of logs: known users/items keep their ids, new ones get new ids."""
    old = existing.interactions
    t = raw.interactions
    if t.num_rows == 0:
        raise BadInput(f"{raw.source}: no interactions")
    last_ts = int(pc.max(old["timestamp"]).as_py())
    ts = t["timestamp"].to_numpy()
    if ts.min() < last_ts:
        raise BadInput(
            f"{raw.source}: column timestamp: appended interactions start at {int(ts.min())}, "
            f"before the workspace's last interaction ({last_ts})"
        )
    keep = np.ones(t.num_rows, dtype=bool)
    rating = t["rating"].to_numpy().astype(np.float32) if "rating" in t.column_names else None
    if rating_threshold is not None and rating is not None:
        keep &= rating >= rating_threshold
    users, new_users = _map_ids(t["user"], existing.users["original_id"])
    items, new_items = _map_ids(t["item"], existing.items["original_id"])
    if dedup:
        keys = [users, items, ts] + ([rating] if rating is not None else [])
        keep &= ~duplicate_mask(keys)
    idx = np.flatnonzero(keep)
    order = idx[np.argsort(ts[idx], kind="stable")]
    if len(order) == 0:
        raise BadInput(f"{raw.source}: no interactions left after the filters")
    period = int(pc.max(old["period"]).as_py()) + 1
    cols = {
        "user_id": pa.array(users[order].astype(np.int32)),
        "item_id": pa.array(items[order].astype(np.int32)),
        "timestamp": pa.array(ts[order]),
    }
    if "rating" in old.column_names:
        r = rating[order] if rating is not None else np.full(len(order), np.nan, np.float32)
        cols["rating"] = pa.array(r)
    cols["period"] = pa.array(np.full(len(order), period, dtype=np.int16))
    added = pa.table(cols).cast(old.schema)
    interactions = pa.concat_tables([old, added])

    n_old_items = existing.items.num_rows
    items_new = _join_meta(
        pc.cast(pa.array(new_items), pa.string()), raw.items, "item_id", raw.source
    )
    items_new = items_new.set_column(
        0, "item_id", pa.array(np.arange(n_old_items, n_old_items + len(new_items), dtype=np.int32))
    )
    n_old_users = existing.users.num_rows
    users_new = _join_meta(
        pc.cast(pa.array(new_users), pa.string()), raw.users, "user_id", raw.source
    )
    users_new = users_new.set_column(
        0, "user_id", pa.array(np.arange(n_old_users, n_old_users + len(new_users), dtype=np.int32))
    )
    stats = dict(existing.stats)
    new_ts = ts[order]
    rows = list(stats.get("periods", []))
    rows.append(
        {
            "period": period,
            "start": int(new_ts[0]),
            "end": int(new_ts[-1]),
            "interactions": len(order),
            "users": len(np.unique(users[order])),
            "items": len(np.unique(items[order])),
            "appended_from": raw.source,
            "new_users": len(new_users),
            "new_items": len(new_items),
        }
    )
    stats["periods"] = rows
    return Prepared(
        interactions,
        _concat_meta(existing.items, items_new),
        _concat_meta(existing.users, users_new),
        stats,
    )


def _map_ids(col, known: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Map original ids to existing dense ids; unseen ids get new ids after the known ones."""
    col = pc.cast(col, pa.string())
    pos = pc.index_in(col, value_set=known).to_numpy(zero_copy_only=False)
    pos = np.where(np.isnan(pos.astype(float)), -1, pos).astype(np.int64)
    new_mask = pos < 0
    new_ids: list[str] = []
    if new_mask.any():
        values = np.asarray(col.to_pylist(), dtype=object)[new_mask]
        uniq, first = np.unique(values, return_index=True)
        new_ids = list(uniq[np.argsort(first)])
        lookup = {v: len(known) + k for k, v in enumerate(new_ids)}
        pos[new_mask] = [lookup[v] for v in values]
    return pos, new_ids


def _concat_meta(old: pa.Table, new: pa.Table) -> pa.Table:
    if new.num_rows == 0:
        return old
    cols = {}
    for name in old.column_names:
        if name in new.column_names:
            cols[name] = pc.cast(new[name], old.schema.field(name).type)
        else:
            cols[name] = pa.nulls(new.num_rows, old.schema.field(name).type)
    return pa.concat_tables([old, pa.table(cols, schema=old.schema)])
