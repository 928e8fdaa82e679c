"""`--config FILE.toml`: defaults for any option.

Top-level keys apply to every command; a table named after a command applies to it only:

    seed = 7
    work = "runs/ml100k"

    [prepare]
    periods = "0.5,0.1,0.1,0.1,0.1,0.1"
    min_user = 5

A key that no command knows (top level) or that its command does not know (table) is bad
input: a misspelt option never passes silently.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from coea_cli.errors import BadInput
from coea_cli.options import COMMANDS, Common, option_names


def find_config_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def load_default_map(path: str) -> dict:
    """Build click's default_map from a TOML file: {command: {option_name: value}}."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"--config: file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{p}: not valid TOML: {e}") from None
    shared = option_names(Common)
    known = {name: option_names(cls) | shared for name, (cls, _) in COMMANDS.items()}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    unknown = sorted(set(tables) - set(known))
    if unknown:
        raise BadInput(f"{p}: unknown command table(s) {unknown}; known: {list(known)}")
    common = {_key(k): v for k, v in data.items() if not isinstance(v, dict)}
    anywhere = set().union(*known.values())
    for key in common:
        if key not in anywhere:
            raise BadInput(f"{p}: unknown key {_toml(key)!r}: no command has --{_toml(key)}")
    out = {}
    for cmd, names in known.items():
        own = {_key(k): v for k, v in tables.get(cmd, {}).items()}
        for key in own:
            if key not in names:
                raise BadInput(f"{p}: [{cmd}] {_toml(key)!r}: `coea {cmd}` has no --{_toml(key)}")
        out[cmd] = {**{k: v for k, v in common.items() if k in names}, **own}
    return out


def _key(name: str) -> str:
    return "json_out" if name == "json" else name.replace("-", "_")


def _toml(key: str) -> str:
    return "json" if key == "json_out" else key.replace("_", "-")
