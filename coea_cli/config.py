"""`--config FILE.toml`: defaults for any option.

Top-level keys apply to every command; a table named after a command applies to it only:

    seed = 7
    work = "runs/ml100k"

    [prepare]
    periods = "0.5,0.1,0.1,0.1,0.1,0.1"
    min_user = 5
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from coea_cli.errors import BadInput


def find_config_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def load_default_map(path: str, commands: list[str]) -> dict:
    """Build click's default_map from a TOML file: {command: {option_name: value}}."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"config file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{p}: not valid TOML: {e}") from None
    common = {_key(k): v for k, v in data.items() if not isinstance(v, dict)}
    unknown = [k for k, v in data.items() if isinstance(v, dict) and k not in commands]
    if unknown:
        raise BadInput(f"{p}: unknown command table(s) {unknown}; known: {commands}")
    return {
        cmd: {**common, **{_key(k): v for k, v in data.get(cmd, {}).items()}} for cmd in commands
    }


def _key(name: str) -> str:
    return name.replace("-", "_")
