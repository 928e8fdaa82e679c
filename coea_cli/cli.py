"""The `coea` command line: one subcommand per pipeline step.

Each subcommand's parameters are derived from its options dataclass (`coea_cli.options`) plus
the shared options, so the command line and the dataclass cannot drift.
"""

from __future__ import annotations

import inspect
import sys
import typing
from dataclasses import MISSING, fields
from typing import Annotated

import typer

from coea_cli import __version__
from coea_cli.options import COMMANDS, Common, Options, flag_of

app = typer.Typer(
    name="coea",
    help="CoEA: Co-Evolutionary Alignment for serendipitous recommendation.\n\n"
    "Pipeline: prepare -> tokenize-items -> build-sids -> profile-groups -> train-dsie -> "
    "pco-round -> recommend -> evaluate. Every command reads and writes a workspace (--work).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=None,
)


def _parameters(cls: type[Options]) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        names = [flag_of(f)]
        if hints[f.name] is bool and not f.metadata.get("flag"):
            names = [f"{names[0]}/--no-{names[0][2:]}"]
        option = typer.Option(*names, help=f.metadata["help"], show_default=True)
        default = None if f.default is MISSING else f.default
        out.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[hints[f.name], option],
            )
        )
    return out


def command(name: str) -> typer.models.CommandFunctionType:
    """The typer function of one subcommand: its own options, then the shared ones."""
    cls, _ = COMMANDS[name]
    own = _parameters(cls)
    shared = _parameters(Common)
    shared_names = {p.name for p in shared}

    def cli(**kwargs) -> None:
        from coea_cli.common import run

        common = {k: v for k, v in kwargs.items() if k in shared_names}
        run(name, common, {k: v for k, v in kwargs.items() if k not in shared_names})

    cli.__signature__ = inspect.Signature(own + shared)
    cli.__annotations__ = {p.name: p.annotation for p in own + shared}
    cli.__doc__ = cls.__doc__
    cli.__name__ = name.replace("-", "_")
    return cli


for _name in COMMANDS:
    app.command(_name)(command(_name))


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
            default_map = load_default_map(cfg)
        except CoeaError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
    app(args=argv, prog_name="coea", default_map=default_map)


if __name__ == "__main__":
    main()
