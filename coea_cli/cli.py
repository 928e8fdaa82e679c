"""The `coea` command line: one subcommand per pipeline step."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Annotated

import typer

from coea_cli import __version__

app = typer.Typer(
    name="coea",
    help="CoEA: Co-Evolutionary Alignment for serendipitous recommendation.\n\n"
    "Pipeline: prepare -> tokenize-items -> build-sids -> profile-groups -> train-dsie -> "
    "pco-round -> recommend -> evaluate. Every command reads and writes a workspace (--work).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

# command name -> module in coea_cli/commands/ defining a typed `cli` function
COMMANDS = {
    "prepare": "prepare",
    "tokenize-items": "tokenize_items",
    "build-sids": "build_sids",
    "profile-groups": "profile_groups",
    "train-dsie": "train_dsie",
    "pco-round": "pco_round",
    "recommend": "recommend",
    "evaluate": "evaluate",
}
for _name, _module in COMMANDS.items():
    if importlib.util.find_spec(f"coea_cli.commands.{_module}") is not None:
        app.command(_name)(importlib.import_module(f"coea_cli.commands.{_module}").cli)


def _version(value: bool) -> None:
    if value:
        print(f"coea {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """CoEA toolkit."""


def main(argv: list[str] | None = None) -> None:
    from coea_cli.config import find_config_arg, load_default_map
    from coea_cli.errors import CoeaError

    argv = list(sys.argv[1:] if argv is None else argv)
    default_map = None
    cfg = find_config_arg(argv)
    if cfg:
        try:
            default_map = load_default_map(cfg, list(COMMANDS))
        except CoeaError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
    app(args=argv, prog_name="coea", default_map=default_map)


if __name__ == "__main__":
    main()
