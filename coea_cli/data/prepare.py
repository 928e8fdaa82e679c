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


def _codes(col) -> np.ndarray:
    """Factorise a column into int32 codes (0..n-1 in order of first appearance)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    enc = pc.dictionary_encode(col)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)


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


def row_hash(keys: list[np.ndarray]) -> np.ndarray:
    """A 64-bit hash per row of the given key columns (splitmix-style mixing)."""
    h = np.zeros(len(keys[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j, k in enumerate(keys):
            v = np.ascontiguousarray(k)
            v = v.view(np.uint32 if v.dtype.itemsize == 4 else np.uint64).astype(np.uint64)
            h ^= v * np.uint64(0x9E3779B97F4A7C15 + 2 * j)
            h = (h ^ (h >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)
    return h


def duplicate_mask(keys: list[np.ndarray]) -> np.ndarray:
    """True for rows that repeat an earlier row exactly (first occurrence in file order kept).

    Rows are grouped by a 64-bit hash (one sort instead of a lexsort over every key); equality
    is checked on the keys themselves, and rows whose hash collides with a different row are
    decided exactly by a lexsort over those rows only.
    """
    n = len(keys[0])
    dup = np.zeros(n, dtype=bool)
    if n < 2:
        return dup
    h = row_hash(keys)
    order = np.argsort(h, kind="stable")  # equal hashes keep file order
    hs = h[order]
    same_hash = hs[1:] == hs[:-1]
    equal = same_hash.copy()
    for k in keys:
        s = k[order]
        equal &= s[1:] == s[:-1]
    dup[order[1:][equal]] = True
    clash = same_hash & ~equal
    if clash.any():
        rows = np.flatnonzero(np.isin(h, hs[1:][clash]))
        dup[rows] = False
        r = rows[np.lexsort([k[rows] for k in keys[::-1]])]  # stable: file order within ties
        eq = np.ones(len(r) - 1, dtype=bool)
        for k in keys:
            eq &= k[r][1:] == k[r][:-1]
        dup[r[1:][eq]] = True
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
    min_user: int,
    min_item: int,
    rating_threshold: float | None,
    dedup: bool,
    fractions: list[float],
) -> Prepared:
    """Filter, renumber and split a raw log. Consumes `raw.interactions` to save memory.

    One function over ~85 lines on purpose: every step works on the same sorted arrays, and
    freeing each intermediate as soon as it is used keeps the peak memory under 3x the log.

    The log is sorted by time once (stable, so ties keep file order); every filter then
    works on the sorted arrays, and dense ids follow the order of first appearance in time.
    """
    fracs = fractions
    t = raw.interactions
    raw.interactions = None
    if t.num_rows == 0:
        raise BadInput(f"{raw.source}: no interactions")
    user_enc = pc.dictionary_encode(t["user"].combine_chunks())
    item_enc = pc.dictionary_encode(t["item"].combine_chunks())
    ts = t["timestamp"].combine_chunks().to_numpy(zero_copy_only=False)
    rating = None
    if "rating" in t.column_names:
        rating = pc.cast(t["rating"], pa.float32()).combine_chunks()
        rating = rating.to_numpy(zero_copy_only=False)
    del t
    order = None if np.all(ts[1:] >= ts[:-1]) else np.argsort(ts, kind="stable")
    if order is not None:
        ts = ts[order]
    u = _gather(user_enc.indices, order)
    i = _gather(item_enc.indices, order)
    user_dict, item_dict = user_enc.dictionary, item_enc.dictionary
    del user_enc, item_enc
    if rating is not None and order is not None:
        rating = rating[order]
    del order
    counts = {"raw": _count(u, i)}
    keep = np.ones(len(ts), dtype=bool)
    if rating_threshold is not None:
        if rating is None:
            raise BadInput(f"{raw.source}: --rating-threshold given but the log has no rating")
        keep &= rating >= rating_threshold
        counts["after_rating_threshold"] = _count(u[keep], i[keep])
    if dedup:
        keep &= ~sorted_duplicate_mask(ts, [u, i] + ([rating] if rating is not None else []))
        counts["after_dedup"] = _count(u[keep], i[keep])
    idx = np.flatnonzero(keep)
    keep[idx[~kcore(u[idx], i[idx], min_user, min_item)]] = False
    del idx
    if not keep.any():
        raise BadInput(
            f"{raw.source}: no interactions left after the filters "
            f"(min_user={min_user}, min_item={min_item}, rating_threshold={rating_threshold})"
        )
    if not keep.all():
        ts, u, i = ts[keep], u[keep], i[keep]
        rating = rating[keep] if rating is not None else None
    del keep
    # Dense ids in order of first appearance in time (dictionary encoding keeps that order).
    user_id, user_values = _renumber(u, user_dict)
    del u
    item_id, item_values = _renumber(i, item_dict)
    del i
    counts["after_kcore"] = _count(user_id, item_id)
    bounds = period_bounds(ts, fracs)
    period = np.repeat(np.arange(len(fracs), dtype=np.int16), np.diff(bounds))
    cols = {"user_id": user_id, "item_id": item_id, "timestamp": ts}
    if rating is not None:
        cols["rating"] = rating
    cols["period"] = period
    interactions = pa.table({k: pa.array(v) for k, v in cols.items()})
    stats = {
        "counts": counts,
        "filters": {
            "min_user": min_user,
            "min_item": min_item,
            "rating_threshold": rating_threshold,
            "dedup": dedup,
        },
        "periods": period_table(ts, user_id, item_id, bounds),
    }
    items = _join_meta(item_values, raw.items, "item_id")
    users = _join_meta(user_values, raw.users, "user_id")
    return Prepared(interactions, items, users, stats)


def _gather(codes: pa.Array, order: np.ndarray | None) -> np.ndarray:
    a = codes.to_numpy(zero_copy_only=False)
    return (a if order is None else a[order]).astype(np.int32, copy=False)


def _renumber(codes: np.ndarray, dictionary: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Codes -> 0..n-1 in order of first appearance, and the original id (string) per new id."""
    enc = pc.dictionary_encode(pa.array(codes))
    new = enc.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return new, pc.cast(pc.take(dictionary, enc.dictionary), pa.string())


def sorted_duplicate_mask(ts_sorted: np.ndarray, keys: list[np.ndarray]) -> np.ndarray:
    """duplicate_mask for a log sorted by time: only rows sharing a timestamp can repeat."""
    n = len(ts_sorted)
    dup = np.zeros(n, dtype=bool)
    if n < 2:
        return dup
    tie = ts_sorted[1:] == ts_sorted[:-1]
    cand = np.zeros(n, dtype=bool)
    cand[1:] |= tie
    cand[:-1] |= tie
    rows = np.flatnonzero(cand)
    if len(rows):
        dup[rows] = duplicate_mask([ts_sorted[rows]] + [k[rows] for k in keys])
    return dup


def _count(u: np.ndarray, i: np.ndarray) -> dict:
    return {"interactions": len(u), "users": _distinct(u), "items": _distinct(i)}


def _distinct(codes: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(codes))) if len(codes) else 0


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
                "users": _distinct(users[a:b]),
                "items": _distinct(items[a:b]),
            }
        )
    return rows


def _join_meta(original: pa.Array, meta: pa.Table | None, id_name: str) -> pa.Table:
    """Table of dense id + original id, with metadata columns joined by original id."""
    n = len(original)
    base = pa.table({id_name: pa.array(np.arange(n, dtype=np.int32)), "original_id": original})
    if id_name == "item_id":
        base = base.append_column("title", pa.nulls(n, pa.string()))
        base = base.append_column("year", pa.nulls(n, pa.int32()))
        base = base.append_column("categories", pa.array([[]] * n, pa.list_(pa.string())))
    if meta is None or meta.num_rows == 0:
        return base
    ids = meta["original_id"]  # each id once: the readers check it
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
    items_new = _join_meta(pc.cast(pa.array(new_items), pa.string()), raw.items, "item_id")
    items_new = items_new.set_column(
        0, "item_id", pa.array(np.arange(n_old_items, n_old_items + len(new_items), dtype=np.int32))
    )
    n_old_users = existing.users.num_rows
    users_new = _join_meta(pc.cast(pa.array(new_users), pa.string()), raw.users, "user_id")
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
