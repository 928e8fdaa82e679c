"""The `profile-groups` command: group users, describe each group, embed the personas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from coea_cli import console, store
from coea_cli.common import Ctx
from coea_cli.groups import grouping
from coea_cli.groups.personas import (
    ChatGenerator,
    Persona,
    embedding_text,
    generate_personas,
    group_statistics,
    template_persona,
)
from coea_cli.options import Grouping, GroupOptions
from coea_cli.workspace import Sids, Workspace, cluster_token, read_json

COMMAND = "profile-groups"
DESCRIPTION_CHARS = 120


def cluster_labels(sids: Sids) -> dict[int, str]:
    """Short label per cluster index: its SID prefix and description."""
    out = {}
    space = sids.layout.clusters
    for c, text in sids.descriptions.items():
        text = " ".join(str(text or "").split())
        if len(text) > DESCRIPTION_CHARS:
            text = text[: DESCRIPTION_CHARS - 3].rstrip() + "..."
        out[int(c)] = f"{cluster_token(space.code(c))} {text}".strip()
    return out


def run_profile_groups(ctx: Ctx[GroupOptions]) -> dict:
    ws = ctx.ws
    inputs = [ws.data.require(k) for k in ("interactions", "users", "items", "dataset")]
    inputs += [ws.sids_dir.require("sids"), ws.sids_dir.require("clusters")]
    st = ctx.stage(ws.groups_dir.path, inputs)
    if ctx.fresh(st):
        report = read_json(ws.groups_dir.require("report"), COMMAND)
        return {"status": "up to date", **report["summary"]}
    result = compute_groups(ctx)
    with st.write() as tmp:
        write_outputs(ws, tmp, result)
    return {"status": "written", **result["report"]["summary"]}


def compute_groups(ctx: Ctx[GroupOptions]) -> dict:
    """Everything profile-groups writes, in memory."""
    o = ctx.opts
    ws = ctx.ws
    h = ws.history()
    users = ws.users_table()
    n_users = h.n_users
    u, i, period = h.users, h.items, h.periods
    sids = ws.sids()
    item_cluster = sids.cluster_of_items()
    cluster_text = cluster_labels(sids)
    first = period == 0
    hist0 = grouping.cluster_histograms(u[first], i[first], item_cluster, n_users)
    hist_at = {
        p: grouping.cluster_histograms(u[period < p], i[period < p], item_cluster, n_users)
        for p in range(1, h.test_period + 1)
    }
    hist_pre = hist_at[h.test_period]
    fitted = hist0.sum(axis=1) > 0  # the users of the fit (period 0)
    attrs = grouping.attribute_columns(users, n_users, basis=fitted if fitted.any() else None)
    g = _grouping(o, attrs, hist0, hist_at, n_users, ctx.seed)
    labels = g.labels
    n_groups = int(labels.max()) + 1
    titles = [
        str(t) for t in ws.items_table(["item_id", "title"]).sort_by("item_id")["title"].to_pylist()
    ]
    # Personas describe each group as period 0 shows it (its members of period 0, their
    # period-0 behaviour): no later period leaks into a prompt, and users who arrive later
    # never rewrite a persona.
    stats = _period0_statistics(o, g, attrs, hist0, u[first], i[first], titles, cluster_text)
    personas = _personas(ctx, stats)
    from coea_cli.items.encoder import encode_texts, load_text_encoder

    encoder = load_text_encoder(o.text_encoder, device=ctx.device)
    emb = encode_texts(encoder, [embedding_text(p) for p in personas], progress=False)
    hist = np.where(hist0.sum(axis=1, keepdims=True) > 0, hist0, hist_pre)
    sim = grouping.similarity_matrix(hist, labels, n_groups)
    sizes = np.bincount(labels, minlength=n_groups).tolist()
    for s, p in zip(stats, personas, strict=True):
        console.log(f"group {s.group} ({s.size} users, {p.source}): {p.text[:160]}")
    report = _report(o, g, sim, sizes, stats, personas)
    by_period = g.by_period or {p: labels for p in hist_at}
    return {
        "labels": labels,
        "by_period": by_period,
        "stats": stats,
        "personas": personas,
        "emb": emb,
        "matrix": sim["matrix"],
        "matrix_sizes": sim["sizes"],
        "matrix_users": (sim["users"], sim["users_without_history"]),
        "sizes": sizes,
        "report": report,
    }


def _period0_statistics(o: GroupOptions, g, attrs, hist0, users, items, titles, cluster_text):
    """group_statistics over the users of the fit (those with period-0 history) and their
    period-0 interactions; demographic cells, defined by attributes alone, keep every user."""
    fit = np.flatnonzero(hist0.sum(axis=1) > 0)
    if g.method == "demographic" or not len(fit):
        fit = np.arange(len(g.labels))
    index = np.full(len(g.labels), -1, dtype=np.int64)
    index[fit] = np.arange(len(fit))
    keep = index[users] >= 0
    return group_statistics(
        g.labels[fit], {k: v[fit] for k, v in attrs.items()}, hist0[fit], index[users[keep]],
        items[keep], titles, cluster_text,
        cells=g.descriptions if g.method == "demographic" else None,
        top_clusters=o.top_clusters, top_items=o.top_items,
    )  # fmt: skip


def _grouping(o: GroupOptions, attrs, hist0, hist_at: dict, n_users: int, seed: int):
    """Users -> groups by --grouping (behavior when no user has usable attributes)."""
    method = o.grouping
    if method != Grouping.behavior and not attrs:
        console.log(f"no usable user attributes: --grouping {method} falls back to behavior")
        method = Grouping.behavior
    if method == Grouping.demographic:
        g = grouping.demographic_cells(attrs, n_users, o.min_group_size, o.groups)
    elif method == Grouping.behavior:
        g = grouping.behavior_groups(hist0, hist_at, attrs, o.groups, seed)
    else:
        g = grouping.hybrid_groups(hist0, hist_at, attrs, o.groups, seed, o.attr_weight)
    for note in g.notes:
        console.log(note)
    return g


def _report(o: GroupOptions, g, sim: dict, sizes: list[int], stats, personas) -> dict:
    from coea_cli.items.encoder import encoder_name

    sources = {k: sum(p.source == k for p in personas) for k in ("template", "llm", "fallback")}
    summary = {
        "groups": len(sizes),
        "grouping": g.method,
        "sizes": sizes,
        "intra_similarity": round(sim["intra"], 4),
        "inter_similarity": round(sim["inter"], 4),
        "persona_sources": sources,
    }
    return {
        "summary": summary,
        "similarity": {
            "measure": "cosine similarity of users' cluster histograms (period 0, "
            "else all history before the test period); pairs of distinct users",
            "intra": sim["intra"],
            "inter": sim["inter"],
            "ratio": sim["intra"] / sim["inter"] if sim["inter"] else None,
            "users": sim["users"],
            "users_without_history": sim["users_without_history"],
            "matrix": [
                [None if not np.isfinite(x) else float(x) for x in row] for row in sim["matrix"]
            ],
        },
        "notes": g.notes,
        "text_encoder": encoder_name(o.text_encoder),
        "profile_model": o.profile_model,
        "errors": {str(s.group): p.error for s, p in zip(stats, personas, strict=True) if p.error},
    }


def _personas(ctx: Ctx[GroupOptions], stats) -> list[Persona]:
    o = ctx.opts
    if o.profile_model == "template":
        return [Persona(template_persona(s), [], "template") for s in stats]
    generator = ChatGenerator(
        o.profile_model,
        device=ctx.device,
        batch_size=o.profile_batch,
        max_new_tokens=o.profile_max_tokens,
        seed=ctx.seed,
    )
    personas = generate_personas(stats, generator, o.profile_attempts)
    failed = sum(p.source == "fallback" for p in personas)
    if failed:
        console.warn(f"{failed} of {len(personas)} personas fell back to the template")
    return personas


def write_outputs(ws: Workspace, folder: Path, r: dict) -> None:
    from coea_cli.groups.plot import group_name, similarity_heatmap

    periods = sorted(r["by_period"])
    n_users = len(r["labels"])
    store.write_parquet(
        ws.groups_dir.file("groups", folder),
        pa.table(
            {
                "period": pa.array(np.repeat(periods, n_users).astype(np.int32)),
                "user_id": pa.array(np.tile(np.arange(n_users, dtype=np.int32), len(periods))),
                "group": pa.array(
                    np.concatenate([r["by_period"][p] for p in periods]).astype(np.int32)
                ),
            }
        ),
    )
    stats, personas = r["stats"], r["personas"]
    store.write_parquet(
        ws.groups_dir.file("personas", folder),
        pa.table(
            {
                "group": pa.array([s.group for s in stats], pa.int32()),
                "size": pa.array([s.size for s in stats], pa.int32()),
                "persona": pa.array([p.text for p in personas], pa.string()),
                "source": pa.array([p.source for p in personas], pa.string()),
                "top_clusters": pa.array([s.top_clusters for s in stats], pa.list_(pa.int32())),
                "cluster_descriptions": pa.array(
                    [s.cluster_labels for s in stats], pa.list_(pa.string())
                ),
                "attributes": pa.array([s.attributes for s in stats], pa.string()),
                "representative_items": pa.array(
                    [s.representative_items for s in stats], pa.list_(pa.string())
                ),
                "interests": pa.array([p.interests for p in personas], pa.list_(pa.string())),
            }
        ),
    )
    store.write_tensors(
        ws.groups_dir.file("emb", folder),
        {"persona": r["emb"], "group": np.arange(len(stats), dtype=np.int32)},
        metadata={"text_encoder": r["report"]["text_encoder"]},
    )
    store.write_json(ws.groups_dir.file("report", folder), r["report"])
    rep = r["report"]["similarity"]
    covered, without = r["matrix_users"]
    names = [group_name(s.group, s.cluster_labels, s.attributes) for s in stats]
    similarity_heatmap(
        r["matrix"],
        r["matrix_sizes"],
        ws.groups_dir.file("plot", folder),
        f"mean user similarity within/between groups (intra {rep['intra']:.3f}, "
        f"inter {rep['inter']:.3f}); {covered} users with a history, {without} without "
        "left out",
        names,
    )
