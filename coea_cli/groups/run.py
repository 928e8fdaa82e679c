"""The `profile-groups` command: group users, describe each group, embed the personas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from coea_cli import console, store
from coea_cli.common import Ctx, skip_if_fresh
from coea_cli.data.run import data_paths
from coea_cli.errors import BadInput, MissingArtifact
from coea_cli.groups import grouping
from coea_cli.groups.personas import (
    ChatGenerator,
    Persona,
    embedding_text,
    generate_personas,
    group_statistics,
    template_persona,
)

COMMAND = "profile-groups"
DESCRIPTION_CHARS = 120


# ---------------------------------------------------------------- inputs shared with train-dsie


def sid_paths(work: Path) -> dict:
    d = Path(work) / "sids"
    return {"dir": d, "sids": d / "sids.parquet", "clusters": d / "clusters.parquet"}


def group_paths(work: Path) -> dict:
    d = Path(work) / "groups"
    return {
        "dir": d,
        "groups": d / "groups.parquet",
        "personas": d / "personas.parquet",
        "emb": d / "group_emb.safetensors",
        "report": d / "report.json",
        "plot": d / "similarity.png",
    }


def load_item_codes(work: Path, n_items: int) -> np.ndarray:
    """SID codes per item from sids/sids.parquet: int64 [N, L+1] (c1..cL, dup), item order."""
    path = sid_paths(work)["sids"]
    if not path.exists():
        raise MissingArtifact(path, "build-sids")
    table = store.read_parquet(path)
    levels = sorted(
        (c for c in table.column_names if c[:1] == "c" and c[1:].isdigit()),
        key=lambda c: int(c[1:]),
    )
    if not levels or "item_id" not in table.column_names:
        raise BadInput(f"{path}: expected columns item_id, c1..cL and dup")
    cols = [*levels, "dup"] if "dup" in table.column_names else levels
    ids = table["item_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    if len(ids) != n_items or not np.array_equal(np.sort(ids), np.arange(n_items)):
        raise BadInput(
            f"{path}: has {len(ids)} items but data/items.parquet has {n_items}; "
            "rerun `coea build-sids`"
        )
    codes = np.zeros((n_items, len(cols)), dtype=np.int64)
    for j, c in enumerate(cols):
        col = table[c].to_numpy(zero_copy_only=False)
        if (col < 0).any():
            raise BadInput(f"{path}: column {c} has negative codes")
        codes[ids, j] = col
    return codes


def load_cluster_text(work: Path) -> dict[int, str]:
    """Short label per level-1 cluster: its SID prefix and description (clusters.parquet)."""
    path = sid_paths(work)["clusters"]
    if not path.exists():
        raise MissingArtifact(path, "build-sids")
    rows = store.read_parquet(path).to_pylist()
    out = {}
    for r in rows:
        text = " ".join(str(r.get("description") or "").split())
        if len(text) > DESCRIPTION_CHARS:
            text = text[: DESCRIPTION_CHARS - 3].rstrip() + "..."
        prefix = r.get("prefix") or f"cluster {r['cluster']}"
        out[int(r["cluster"])] = f"{prefix} {text}".strip()
    return out


def load_groups(work: Path, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(group of each user [U] int64, persona embeddings [G, d] float32).

    Users absent from groups/groups.parquet are bad input (rerun profile-groups).
    """
    p = group_paths(work)
    for path in (p["groups"], p["emb"]):
        if not path.exists():
            raise MissingArtifact(path, COMMAND)
    table = store.read_parquet(p["groups"])
    users = table["user_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    groups = table["group"].to_numpy(zero_copy_only=False).astype(np.int64)
    of_user = np.full(n_users, -1, dtype=np.int64)
    ok = (users >= 0) & (users < n_users)
    of_user[users[ok]] = groups[ok]
    missing = np.flatnonzero(of_user < 0)
    if len(missing):
        raise BadInput(
            f"{p['groups']}: {len(missing)} users have no group (first user_id {missing[0]}); "
            f"rerun `coea {COMMAND}` after `coea prepare`"
        )
    arrays, _ = store.read_tensors(p["emb"], command=COMMAND)
    persona = arrays["persona"].astype(np.float32)
    if of_user.max() >= len(persona):
        raise BadInput(f"{p['emb']}: {len(persona)} personas but group {of_user.max()} in use")
    return of_user, persona


# ---------------------------------------------------------------- the command


def _check_options(o: dict) -> None:
    if o["grouping"] not in grouping.GROUPINGS:
        raise BadInput(f"--grouping must be one of {', '.join(grouping.GROUPINGS)}")
    positive = ("groups", "min_group_size", "profile_attempts", "profile_batch", "top_clusters")
    for name in (*positive, "top_items", "profile_max_tokens"):
        if o[name] < 1:
            raise BadInput(f"--{name.replace('_', '-')} must be >= 1 (got {o[name]})")
    if o["attr_weight"] < 0:
        raise BadInput("--attr-weight must be >= 0")
    model = o["profile_model"]
    if model != "template" and not Path(model).is_dir():
        raise BadInput(f"--profile-model: {model} is not a folder (or use `template`)")


def run_profile_groups(ctx: Ctx) -> dict:
    o = ctx.options
    _check_options(o)
    data = data_paths(ctx.work)
    if not data["dataset"].exists():
        raise MissingArtifact(data["dataset"], "prepare")
    sids = sid_paths(ctx.work)
    for path in (sids["sids"], sids["clusters"]):
        if not path.exists():
            raise MissingArtifact(path, "build-sids")
    inputs = [data["interactions"], data["users"], data["items"], data["dataset"]]
    inputs += [sids["sids"], sids["clusters"]]
    out = group_paths(ctx.work)
    st = store.Stage(out["dir"], COMMAND, o, inputs, ctx.seed)
    if skip_if_fresh(ctx, st.up_to_date(), str(out["dir"])):
        return {"status": "up to date", **store.read_json(out["report"])["summary"]}
    result = compute_groups(ctx)
    with store.stage(out["dir"], COMMAND, o, inputs, ctx.seed) as stg:
        write_outputs(stg.tmp, result)
    return {"status": "written", **result["report"]["summary"]}


def compute_groups(ctx: Ctx) -> dict:
    """Everything profile-groups writes, in memory."""
    o = ctx.options
    data = data_paths(ctx.work)
    inter = store.read_parquet(data["interactions"], ["user_id", "item_id", "period"])
    users = store.read_parquet(data["users"])
    items = store.read_parquet(data["items"], ["item_id", "title"])
    test_period = int(store.read_json(data["dataset"])["test_period"])
    n_users, n_items = users.num_rows, items.num_rows
    u = inter["user_id"].to_numpy().astype(np.int64)
    i = inter["item_id"].to_numpy().astype(np.int64)
    period = inter["period"].to_numpy()
    if len(u) and (u.max() >= n_users or i.max() >= n_items):
        raise BadInput(f"{data['interactions']}: ids beyond users.parquet/items.parquet")
    codes = load_item_codes(ctx.work, n_items)
    item_cluster = codes[:, 0]
    cluster_text = load_cluster_text(ctx.work)
    pre, first = period < test_period, period == 0
    hist0 = grouping.cluster_histograms(u[first], i[first], item_cluster, n_users)
    hist_pre = grouping.cluster_histograms(u[pre], i[pre], item_cluster, n_users)
    attrs = grouping.attribute_columns(users, n_users)
    method = o["grouping"]
    if method != "behavior" and not attrs:
        console.log(f"no usable user attributes: --grouping {method} falls back to behavior")
        method = "behavior"
    if method == "demographic":
        g = grouping.demographic_cells(attrs, n_users, o["min_group_size"], o["groups"])
    elif method == "behavior":
        g = grouping.behavior_groups(hist0, hist_pre, attrs, o["groups"], ctx.seed)
    else:
        g = grouping.hybrid_groups(hist0, hist_pre, attrs, o["groups"], ctx.seed, o["attr_weight"])
    for note in g.notes:
        console.log(note)
    labels = g.labels
    n_groups = int(labels.max()) + 1
    titles = items.sort_by("item_id")["title"].to_pylist()
    stats = group_statistics(
        labels, attrs, hist_pre, u[pre], i[pre], [str(t) for t in titles], cluster_text,
        cells=g.descriptions if g.method == "demographic" else None,
        top_clusters=o["top_clusters"], top_items=o["top_items"],
    )  # fmt: skip
    personas = _personas(ctx, stats)
    from coea_cli.items.encoder import encode_texts, encoder_name, load_text_encoder

    encoder = load_text_encoder(o["text_encoder"], device=ctx.device)
    emb = encode_texts(encoder, [embedding_text(p) for p in personas], progress=False)
    hist = np.where(hist0.sum(axis=1, keepdims=True) > 0, hist0, hist_pre)
    sim = grouping.similarity_matrix(hist, labels, n_groups)
    sizes = np.bincount(labels, minlength=n_groups).tolist()
    for s, p in zip(stats, personas, strict=True):
        console.log(f"group {s.group} ({s.size} users, {p.source}): {p.text[:160]}")
    sources = {k: sum(p.source == k for p in personas) for k in ("template", "llm", "fallback")}
    summary = {
        "groups": n_groups,
        "grouping": g.method,
        "sizes": sizes,
        "intra_similarity": round(sim["intra"], 4),
        "inter_similarity": round(sim["inter"], 4),
        "persona_sources": sources,
    }
    report = {
        "summary": summary,
        "similarity": {
            "measure": "cosine similarity of users' level-1 cluster histograms (period 0, "
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
        "text_encoder": encoder_name(o["text_encoder"]),
        "profile_model": o["profile_model"],
        "errors": {str(s.group): p.error for s, p in zip(stats, personas, strict=True) if p.error},
    }
    return {
        "labels": labels,
        "stats": stats,
        "personas": personas,
        "emb": emb,
        "matrix": sim["matrix"],
        "sizes": sizes,
        "report": report,
    }


def _personas(ctx: Ctx, stats) -> list[Persona]:
    o = ctx.options
    if o["profile_model"] == "template":
        return [Persona(template_persona(s), [], "template") for s in stats]
    generator = ChatGenerator(
        o["profile_model"],
        device=ctx.device,
        batch_size=o["profile_batch"],
        max_new_tokens=o["profile_max_tokens"],
        seed=ctx.seed,
    )
    personas = generate_personas(stats, generator, o["profile_attempts"])
    failed = sum(p.source == "fallback" for p in personas)
    if failed:
        console.warn(f"{failed} of {len(personas)} personas fell back to the template")
    return personas


def write_outputs(folder: Path, r: dict) -> None:
    from coea_cli.groups.plot import similarity_heatmap

    labels = r["labels"]
    store.write_parquet(
        folder / "groups.parquet",
        pa.table(
            {
                "user_id": pa.array(np.arange(len(labels), dtype=np.int32)),
                "group": pa.array(labels.astype(np.int32)),
            }
        ),
    )
    stats, personas = r["stats"], r["personas"]
    store.write_parquet(
        folder / "personas.parquet",
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
        folder / "group_emb.safetensors",
        {"persona": r["emb"], "group": np.arange(len(stats), dtype=np.int32)},
        metadata={"text_encoder": r["report"]["text_encoder"]},
    )
    store.write_json(folder / "report.json", r["report"])
    rep = r["report"]["similarity"]
    similarity_heatmap(
        r["matrix"],
        r["sizes"],
        folder / "similarity.png",
        f"mean user similarity within/between groups (intra {rep['intra']:.3f}, "
        f"inter {rep['inter']:.3f})",
    )
