"""The lists `recommend` stored, as evaluate reads them: checked to be the main track's
current ones for the test period, with the serving options and seed they were made with."""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from coea_cli import store
from coea_cli.errors import ArtifactError
from coea_cli.options import ServeOptions
from coea_cli.recs.lists import RECORD, SOURCES
from coea_cli.recs.tune import named
from coea_cli.workspace import MAIN, Workspace, read_json, read_table


def stored_lists(ws: Workspace, main: dict, test: int, k: int) -> dict:
    """The lists `recommend` stored for the test period with the main track's current
    adapters: {"lists": {user: RECORD array}, "options": ServeOptions, "seed": int, "weights":
    the ranking served, "rule": the setting without the LLMs chosen beside it (or None)}.
    Lists made by other adapters, for another cutoff or shorter than K are refused."""
    out = ws.recs()
    report = read_json(out.require("report"), "recommend")
    manifest = read_json(out.path / store.MANIFEST, "recommend")
    cur = main["current"]
    made = (report.get("novelty"), report.get("relevance"))
    if made != (cur["novelty"], cur["relevance"]):
        raise ArtifactError(
            out.path,
            "recommend",
            f"the lists were made with {made[0]}, the main track now serves {cur['novelty']}",
        )
    if report.get("before_period") != test or report.get("shard"):
        problem = "the lists are not those of every user at the test period"
        raise ArtifactError(out.path, "recommend", problem)
    options = manifest.get("options", {})
    serve, seed = serving_options(ws)
    if options.get("round") is not None or options.get("track", "main") != MAIN:
        raise ArtifactError(
            out.path, "recommend", "the lists are not the main track's current ones"
        )
    if options.get("k", 0) < k:
        problem = f"the lists hold {options.get('k')} items, --ks needs {k}"
        raise ArtifactError(out.path, f"recommend --k {k}", problem)
    columns = ["user_id", "item_id", "score", "cluster", "source"]
    table = read_table(out.require("table"), "recommend", columns)
    weights = named(report.get("weights", "top-m"))
    rule = named((report.get("validation") or {}).get("rule"))
    return {
        "lists": lists_of(table), "options": serve, "seed": seed, "weights": weights, "rule": rule
    }  # fmt: skip


def serving_options(ws: Workspace) -> tuple[ServeOptions, int]:
    """The serving options and seed `recommend` made the stored lists with; the CoEA rows
    built here use the same."""
    out = ws.recs()
    manifest = read_json(out.path / store.MANIFEST, "recommend")
    options = manifest.get("options", {})
    try:
        serve = ServeOptions(**{f.name: options[f.name] for f in fields(ServeOptions)})
    except KeyError as e:
        raise ArtifactError(out.path, "recommend", f"the manifest records no {e}") from None
    return serve, int(manifest.get("seed", 0))


def lists_of(table) -> dict:
    """recs.parquet rows (sorted by user, then rank) as {user: RECORD array}."""
    users = table["user_id"].to_numpy()
    rec = np.zeros(len(users), dtype=RECORD)
    rec["item"] = table["item_id"].to_numpy()
    rec["score"] = table["score"].to_numpy()
    rec["cluster"] = table["cluster"].to_numpy()
    source = np.array(table["source"].to_pylist())
    for code, name in enumerate(SOURCES):
        rec["source"][source == name] = code
    cuts = np.flatnonzero(np.diff(users)) + 1
    parts = zip(np.split(users, cuts), np.split(rec, cuts), strict=True)
    return {int(u[0]): r for u, r in parts if len(u)}
