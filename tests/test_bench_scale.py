"""bench/scale.py: its synthetic ML-1M log is read by `prepare --format ml-1m` and has the
structure it claims (Zipf-like popularity, users on their preferred genres, several periods)."""

import importlib.util
import json
from pathlib import Path

import numpy as np

from tests.helpers import coea

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ratings(folder: Path) -> np.ndarray:
    text = (folder / "ratings.dat").read_text(encoding="latin-1")
    return np.array([ln.split("::") for ln in text.split()], dtype=np.int64)


def test_synthetic_ml1m_is_read_by_prepare_and_has_structure(tmp_path):
    bench = _load()
    raw = tmp_path / "raw"
    log = bench.synthetic_ml1m(raw, 0.05, seed=0)
    assert (log["users"], log["items"]) == (302, 185)  # 6,040 and 3,706 x 0.05

    r = _ratings(raw)
    assert len(r) == log["ratings"] and len(np.unique(r[:, :2], axis=0)) == len(r)
    assert set(np.unique(r[:, 2])) <= {1, 2, 3, 4, 5}
    # Zipf-like popularity: the top 10% of items hold about twice their share of ratings.
    counts = np.sort(np.bincount(r[:, 1]))[::-1]
    assert counts[: len(counts) // 10].sum() / counts.sum() > 0.18
    # Users concentrate on their preferred genres: a user's ratings fall on items of those
    # genres far more often than the whole log's ratings do.
    has = np.zeros((log["items"] + 1, len(bench.GENRES)), dtype=bool)
    for line in (raw / "movies.dat").read_text(encoding="latin-1").splitlines():
        item, _, cats = line.split("::")
        has[int(item), [bench.GENRES.index(g) for g in cats.split("|")]] = True
    pref = np.zeros((log["users"], len(bench.GENRES)), dtype=bool)
    for u, p in enumerate(log["preferred"]):
        pref[u, p] = True
    on_pref = (has[r[:, 1]] & pref[r[:, 0] - 1]).any(1)
    base = ((has[r[:, 1]].astype(np.int64) @ pref.T.astype(np.int64)) > 0).mean()
    assert np.mean(on_pref) > base + 0.1

    work = tmp_path / "work"
    res = coea(
        "prepare", "--source", raw, "--format", "ml-1m", "--periods", bench.periods(1),
        "--work", work, "--json",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    data = json.loads((work / "data" / "dataset.json").read_text())
    kept = data["counts"]["after_kcore"]
    assert kept["users"] == log["users"] and kept["interactions"] == log["ratings"]
    # The test period follows round 1, and returning users span the periods.
    assert data["test_period"] == 2
    assert all(p["users"] > 20 for p in data["periods"])


def test_synthetic_ml1m_is_deterministic_and_periods_match_the_default(tmp_path):
    bench = _load()
    a, b = bench.synthetic_ml1m(tmp_path / "a", 0.01), bench.synthetic_ml1m(tmp_path / "b", 0.01)
    assert a == b
    for name in ("users.dat", "movies.dat", "ratings.dat"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert bench.periods(1) == "0.8,0.1,0.1"
    assert bench.periods(4) == "0.5,0.1,0.1,0.1,0.1,0.1"  # prepare's default split
    err = "Traceback\nValueError: x\n2026-01-01T00:00:00Z error: data/: missing; run prepare\n"
    assert bench.failure_line(err) == "error: data/: missing; run prepare"
