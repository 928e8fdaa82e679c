"""`evaluate --recs FILE`: another system's lists scored exactly like the built-in systems.

The file (Parquet or CSV) holds one row per recommended item: user, item (original ids, as
in the raw log) and rank (1 = first). Its lists are scored on the held-out period with the
same events, metrics and cut-offs as `evaluate`, beside the simple rules with no LLM (the
strongest, DSIE over unexplored clusters, first) and CoEA's stored lists when they are the
main track's current ones; each comparison has a 95% paired-bootstrap interval. The report
goes to eval-NAME/ (NAME: --name, default the file's stem).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coea_cli import console, metrics, store
from coea_cli.common import Ctx
from coea_cli.errors import ArtifactError, BadInput
from coea_cli.evaluation import plots, systems
from coea_cli.evaluation.report import clean, markdown
from coea_cli.evaluation.stored import serving_options, stored_lists
from coea_cli.evaluation.suite import SIMPLE, baselines, events_at
from coea_cli.evaluation.table import Scores
from coea_cli.options import EvaluateOptions, ServeOptions
from coea_cli.recs.engine import Engine
from coea_cli.workspace import MAIN, Workspace, check_name, read_json

COLUMNS = ("user", "item", "rank")
FULL = "CoEA (full)"


def read_lists(path: Path, ws: Workspace) -> tuple[dict, dict]:
    """{dense user: dense items in rank order} from the file, and what was read. Every
    problem is bad input naming the file, row and column."""
    table = _read(path)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise BadInput(f"{path}: no column(s) {missing}; the file needs user, item, rank")
    table = table.select(list(COLUMNS))
    for col in COLUMNS:
        nulls = table[col].null_count
        if nulls:
            row = int(pc.index(pc.is_null(table[col]), True).as_py())
            raise BadInput(f"{path}: row {row + 1}: column {col} is empty")
    try:
        rank = table["rank"].cast(pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise BadInput(f"{path}: column rank must hold integers") from None
    bad = np.flatnonzero(rank < 1)
    if len(bad):
        raise BadInput(f"{path}: row {bad[0] + 1}: column rank = {rank[bad[0]]}, must be >= 1")
    where = {k: ws.data.file(k).relative_to(ws.root).as_posix() for k in ("users", "items")}
    u = _dense(path, table["user"], ws.original_ids("users"), "user", where["users"])
    i = _dense(path, table["item"], ws.original_ids("items"), "item", where["items"])
    for what, key in (("rank", rank), ("item", i)):
        perm = np.lexsort((key, u))  # stable: of two equal rows the later comes second
        same = (u[perm][1:] == u[perm][:-1]) & (key[perm][1:] == key[perm][:-1])
        if same.any():
            row = int(perm[np.flatnonzero(same)[0] + 1]) + 1
            raise BadInput(f"{path}: row {row}: the user has this {what} twice")
    order = np.lexsort((rank, u))
    u, i = u[order], i[order]
    cuts = np.flatnonzero(np.diff(u)) + 1
    lists = {int(a[0]): b for a, b in zip(np.split(u, cuts), np.split(i, cuts), strict=True)
             if len(a)}  # fmt: skip
    longest = max((len(x) for x in lists.values()), default=0)
    return lists, {"rows": int(table.num_rows), "users": len(lists), "longest": longest}


def _read(path: Path) -> pa.Table:
    if not path.is_file():
        raise BadInput(f"--recs: file not found: {path}")
    try:
        if path.suffix.lower() in (".csv", ".tsv", ".txt"):
            import pyarrow.csv as pacsv

            parse = pacsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            convert = pacsv.ConvertOptions(column_types={"user": pa.string(), "item": pa.string()})
            return pacsv.read_csv(path, parse_options=parse, convert_options=convert)
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
        raise BadInput(f"{path}: not a readable Parquet or CSV file ({e})") from None


def _dense(path: Path, column, originals: list[str], what: str, where: str) -> np.ndarray:
    """Original ids (any type, compared as text) -> dense ids; an unknown id is bad input."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_floating(column.type):  # ids read as floats: whole numbers as integers
        values = column.to_numpy(zero_copy_only=False)
        if np.all(values == np.round(values)):
            column = pa.array(values.astype(np.int64))
    column = column.cast(pa.string())
    index = pc.index_in(column, value_set=pa.array(originals, pa.string()))
    unknown = index.is_null()
    if pc.any(unknown).as_py():
        row = int(pc.index(unknown, True).as_py())
        value = column[row].as_py()
        raise BadInput(f"{path}: row {row + 1}: {what} {value!r} is not in {where}")
    return index.to_numpy(zero_copy_only=False).astype(np.int64)


def run_external(ctx: Ctx[EvaluateOptions]) -> dict | None:
    o, ws = ctx.opts, ctx.ws
    path = Path(o.recs)
    name = check_name("--name", o.name or path.stem)
    ks = o.cutoffs()
    k_max = max(ks)
    out = ws.external_eval(name)
    inputs = [path, ws.data.require("interactions"), ws.items.require("emb")]
    inputs += [ws.sids_dir.require("sids"), ws.groups_dir.require("groups")]
    inputs += [ws.dsie().require("model")]
    if ws.recs().file("table").exists():
        inputs.append(ws.recs().file("table"))
    inputs += [ws.track(t).state_path() for t in ws.tracks()]
    st = ctx.stage(out.path, inputs)
    if ctx.fresh(st):
        report = read_json(out.require("report"), f"evaluate --recs {path}")
        return report if ctx.json else _print(report)
    console.log(metrics.protocol(ks))
    t0 = time.time()
    lists, read = read_lists(path, ws)
    test = int(ws.dataset()["test_period"])
    engine = Engine(ws, test, ctx.device)
    ev = events_at(engine, test)
    scores = Scores(ks, ws.item_embedding("content"))
    serve, stored, rule = _coea(ws, test, k_max)
    baselines(scores, engine, ev, serve, k_max, ctx.seed, o.mmr_lambda, rule)
    if isinstance(stored, dict):
        full = "main track: the stored lists (recs/recs.parquet)"
        scores.add(FULL, ev, systems.from_lists(stored, ev.users, k_max), full, stored)
    else:
        scores.note(FULL, f"not scored: {stored}")
    if name in scores.rows:
        raise BadInput(f"--name {name!r} is the name of a built-in system; choose another")
    recs = np.full((len(ev.users), k_max), -1, dtype=np.int64)
    seen = listed = 0
    for r, u in enumerate(ev.users):
        items = lists.get(int(u))
        if items is None:
            continue
        listed += 1
        recs[r, : min(k_max, len(items))] = items[:k_max]
        seen += int(np.isin(items[:k_max], engine.seen(u)).sum())
    note = (
        f"{path.name}: {read['rows']:,} rows, {read['users']:,} users, lists of up to "
        f"{read['longest']} items; {listed} of the {len(ev.users)} evaluated users have a list "
        f"(a missing list or slot counts as a miss); {seen} of its top-{k_max} slots are items "
        "the user saw before the test period"
    )
    scores.add(name, ev, recs, note)
    comparisons = {f"{name} vs {base}": scores.compare(name, base, ctx.seed) for base in SIMPLE}
    if FULL in scores.rows:
        comparisons[f"{name} vs {FULL}"] = scores.compare(name, FULL, ctx.seed)
    report = {
        "protocol": metrics.protocol(ks),
        "test_period": test,
        "users": len(ev.users),
        "recs_file": {"path": str(path), "sha256": store.sha256_file(path), **read},
        "systems": scores.pooled(),
        "notes": scores.notes,
        "comparisons": comparisons,
        "seconds": round(time.time() - t0, 1),
    }
    with st.write() as tmp:
        store.write_json(out.file("report", tmp), clean(report))
        out.file("markdown", tmp).write_text(markdown(report), encoding="utf-8")
        plots.tradeoff_png(report["systems"], out.file("tradeoff", tmp))
    return clean(report) if ctx.json else _print(report)


def _coea(ws: Workspace, test: int, k: int) -> tuple[ServeOptions, dict | str, object]:
    """The serving options of the stored lists (defaults without any; the baselines built like
    CoEA's lists use them), the lists when they are the main track's current ones for the
    test period (else why not), and the rule without the LLMs chosen beside them (or None)."""
    if not (ws.recs().path / store.MANIFEST).exists():
        return ServeOptions(), "no stored lists (`coea recommend`)", None
    serve, _ = serving_options(ws)
    try:
        main = ws.track(MAIN).require_state()
        stored = stored_lists(ws, main, test, k)
        return serve, stored["lists"], stored["rule"]
    except ArtifactError as e:
        return serve, str(e), None


def _print(report: dict) -> None:
    console.out.print(markdown(report), markup=False)
    return None
