"""profile-groups: grouping, similarity, personas (template, JSON parsing, retries), heatmap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coea_cli.groups import grouping
from coea_cli.groups.personas import (
    GroupStats,
    extract_json,
    generate_personas,
    parse_persona,
    persona_messages,
    template_persona,
)
from coea_cli.groups.plot import similarity_heatmap
from coea_cli.workspace import SidLayout, sids_table
from tests.helpers import coea, prepared_workspace

PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- fixtures shared with test_dsie


def write_sids(work: Path, levels: int = 3) -> None:
    """A conforming sids/ folder (sids.parquet, clusters.parquet) derived from item genres:
    c1 = first genre, c2 = decade, c3 = item id mod 3, dup = rank among equal codes."""
    items = pq.read_table(work / "data" / "items.parquet").sort_by("item_id")
    n = items.num_rows
    first = [c[0] if c else "none" for c in items["categories"].to_pylist()]
    names = sorted(set(first))
    c1 = np.array([names.index(c) for c in first])
    years = np.array([y or 0 for y in items["year"].to_pylist()])
    c2 = np.unique(years // 10, return_inverse=True)[1]
    c3 = np.arange(n) % 3
    cols = [c1, c2, c3][:levels]
    keys = [tuple(int(c[j]) for c in cols) for j in range(n)]
    seen: dict = {}
    dup = np.zeros(n, dtype=np.int64)
    for j, k in enumerate(keys):
        dup[j] = seen.get(k, 0)
        seen[k] = dup[j] + 1
    codes = np.stack([*cols, dup], axis=1)
    layout = SidLayout(tuple(int(c.max()) + 1 for c in codes.T))
    folder = work / "sids"
    folder.mkdir(exist_ok=True)
    pq.write_table(sids_table(codes, layout), folder / "sids.parquet")
    k = len(names)
    pq.write_table(
        pa.table(
            {
                "cluster": pa.array(np.arange(k), pa.int32()),
                "size": pa.array(np.bincount(c1, minlength=k), pa.int32()),
                "top_categories": [[g] for g in names],
                "description": [f"{g} titles" for g in names],
                "prefix": [f"<a_{j}>" for j in range(k)],
            }
        ),
        folder / "clusters.parquet",
    )


def sids_workspace(tmp_path: Path, **kw) -> Path:
    work = prepared_workspace(tmp_path, **kw)
    write_sids(work)
    return work


@pytest.fixture(scope="module")
def grouped(tmp_path_factory) -> Path:
    """Synthetic workspace after prepare, sids and profile-groups (template personas)."""
    work = sids_workspace(tmp_path_factory.mktemp("groups"))
    r = coea("profile-groups", "--work", work, "--groups", 4, "--json")
    assert r.code == 0, r.stderr
    return work


# ---------------------------------------------------------------- grouping


def _attrs(rng, n):
    return {
        "age": rng.choice(["18-24", "25-34", "35-44"], n),
        "gender": rng.choice(["M", "F"], n, p=[0.7, 0.3]),
        "occupation": rng.choice(["student", "engineer", "artist", "doctor", "writer"], n),
    }


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(20, 300), min_size=st.integers(1, 40))
def test_demographic_cells_respect_min_size(seed, n, min_size):
    rng = np.random.default_rng(seed)
    attrs = _attrs(rng, n)
    g = grouping.demographic_cells(attrs, n, min_size=min_size, max_groups=1000)
    sizes = np.bincount(g.labels)
    # every cell has min_size users, except possibly the catch-all cell of all leftovers
    small = [d for d, s in zip(g.descriptions, sizes, strict=True) if s < min_size]
    assert small in ([], ["all other users"])
    assert (np.diff(sizes) <= 0).all()  # group 0 is the largest
    # a user's cell description matches the user's own attributes
    for u in rng.choice(n, 10):
        desc = g.descriptions[g.labels[u]]
        for part in desc.split(", "):
            if part != "all other users":
                name, value = part.split(" ", 1)
                assert attrs[name][u] == value


def test_demographic_merge_drops_occupation_first():
    attrs = {
        "age": np.array(["25-34"] * 30 + ["35-44"] * 30),
        "gender": np.array(["M"] * 20 + ["F"] * 10 + ["M"] * 30),
        "occupation": np.array(["a"] * 11 + ["b"] * 5 + ["d"] * 4 + ["c"] * 10 + ["a"] * 30),
    }
    g = grouping.demographic_cells(attrs, 60, min_size=8, max_groups=100)
    got = {g.descriptions[g.labels[u]] for u in range(60)}
    # (25-34, M, b) and (25-34, M, d) pool into (25-34, M) (9 users); the rest keep all
    assert got == {
        "age 25-34, gender M, occupation a",
        "age 25-34, gender M",
        "age 25-34, gender F, occupation c",
        "age 35-44, gender M, occupation a",
    }
    assert g.descriptions[g.labels[17]] == "age 25-34, gender M"
    assert np.bincount(g.labels).tolist() == [30, 11, 10, 9]
    capped = grouping.demographic_cells(attrs, 60, min_size=1, max_groups=2)
    assert capped.labels.max() + 1 <= 2


def test_similarity_matrix_matches_pairwise():
    rng = np.random.default_rng(7)
    hist = rng.poisson(1.0, (40, 6)).astype(np.float32)
    hist[3] = 0  # no history: left out
    labels = rng.integers(0, 3, 40)
    sim = grouping.similarity_matrix(hist, labels, 3)
    unit = grouping.unit_rows(hist)
    keep = [u for u in range(40) if hist[u].any()]
    cos = unit @ unit.T
    for a in range(3):
        for b in range(3):
            pairs = [
                cos[u, v]
                for u in keep
                for v in keep
                if u != v and labels[u] == a and labels[v] == b
            ]
            assert sim["matrix"][a, b] == pytest.approx(np.mean(pairs), abs=1e-5)
    same = [cos[u, v] for u in keep for v in keep if u != v and labels[u] == labels[v]]
    diff = [cos[u, v] for u in keep for v in keep if labels[u] != labels[v]]
    assert sim["intra"] == pytest.approx(np.mean(same), abs=1e-5)
    assert sim["inter"] == pytest.approx(np.mean(diff), abs=1e-5)
    assert sim["users_without_history"] == 1


def test_behavior_groups_recover_planted_tastes_and_place_new_users():
    rng = np.random.default_rng(3)
    n, c = 90, 9
    taste = np.repeat(np.arange(3), 30)
    hist0 = np.zeros((n, c), np.float32)
    for u in range(n):
        hist0[u, 3 * taste[u] : 3 * taste[u] + 3] = rng.integers(1, 6, 3)
    hist_pre = hist0.copy()
    hist0[80:] = 0  # users with no period-0 history: placed by their later history
    hist0[85:] = hist_pre[85:] = 0  # no history at all: placed by attributes
    attrs = {"gender": np.where(taste == 0, "F", "M").astype(object)}
    hist1 = hist0.copy()  # at the start of period 1 users 80.. have no history yet
    g = grouping.behavior_groups(hist0, {1: hist1, 2: hist_pre}, attrs, 3, seed=0)
    lab = g.labels
    assert np.array_equal(lab, g.by_period[2])
    for t in range(3):
        assert len(set(lab[:80][taste[:80] == t])) == 1  # planted groups recovered exactly
    assert lab[80] == lab[60]  # later history -> nearest centroid
    assert any("without history" in note for note in g.notes)
    assert (lab[85:] >= 0).all()
    # at period 1 nothing from period 1 on decides a group: users 80.. (taste 2, gender M)
    # are placed by attributes, the majority group of M users with history
    early = g.by_period[1]
    assert np.array_equal(early[:80], lab[:80])  # users with period-0 history never move
    males = early[:80][attrs["gender"][:80] == "M"]
    assert (early[80:85] == np.bincount(males).argmax()).all()


def test_fill_by_attributes_uses_majority_of_cell():
    labels = np.array([0, 0, 1, 1, 1, -1, -1])
    attrs = {"gender": np.array(["F", "F", "M", "M", "F", "F", "M"], dtype=object)}
    out = grouping.fill_by_attributes(labels, attrs)
    assert out.tolist() == [0, 0, 1, 1, 1, 0, 1]


def test_attribute_columns_buckets_age_and_skips_ids():
    users = pa.table(
        {
            "user_id": pa.array([1, 0, 2], pa.int32()),
            "original_id": ["u1", "u0", "u2"],
            "age": [17, 30, 61],
            "gender": ["M", None, "F"],
            "zip_code": ["1", "2", "3"],
        }
    )
    attrs = grouping.attribute_columns(users, 3)
    assert list(attrs) == ["age", "gender", "zip_code"]
    assert attrs["age"].tolist() == ["25-34", "under 18", "56+"]
    assert attrs["gender"].tolist() == ["unknown", "M", "F"]
    many = pa.table(
        {"user_id": pa.array(range(40), pa.int32()), "zip": [str(i) for i in range(40)]}
    )
    assert grouping.attribute_columns(many, 40) == {}


# ---------------------------------------------------------------- personas


STATS = GroupStats(
    group=1,
    size=42,
    attributes="gender F (70%), age 25-34 (50%)",
    top_clusters=[3, 7],
    cluster_shares=[0.4, 0.2],
    cluster_labels=["<a_3> Drama titles", "<a_7> Comedy titles"],
    representative_items=["Fargo", "Heat"],
)
GOOD = '{"persona": "Thoughtful viewers who love character-driven drama.", "interests": ["drama", "comedy"]}'


def test_parse_persona_accepts_plain_fenced_and_embedded_json():
    for text in (GOOD, f"```json\n{GOOD}\n```", f"Sure! Here it is:\n{GOOD}\nHope this helps."):
        parsed, err = parse_persona(text)
        assert err == ""
        assert parsed["persona"].startswith("Thoughtful viewers")
        assert parsed["interests"] == ["drama", "comedy"]
    assert extract_json('noise {"a": 1} {"b": 2}') == {"a": 1}
    assert extract_json("```\n[1, 2]\n``` and {bad") is None


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"persona": "Thoughtful viewers who love drama."', "no JSON object"),
        ('{"interests": ["x"]}', "persona"),
        ('{"persona": "short"}', "characters"),
        ('{"persona": "' + "x" * 900 + '"}', "characters"),
        (
            '{"persona": "Thoughtful viewers who love drama.", "interests": "drama"}',
            "list of strings",
        ),
        ("I cannot help with that.", "no JSON object"),
    ],
)
def test_parse_persona_rejects(text, why):
    parsed, err = parse_persona(text)
    assert parsed is None
    assert why in err


def test_generate_personas_retries_then_falls_back():
    answers = {
        0: [GOOD],
        1: ["{broken json", "```json\n" + GOOD.replace("Thoughtful", "Curious") + "\n```"],
        2: ["nope", "still nope", "never"],
    }
    calls = []

    def generate(batch, attempt):
        prompts = [m[1]["content"] for m in batch]
        calls.append((attempt, prompts))
        groups = [int(p.split("Group size: ")[1].split(" ")[0]) - 10 for p in prompts]
        return [answers[g][attempt] for g in groups]

    stats = [GroupStats(**{**STATS.__dict__, "group": g, "size": 10 + g}) for g in range(3)]
    out = generate_personas(stats, generate, attempts=3)
    assert [p.source for p in out] == ["llm", "llm", "fallback"]
    assert [p.attempts for p in out] == [1, 2, 3]
    assert out[1].text.startswith("Curious")
    assert out[2].text == template_persona(stats[2])
    assert "no JSON object" in out[2].error
    assert [len(c[1]) for c in calls] == [3, 2, 1]  # only failed groups are asked again
    assert "could not be used" not in calls[0][1][0]
    assert "could not be used (no JSON object found)" in calls[1][1][0]


def test_prompt_and_template_carry_the_statistics():
    text = persona_messages(STATS)[1]["content"]
    for part in (
        "42 users",
        "gender F (70%)",
        "<a_3> Drama titles (40%)",
        "Fargo; Heat",
        '"persona"',
    ):
        assert part in text
    t = template_persona(STATS)
    assert (
        "42 users" in t and "<a_3> Drama titles (40% of their interactions)" in t and '"Heat"' in t
    )


# ---------------------------------------------------------------- heatmap


def test_heatmap_is_a_png(tmp_path):
    m = np.random.default_rng(0).random((5, 5))
    m[2, 2] = np.nan
    path = tmp_path / "h.png"
    similarity_heatmap(m, [5, 4, 3, 2, 1], path, "test")
    data = path.read_bytes()
    assert data[:8] == PNG
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


# ---------------------------------------------------------------- the command


def test_profile_groups_outputs(grouped):
    g = grouped / "groups"
    table = pq.read_table(g / "groups.parquet")
    assert [table.schema.field(c).type for c in ("period", "user_id", "group")] == [pa.int32()] * 3
    n_users = pq.read_table(grouped / "data" / "users.parquet").num_rows
    test = json.loads((grouped / "data" / "dataset.json").read_text())["test_period"]
    assert sorted(set(table["period"].to_pylist())) == list(range(1, test + 1))
    by_period = {
        p: table.filter(pa.compute.equal(table["period"], p)).sort_by("user_id")
        for p in range(1, test + 1)
    }
    for part in by_period.values():
        assert part["user_id"].to_pylist() == list(range(n_users))
    groups = by_period[test]
    # a user with period-0 history keeps one group; others move only as their history grows
    inter = pq.read_table(grouped / "data" / "interactions.parquet")
    first = set(inter.filter(pa.compute.equal(inter["period"], 0))["user_id"].to_pylist())
    for u in list(first)[:20]:
        assert len({by_period[p]["group"][u].as_py() for p in by_period}) == 1
    personas = pq.read_table(g / "personas.parquet")
    assert personas.schema.field("top_clusters").type == pa.list_(pa.int32())
    assert personas.schema.field("representative_items").type == pa.list_(pa.string())
    rows = personas.to_pylist()
    sizes = np.bincount(groups["group"].to_numpy())
    assert [r["size"] for r in rows] == sizes.tolist()
    assert all(r["source"] == "template" and f"{r['size']} users" in r["persona"] for r in rows)
    assert all(r["top_clusters"] and r["representative_items"] for r in rows)
    assert all(
        d
        == f"<a_{c}> "
        + pq.read_table(grouped / "sids" / "clusters.parquet")["description"][c].as_py()
        for r in rows
        for c, d in zip(r["top_clusters"], r["cluster_descriptions"], strict=True)
    )
    from coea_cli import store

    arrays, meta = store.read_tensors(g / "group_emb.safetensors")
    assert arrays["persona"].shape == (len(rows), 384)
    assert np.allclose(np.linalg.norm(arrays["persona"], axis=1), 1.0, atol=1e-5)
    assert arrays["group"].tolist() == list(range(len(rows)))
    assert meta["text_encoder"] == "all-MiniLM-L6-v2"
    report = json.loads((g / "report.json").read_text())
    sim = report["similarity"]
    # the synthetic users have planted tastes: groups are tighter inside than across
    assert sim["intra"] > sim["inter"]
    assert np.array(sim["matrix"]).shape == (len(rows), len(rows))
    assert (g / "similarity.png").read_bytes()[:8] == PNG
    r = coea("profile-groups", "--work", grouped, "--groups", 4)
    assert r.code == 0 and "up to date" in r.stderr


def test_demographic_grouping_cli(tmp_path, grouped):
    import shutil

    work = tmp_path / "w"
    shutil.copytree(grouped, work)
    r = coea(
        "profile-groups",
        "--work",
        work,
        "--grouping",
        "demographic",
        "--min-group-size",
        12,
        "--json",
    )
    assert r.code == 0, r.stderr
    assert r.json()["grouping"] == "demographic"
    sizes = r.json()["sizes"]
    rows = pq.read_table(work / "groups" / "personas.parquet").to_pylist()
    for row, size in zip(rows, sizes, strict=True):
        assert size >= 12 or "all other users" in row["persona"]
    # no usable attributes: falls back to behaviour with a message
    users = pq.read_table(work / "data" / "users.parquet").select(["user_id", "original_id"])
    pq.write_table(users, work / "data" / "users.parquet")
    r = coea("profile-groups", "--work", work, "--grouping", "demographic", "--json")
    assert r.code == 0, r.stderr
    assert "falls back to behavior" in r.stderr
    assert r.json()["grouping"] == "behavior"


def test_profile_groups_bad_inputs(tmp_path):
    work = prepared_workspace(tmp_path)
    r = coea("profile-groups", "--work", work)
    assert r.code == 2
    assert "run `coea build-sids` first" in r.stderr
    assert not (work / "groups").exists()
    r = coea("profile-groups", "--work", tmp_path / "empty")
    assert r.code == 2 and "run `coea prepare` first" in r.stderr
    write_sids(work)
    r = coea("profile-groups", "--work", work, "--grouping", "astrology")
    assert r.code == 2 and "--grouping" in r.stderr
    r = coea("profile-groups", "--work", work, "--profile-model", tmp_path / "nowhere")
    assert r.code == 2 and "--profile-model" in r.stderr


def _tiny_chat_model(folder: Path) -> Path:
    """A randomly initialised Qwen2 causal LM with a chat template (its answers are noise)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [persona_messages(STATS)[1]["content"], GOOD, "system user assistant"] * 5
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", unk_token="<unk>"
    )
    fast.chat_template = (  # like Gemma's: no system role, so the system text is merged
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.save_pretrained(folder)
    cfg = Qwen2Config(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id,
    )  # fmt: skip
    import torch

    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_profile_llm_noise_falls_back_to_template(tmp_path, grouped):
    import shutil

    work = tmp_path / "w"
    shutil.copytree(grouped, work)
    model = _tiny_chat_model(tmp_path / "tiny-chat")
    r = coea(
        "profile-groups", "--work", work, "--groups", 4, "--profile-model", model,
        "--profile-attempts", 2, "--profile-max-tokens", 12, "--device", "cpu", "--json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    assert r.json()["persona_sources"] == {"template": 0, "llm": 0, "fallback": 4}
    rows = pq.read_table(work / "groups" / "personas.parquet").to_pylist()
    assert all(row["source"] == "fallback" and "users" in row["persona"] for row in rows)
    report = json.loads((work / "groups" / "report.json").read_text())
    assert len(report["errors"]) == 4


def test_new_users_join_groups_without_moving_the_old(tmp_path, grouped):
    """A week with new users: every earlier placement, the numbering and the personas stay;
    the new users get groups (by attributes before they have history)."""
    import shutil

    work = tmp_path / "w"
    shutil.copytree(grouped, work)
    before = pq.read_table(work / "groups" / "groups.parquet")
    personas = pq.read_table(work / "groups" / "personas.parquet")
    test = json.loads((work / "data" / "dataset.json").read_text())["test_period"]
    inter = pq.read_table(work / "data" / "interactions.parquet")
    last = int(inter["timestamp"].to_numpy().max())
    items = pq.read_table(work / "data" / "items.parquet")["original_id"].to_pylist()
    rng = np.random.default_rng()
    rows = [
        f"u{u},{items[rng.integers(len(items))]},{last + 1 + k}" for k, u in enumerate(range(5))
    ]
    rows += [f"n{k},{items[rng.integers(len(items))]},{last + 50 + k}" for k in range(4)]
    log = tmp_path / "week.csv"
    log.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    users = tmp_path / "users.csv"
    users.write_text(
        "user,age,gender,occupation\n"
        + "\n".join(f"n{k},{20 + 9 * k},{'MF'[k % 2]},student" for k in range(4))
        + "\n"
    )
    r = coea("prepare", "--append", log, "--users", users, "--format", "table", "--work", work)
    assert r.code == 0, r.stderr
    r = coea("profile-groups", "--work", work, "--groups", 4, "--json")
    assert r.code == 0, r.stderr
    after = pq.read_table(work / "groups" / "groups.parquet")
    old = after.filter(pa.compute.less_equal(after["period"], test))
    old = old.filter(pa.compute.less(old["user_id"], before.num_rows // test))
    assert old.sort_by([("period", "ascending"), ("user_id", "ascending")]).equals(
        before.sort_by([("period", "ascending"), ("user_id", "ascending")])
    )
    new = after.filter(pa.compute.equal(after["period"], test + 1)).sort_by("user_id")
    n_old = before.num_rows // test
    assert new.num_rows == n_old + 4
    prev = before.filter(pa.compute.equal(before["period"], test)).sort_by("user_id")
    first = set(inter.filter(pa.compute.equal(inter["period"], 0))["user_id"].to_pylist())
    for u in first:  # period-0 users keep their group
        assert new["group"][u].as_py() == prev["group"][u].as_py()
    assert set(new["group"].to_pylist()[n_old:]) <= set(range(4))
    same = pq.read_table(work / "groups" / "personas.parquet")
    assert same.select(["group", "persona", "size"]).equals(
        personas.select(["group", "persona", "size"])
    )
