"""stderr as users see it: timestamps on lines that go to a file or pipe, --quiet and
--verbose, progress lines with an ETA, the training's one overall bar."""

from __future__ import annotations

import re
import time

import pytest

from coea_cli import console
from tests.helpers import coea, prepared_workspace

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


def _prepare(work, *extra):
    return coea("prepare", "--work", work, "--min-user", 1, "--min-item", 1, *extra)


def test_piped_lines_are_timestamped_and_quiet_verbose(tmp_path):
    work = prepared_workspace(tmp_path)  # the synthetic raw log under tmp_path/raw
    raw = tmp_path / "raw"
    src = ("--source", raw / "interactions.csv", "--format", "table")
    tables = ("--items", raw / "items.csv", "--users", raw / "users.csv")
    r = _prepare(work, *src, *tables, "--force")
    assert r.code == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines and all(STAMP.match(line) for line in lines), lines[:3]
    before = time.strftime("%Y-%m-%dT", time.gmtime())
    assert lines[0].startswith(before)  # UTC, today
    # --quiet: nothing on stderr for a run that succeeds; the result still on stdout
    r = _prepare(work, *src, *tables, "--quiet", "--force", "--json")
    assert r.code == 0 and r.stderr == "" and r.json()
    # --verbose: why a command reruns
    r = _prepare(work, *src, *tables, "--min-user", 2, "--verbose")
    assert r.code == 0, r.stderr
    assert "data: running (options changed: min_user)" in r.stderr
    # errors are timestamped too, and still shown with --quiet
    r = _prepare(work, "--source", tmp_path / "nope.csv", "--format", "table", "--quiet")
    assert r.code == 2
    assert STAMP.match(r.stderr) and "error:" in r.stderr
    r = coea("prepare", "--quiet", "--verbose", "--work", work)
    assert r.code == 2 and "--quiet or --verbose" in r.stderr


def test_progress_lines_with_eta(monkeypatch, capsys):
    console.set_level(console.NORMAL)
    monkeypatch.setattr(console, "LOG_EVERY", 0.0)  # a line at every step
    with console.progress("work", 4, "steps") as advance:
        for _ in range(3):
            time.sleep(0.01)
            advance(loss=0.5)
    err = capsys.readouterr().err.splitlines()
    assert all(STAMP.match(x) for x in err)
    assert [STAMP.sub("", x).split(" steps")[0] for x in err] == ["work: 1/4", "work: 2/4",
                                                                   "work: 3/4"]  # fmt: skip
    assert all("left)" in x for x in err) and "loss=0.5" in err[0]
    monkeypatch.setattr(console, "LOG_EVERY", 3600.0)  # no line until the end
    with console.progress("work", 4, "steps") as advance:
        advance(3)
    err = capsys.readouterr().err.splitlines()
    assert [STAMP.sub("", x) for x in err] == ["work: 3/4 steps"]  # stopped before the total
    with console.progress("work", 2, "steps") as advance:
        advance(2)
    assert [STAMP.sub("", x) for x in capsys.readouterr().err.splitlines()] == ["work: 2/2 steps"]
    console.set_level(console.QUIET)
    with console.progress("work", 2, "steps") as advance:
        advance(2)
    console.set_level(console.NORMAL)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("patience", [8, 1])
def test_dsie_training_has_one_overall_bar(monkeypatch, patience):
    """fit() opens one bar over every epoch's batches, whose ETA is the whole training's; each
    epoch advances it; early stopping (patience 1, a metric that never improves) ends it
    before its total."""
    from dataclasses import replace

    from coea_cli.dsie import train as train_mod
    from coea_cli.dsie.train import TrainConfig, Trainer
    from coea_cli.options import DsieOptions
    from tests.test_dsie import _toy_problem, tiny_model

    opened = []

    class Recorder:
        def __init__(self, description, total, unit=""):
            opened.append({"description": description, "total": total, "steps": 0})

        def __enter__(self):
            def advance(n=1, **fields):
                opened[-1]["steps"] += n
                opened[-1]["epoch"] = fields.get("epoch")

            return advance

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(train_mod.console, "progress", Recorder)
    _, windows, groups = _toy_problem()
    base = TrainConfig.from_options(DsieOptions(), seed=0)
    cfg = replace(base, epochs=4, batch_size=8, warmup=2, patience=patience, eval_every=1)
    flat = {"ndcg": 0.5, "ndcg@10": 0.5, "hr@10": 0.5, "mrr": 0.5}
    trainer = Trainer(tiny_model(5).train(), windows, groups, cfg, lambda m: dict(flat))
    per_epoch = len(trainer._batches(0))
    trainer.fit()
    assert len(opened) == 1 and opened[0]["description"].endswith("training")
    assert opened[0]["total"] == 4 * per_epoch
    assert trainer.epoch == (4 if patience == 8 else 2)
    assert opened[0]["steps"] == trainer.epoch * per_epoch
    assert opened[0]["epoch"] == f"{trainer.epoch}/4"
