"""The toolkit's structure: the import contracts hold (and would catch a violation), stages
never spell another artifact's file name, and each command line equals its options
dataclass."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path

import click
import pytest
import typer

from coea_cli.cli import app
from coea_cli.config import load_default_map
from coea_cli.options import COMMANDS, Common, flag_of
from coea_cli.workspace import core, tracks

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data", "items", "sids", "groups", "dsie", "pco", "recs", "evaluation", "sim")


def _lint(root: Path) -> subprocess.CompletedProcess:
    lint = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]
    return subprocess.run(
        [*lint, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )


def test_import_contracts_hold():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


def test_import_contracts_catch_a_stage_importing_a_command_module(tmp_path):
    shutil.copytree(ROOT / "coea_cli", tmp_path / "coea_cli")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "coea_cli" / "dsie" / "infer.py", "a") as f:
        f.write("\nfrom coea_cli.groups.run import run_profile_groups  # noqa\n")
    r = _lint(tmp_path)
    assert r.returncode != 0
    assert "coea_cli.dsie is not allowed to import coea_cli.groups.run" in r.stdout
    assert "BROKEN" in r.stdout


def _artifact_names() -> set[str]:
    names = set()
    tables = (core.DATA, core.ITEMS, core.SIDS, core.GROUPS, core.DSIE, core.RECS, core.EVAL)
    for table in (*tables, core.ROLLING, core.SIM):
        names |= set(table.values())
    return names | set(tracks.ROUND.values())


def _string_constants(path: Path):
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        is_str = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_str and id(node) not in docstrings:
            yield node.lineno, node.value


def test_stages_name_artifacts_only_through_the_workspace():
    """No stage builds a path from an artifact's file name (prose in messages may name one).
    config.json is also every Hugging Face model folder's file, which stages may check."""
    names = _artifact_names() - {"config.json"}
    assert {"sids.parquet", "recs.lmdb", "metrics.json"} <= names
    found = []
    for stage in STAGES:
        for path in sorted((ROOT / "coea_cli" / stage).rglob("*.py")):
            for line, value in _string_constants(path):
                if any(value == n or value.endswith("/" + n) for n in names):
                    found.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert not found, "artifact file names outside the workspace layer:\n" + "\n".join(found)


def _click_command(name: str) -> click.Command:
    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_line_equals_its_options_dataclass(name):
    cls, target = COMMANDS[name]
    params = {p.name: p for p in _click_command(name).params}
    expected = [*fields(cls), *fields(Common)]
    assert list(params) == [f.name for f in expected]
    for f in expected:
        p = params[f.name]
        assert flag_of(f) in p.opts, (f.name, p.opts)
        assert p.help == f.metadata["help"]
        default = None if f.default is MISSING else f.default
        assert p.default == default or str(p.default) == str(default), (f.name, p.default)
    module, func = target.split(":")
    assert (ROOT / (module.replace(".", "/") + ".py")).exists() and func.startswith("run_")


def test_choices_are_listed_in_help():
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["pco-round", "--help"], terminal_width=200).stdout
    assert "--objective <sft_kl|dpo|sft>" in out
    r = CliRunner().invoke(app, ["pco-round", "--objective", "ppo"])
    assert r.exit_code == 2 and "ppo" in r.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_check(path):
    defaults = load_default_map(str(path))
    for name, values in defaults.items():
        cls, _ = COMMANDS[name]
        own = {f.name for f in fields(cls)}
        cls(**{k: v for k, v in values.items() if k in own})  # range and cross-field checks
    assert tomllib.loads(path.read_text())  # and the file itself is valid TOML
