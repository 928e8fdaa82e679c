"""Run the CLI in-process and capture exit code, stdout and stderr."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from coea_cli.cli import app
from tests.synth import make_log


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def coea(*args, default_map: dict | None = None) -> Result:
    runner = CliRunner()
    r = runner.invoke(app, [str(a) for a in args], default_map=default_map)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Result(r.exit_code, r.stdout, r.stderr)


def prepared_workspace(tmp: Path, **log_kwargs) -> Path:
    """A workspace after `prepare` on a synthetic log (no k-core, 5 periods)."""
    paths = make_log(tmp / "raw", **log_kwargs)
    work = tmp / "work"
    r = coea(
        "prepare", "--source", paths["interactions"], "--format", "table",
        "--items", paths["items"], "--users", paths["users"],
        "--min-user", 1, "--min-item", 1, "--work", work,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    return work
