"""Options every command shares, and the runner that maps errors to exit codes."""

from __future__ import annotations

import os
import random
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from coea_cli import console
from coea_cli.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, CoeaError

Work = Annotated[
    Path, typer.Option("--work", help="Workspace folder holding every artifact of one experiment.")
]
Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML file with defaults for any option (top-level keys for all commands, "
        "[command] tables for one).",
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (numpy, torch, python).")]
Device = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA when present), cpu or cuda."),
]
Force = Annotated[
    bool,
    typer.Option("--force", help="Run even when inputs and options are unchanged since last run."),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]

# Options that change how a command runs but never what it writes.
NOT_RECORDED = {"work", "config", "force", "json_out", "device"}


@dataclass
class Ctx:
    """What every command receives: the shared options plus its own."""

    work: Path
    seed: int
    device: str
    force: bool
    options: dict
    json: bool = False

    def path(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def run(command: str, params: dict, impl: Callable[[Ctx], dict]) -> None:
    """Run a command implementation: seed, catch errors, print the result, exit."""
    as_json = params.pop("json_out", False)
    params.pop("config", None)
    device = params.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        console.error(f"--device must be auto, cpu or cuda (got {device!r})")
        raise typer.Exit(EXIT_BAD_INPUT)
    ctx = Ctx(
        work=Path(params.get("work", "coea-work")),
        seed=int(params.get("seed", 0)),
        device=device,
        force=bool(params.get("force", False)),
        options={k: v for k, v in params.items() if k not in NOT_RECORDED},
        json=bool(as_json),
    )
    cpu_threads()
    seed_everything(ctx.seed)
    console.quiet_libraries()
    try:
        result = impl(ctx)
    except CoeaError as e:
        console.error(str(e))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        console.err.print("[red]interrupted[/]: previous artifacts are intact")
        raise typer.Exit(130) from None
    except Exception as e:  # internal error: exit 1, traceback only when asked
        if os.environ.get("COEA_DEBUG"):
            traceback.print_exc()
        else:
            console.error(f"internal error in {command}: {type(e).__name__}: {e}")
            console.err.print("set COEA_DEBUG=1 for the traceback")
        raise typer.Exit(EXIT_INTERNAL) from None
    if result is not None:
        console.emit(result, as_json)
    sys.stdout.flush()


def cpu_threads() -> None:
    """CPU threads for torch and BLAS: $COEA_CPU_THREADS, default 1.

    The toolkit's CPU models are small; a second intra-op thread rarely helps them and costs
    several times the work when the other core is busy. Set before torch is imported.
    """
    n = os.environ.get("COEA_CPU_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(n))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def skip_if_fresh(ctx: Ctx, st_up_to_date: bool, what: str) -> bool:
    """Log and return True when the artifact is up to date and --force is not given."""
    if st_up_to_date and not ctx.force:
        console.log(f"{what} is up to date (inputs and options unchanged); use --force to rerun")
        return True
    return False
