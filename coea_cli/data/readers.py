"""Readers that turn raw logs into one canonical form.

Every reader returns a `RawLog`: an interactions table with columns user, item, timestamp
(int64 seconds) and optionally rating, in file order; an items table keyed by `original_id`
(string) with title, year, categories and any text fields; a users table keyed by
`original_id` with attributes. Every value is checked where it enters (`values`): bad input
raises BadInput naming the file, line or row, and column.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from coea_cli.data import values
from coea_cli.errors import BadInput

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip
FORMATS = ("ml-100k", "ml-1m", "recbole", "table")
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


@dataclass
class RawLog:
    interactions: pa.Table  # user, item, timestamp[, rating]
    items: pa.Table | None  # original_id, title, year, categories, ...
    users: pa.Table | None  # original_id, attributes...
    source: str


# ---------------------------------------------------------------- source access


class Source:
    """A folder or a zip file; files are found by name anywhere inside."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise BadInput(f"source not found: {self.path}")
        self.zip = None
        if zipfile.is_zipfile(self.path):
            try:
                self.zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as e:
                raise BadInput(f"{self.path}: not a readable zip file ({e})") from None
        if self.zip is None and not self.path.is_dir():
            raise BadInput(f"{self.path}: expected a folder or a zip file")

    def find(self, name: str, required: bool = True) -> str | None:
        if self.zip is not None:
            hits = [n for n in self.zip.namelist() if n.rsplit("/", 1)[-1] == name]
        else:
            hits = [str(p) for p in sorted(self.path.rglob(name)) if p.is_file()]
        if not hits:
            if required:
                raise BadInput(f"{self.path}: missing file {name}")
            return None
        return hits[0]

    def read(self, name: str) -> bytes:
        if self.zip is None:
            return Path(name).read_bytes()
        try:
            return self.zip.read(name)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise BadInput(f"{self.label(name)}: cannot be read from the zip ({e})") from None

    def label(self, name: str) -> str:
        return f"{self.path}:{name}" if self.zip is not None else name


def _decode(data: bytes, label: str, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BadInput(f"{label}: line {line}: not valid {encoding} text ({e.reason})") from None


def _split_lines(text: str, sep: str, ncols: int, label: str, min_cols: int | None = None):
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) < (min_cols or ncols):
            raise BadInput(f"{label}: line {lineno}: expected {ncols} fields separated by {sep!r}")
        rows.append(parts)
    if not rows:
        raise BadInput(f"{label}: file is empty")
    return rows


def _ratings_table(rows, label: str) -> pa.Table:
    cols = list(zip(*rows, strict=False))
    times = values.int_column(cols[3], label, "timestamp")
    return pa.table(
        {
            "user": values.ids(pa.array([s.strip() for s in cols[0]]), label, "user"),
            "item": values.ids(pa.array([s.strip() for s in cols[1]]), label, "item"),
            "timestamp": values.in_range(times, label, "timestamp"),
            "rating": values.ratings(pa.array([s.strip() for s in cols[2]]), label, "rating"),
        }
    )


# ---------------------------------------------------------------- GroupLens formats


def read_ml100k(path: Path) -> RawLog:
    src = Source(path)
    data = src.find("u.data")
    rows = _split_lines(_decode(src.read(data), src.label(data), "latin-1"), "\t", 4, data)
    inter = _ratings_table(rows, src.label(data))

    items = None
    name = src.find("u.item", required=False)
    if name:
        text = _decode(src.read(name), src.label(name), "latin-1")
        recs = _split_lines(text, "|", 24, src.label(name), min_cols=5)
        ids, titles, years, cats = [], [], [], []
        for r in recs:
            title, year = _title_year(r[1])
            if year is None and r[2][-4:].isdigit():
                year = int(r[2][-4:])
            flags = r[5:24]
            ids.append(r[0].strip())
            titles.append(title)
            years.append(year)
            cats.append([g for g, f in zip(ML100K_GENRES, flags, strict=False) if f.strip() == "1"])
        items = _items_table(ids, titles, years, cats, src.label(name))

    users = None
    name = src.find("u.user", required=False)
    if name:
        text = _decode(src.read(name), src.label(name), "latin-1")
        recs = _split_lines(text, "|", 5, src.label(name))
        users = pa.table(
            {
                "original_id": _user_ids([r[0] for r in recs], src.label(name)),
                "age": values.int_column([r[1] for r in recs], src.label(name), "age"),
                "gender": [r[2] for r in recs],
                "occupation": [r[3] for r in recs],
                "zip": [r[4] for r in recs],
            }
        )
    return RawLog(inter, items, users, str(path))


def read_ml1m(path: Path) -> RawLog:
    src = Source(path)
    name = src.find("ratings.dat")
    rows = _split_lines(_decode(src.read(name), src.label(name), "latin-1"), "::", 4, name)
    inter = _ratings_table(rows, src.label(name))

    items = None
    name = src.find("movies.dat", required=False)
    if name:
        recs = _split_lines(_decode(src.read(name), src.label(name), "latin-1"), "::", 3, name)
        ids, titles, years, cats = [], [], [], []
        for r in recs:
            title, year = _title_year(r[1])
            ids.append(r[0].strip())
            titles.append(title)
            years.append(year)
            cats.append([g for g in r[2].split("|") if g])
        items = _items_table(ids, titles, years, cats, src.label(name))

    users = None
    name = src.find("users.dat", required=False)
    if name:
        recs = _split_lines(_decode(src.read(name), src.label(name), "latin-1"), "::", 5, name)
        occ = values.int_column([r[3] for r in recs], src.label(name), "occupation")
        users = pa.table(
            {
                "original_id": _user_ids([r[0] for r in recs], src.label(name)),
                "age": values.int_column([r[2] for r in recs], src.label(name), "age"),
                "gender": [r[1] for r in recs],
                "occupation": [
                    ML1M_OCCUPATIONS[o] if 0 <= o < len(ML1M_OCCUPATIONS) else str(o) for o in occ
                ],
                "zip": [r[4] for r in recs],
            }
        )
    return RawLog(inter, items, users, str(path))


def _title_year(raw: str) -> tuple[str, int | None]:
    m = _TITLE_YEAR.match(raw.strip())
    if m:
        return m.group(1), int(m.group(2))
    return raw.strip(), None


def _user_ids(cells: list[str], label: str) -> pa.Array:
    return values.unique_ids(pa.array([c.strip() for c in cells], pa.string()), label, "user")


def _items_table(ids, titles, years, cats, label: str, column: str = "item") -> pa.Table:
    """Items by original id (checked: exact text, each once) with title, year, categories."""
    ids = ids if isinstance(ids, pa.Array | pa.ChunkedArray) else pa.array(ids, pa.string())
    return pa.table(
        {
            "original_id": values.unique_ids(ids, label, column),
            "title": pa.array(titles, pa.string()),
            "year": pa.array(years, pa.int32()),
            "categories": pa.array(cats, pa.list_(pa.string())),
        }
    )


# ---------------------------------------------------------------- RecBole atomic files


def read_recbole(path: Path) -> RawLog:
    """RecBole atomic files: `<name>.inter`, optional `.item` and `.user`, headers `field:type`."""
    src = Source(path)
    inter_name = _find_suffix(src, ".inter")
    inter = _read_atomic(src, inter_name)
    label = src.label(inter_name)
    _require(inter, ["user_id", "item_id", "timestamp"], label)
    interactions = _interactions(inter, label, "user_id", "item_id", "timestamp", "rating")

    items = None
    name = _find_suffix(src, ".item", required=False)
    if name:
        t = _read_atomic(src, name)
        _require(t, ["item_id"], src.label(name))
        title_col = next((c for c in ("movie_title", "title", "name") if c in t.column_names), None)
        year_col = next((c for c in ("release_year", "year") if c in t.column_names), None)
        cat_col = next(
            (c for c in ("class", "genre", "genres", "categories") if c in t.column_names), None
        )
        n = t.num_rows
        titles = t[title_col].to_pylist() if title_col else [None] * n
        years = [_maybe_int(v) for v in t[year_col].to_pylist()] if year_col else [None] * n
        cats = [str(v).split() if v else [] for v in t[cat_col].to_pylist()] if cat_col else []
        items = _items_table(
            t["item_id"],
            [str(v) if v is not None else None for v in titles],
            years,
            cats or [[] for _ in range(n)],
            src.label(name),
            "item_id",
        )
        used = {"item_id", title_col, year_col, cat_col}
        for c in t.column_names:
            if c not in used:
                items = items.append_column(c, pc.cast(t[c], pa.string()))

    users = None
    name = _find_suffix(src, ".user", required=False)
    if name:
        t = _read_atomic(src, name)
        _require(t, ["user_id"], src.label(name))
        users = _users_table(t, "user_id", src.label(name))
        if "age" in users.column_names:
            idx = users.column_names.index("age")
            ages = [_maybe_int(v) for v in users["age"].to_pylist()]
            users = users.set_column(idx, "age", pa.array(ages, pa.int64()))
    return RawLog(interactions, items, users, str(path))


def _find_suffix(src: Source, suffix: str, required: bool = True) -> str | None:
    if src.zip is not None:
        names = [n for n in src.zip.namelist() if n.endswith(suffix)]
    else:
        names = [str(p) for p in sorted(src.path.rglob(f"*{suffix}"))]
    if not names:
        if required:
            raise BadInput(f"{src.path}: no *{suffix} file")
        return None
    return names[0]


def _read_atomic(src: Source, name: str) -> pa.Table:
    data = src.read(name)
    label = src.label(name)
    text = _decode(data, label, "utf-8")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise BadInput(f"{label}: file is empty")
    header = lines[0].split("\t")
    names = [h.split(":")[0] for h in header]
    types = [h.split(":")[1] if ":" in h else "token" for h in header]
    rows = [ln.split("\t") for ln in lines[1:] if ln.strip()]
    if not rows:
        raise BadInput(f"{label}: no rows after the header")
    for i, r in enumerate(rows, 2):
        if len(r) != len(names):
            raise BadInput(f"{label}: line {i}: expected {len(names)} fields, got {len(r)}")
    cols = {}
    for j, (n, t) in enumerate(zip(names, types, strict=True)):
        values = [r[j] for r in rows]
        if t == "float":
            try:
                cols[n] = pa.array([float(v) if v != "" else None for v in values], pa.float64())
            except ValueError:
                raise BadInput(f"{label}: column {n}: not numeric") from None
        else:
            cols[n] = pa.array(values, pa.string())
    return pa.table(cols)


def _maybe_int(v) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- generic tables


def parse_columns(spec: str | None) -> dict:
    """`user=uid,item=iid,time=ts,rating=r` -> {"user": "uid", ...}."""
    mapping = {"user": "user", "item": "item", "time": "timestamp", "rating": "rating"}
    if not spec:
        return mapping
    for part in spec.split(","):
        if "=" not in part:
            raise BadInput(f"--columns: expected key=column pairs, got {part!r}")
        key, col = (s.strip() for s in part.split("=", 1))
        if key not in ("user", "item", "time", "rating", "title", "year", "categories"):
            raise BadInput(f"--columns: unknown key {key!r} (user, item, time, rating, ...)")
        mapping[key] = col
    return mapping


def read_table_file(path: Path, text_columns: tuple[str, ...] = ()) -> pa.Table:
    """A Parquet, CSV or TSV file. CSV must be UTF-8, and its `text_columns` (the ids) are
    read as text, so every id keeps its exact spelling."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"file not found: {path}")
    if not path.is_file():
        raise BadInput(f"{path}: is a folder, not a table file")
    if path.stat().st_size == 0:
        raise BadInput(f"{path}: file is empty")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise BadInput(f"{path}: cannot be read as Parquet ({e})") from None
    if suffix in (".csv", ".tsv", ".txt"):
        values.check_utf8(path)
        parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in text_columns})
        try:
            return pacsv.read_csv(path, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid:
            pass
        try:  # again on one thread, whose message gives the line
            read = pacsv.ReadOptions(use_threads=False)
            pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as e:
            problem = re.sub(r"Row #(\d+): ", lambda m: f"line {m.group(1)}: ", str(e))
            raise BadInput(f"{path}: {problem}") from None
        raise BadInput(f"{path}: cannot be read as CSV")
    raise BadInput(f"{path}: unsupported table type {suffix!r} (use .parquet, .csv or .tsv)")


def read_table(path: Path, columns: str | None, items=None, users=None) -> RawLog:
    """A generic interactions table (Parquet/CSV) with optional items and users tables."""
    mapping = parse_columns(columns)
    t = read_table_file(path, (mapping["user"], mapping["item"]))
    if t.num_rows == 0:
        raise BadInput(f"{path}: file is empty")
    _require(t, [mapping["user"], mapping["item"], mapping["time"]], str(path))
    interactions = _interactions(
        t, str(path), mapping["user"], mapping["item"], mapping["time"], mapping["rating"]
    )

    items_t = None
    if items:
        it = read_table_file(items, (mapping["item"],))
        _require(it, [mapping["item"]], str(items))
        title_name = mapping.get("title", "title")
        cat_name = mapping.get("categories", "categories")
        year_name = mapping.get("year", "year")
        n = it.num_rows
        titles = [None] * n
        if title_name in it.column_names:
            titles = [str(v) if v is not None else None for v in it[title_name].to_pylist()]
        cats = [[]] * n
        if cat_name in it.column_names:
            cats = [_split_cats(v) for v in it[cat_name].to_pylist()]
        years = [None] * n
        if year_name in it.column_names:
            years = [_maybe_int(v) for v in it[year_name].to_pylist()]
        items_t = _items_table(
            it[mapping["item"]], titles, years, cats, str(items), mapping["item"]
        )
        used = {mapping["item"], title_name, cat_name, year_name}
        for c in it.column_names:
            if c not in used:
                items_t = items_t.append_column(c, pc.cast(it[c], pa.string()))
    users_t = None
    if users:
        ut = read_table_file(users, (mapping["user"],))
        _require(ut, [mapping["user"]], str(users))
        users_t = _users_table(ut, mapping["user"], str(users))
    return RawLog(interactions, items_t, users_t, str(path))


def _interactions(t: pa.Table, label: str, user: str, item: str, time: str, rating: str):
    """user, item (exact text), timestamp (int64 seconds) and, when present, rating."""
    cols = {
        "user": values.ids(t[user], label, user),
        "item": values.ids(t[item], label, item),
        "timestamp": values.timestamps(t[time], label, time),
    }
    if rating in t.column_names:
        cols["rating"] = values.ratings(t[rating], label, rating)
    return pa.table(cols)


def _users_table(t: pa.Table, id_column: str, label: str) -> pa.Table:
    """Users by original id (checked: exact text, each once) with their other columns."""
    idx = t.column_names.index(id_column)
    ids = values.unique_ids(t[id_column], label, id_column)
    return t.set_column(idx, "original_id", ids)


def _split_cats(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [str(x) for x in v]
    return [s.strip() for s in re.split(r"[|;,]", str(v)) if s.strip()]


def _require(t: pa.Table, names: list[str], label: str) -> None:
    missing = [n for n in names if n not in t.column_names]
    if missing:
        raise BadInput(
            f"{label}: missing column(s) {missing}; found {t.column_names} "
            "(map them with --columns user=...,item=...,time=...)"
        )


def read_source(path: Path, fmt: str, columns: str | None = None, items=None, users=None) -> RawLog:
    if fmt == "ml-100k":
        return read_ml100k(path)
    if fmt == "ml-1m":
        return read_ml1m(path)
    if fmt == "recbole":
        return read_recbole(path)
    if fmt == "table":
        return read_table(path, columns, items, users)
    raise BadInput(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")


def read_bytes_table(data: bytes) -> pa.Table:  # used by tests for in-memory CSV
    return pacsv.read_csv(io.BytesIO(data))
