"""What every command receives (Ctx), and the runner that maps errors to exit codes."""

from __future__ import annotations

import importlib
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from coea_cli import console
from coea_cli.dist import distributed_env
from coea_cli.errors import EXIT_INTERNAL, BadInput, CoeaError
from coea_cli.options import COMMANDS, Common, Device, Options

if TYPE_CHECKING:
    from coea_cli.store import Stage
    from coea_cli.workspace import Workspace

OptionsT = TypeVar("OptionsT", bound=Options)


@dataclass
class Ctx(Generic[OptionsT]):
    """The shared options, the command's own options (typed) and the workspace."""

    command: str
    common: Common
    opts: OptionsT
    started: float = field(default_factory=time.time)

    @property
    def work(self) -> Path:
        return self.common.work

    @property
    def seed(self) -> int:
        return self.common.seed

    @property
    def force(self) -> bool:
        return self.common.force

    @property
    def json(self) -> bool:
        return self.common.json_out

    @cached_property
    def device(self) -> str:
        """--device resolved once: cpu or cuda (auto: CUDA when present)."""
        return resolve_device(str(self.common.device))

    @cached_property
    def ws(self) -> Workspace:
        from coea_cli.workspace import Workspace

        return Workspace(self.work)

    def stage(self, folder: Path, inputs: dict, options: dict | None = None) -> Stage:
        """The command's output folder with its manifest (inputs keyed relative to the
        workspace; options default to the recorded command options)."""
        from coea_cli.store import Stage

        return Stage(
            folder=Path(folder),
            command=self.command,
            options=self.opts.recorded() if options is None else options,
            inputs=inputs,
            seed=self.seed,
            root=self.work,
            started=self.started,
            lineage=self.ws.lineage(inputs),
        )

    def fresh(self, st: Stage) -> bool:
        """True (and logged) when `st` is up to date and --force is not given; with
        --verbose, why it is not."""
        where = (
            st.folder.relative_to(self.work) if st.folder.is_relative_to(self.work) else st.folder
        )
        why = st.stale_reason()
        if why is None and not self.force:
            console.log(
                f"{where} is up to date (inputs and options unchanged); use --force to rerun"
            )
            return True
        console.debug(f"{where}: running ({'--force' if why is None else why})")
        return False


def resolve_device(device: str) -> str:
    """auto -> cuda when a GPU is present, else cpu; cuda without a GPU is bad input."""
    if device == Device.cpu:
        return "cpu"
    import torch

    if device == Device.auto:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise BadInput("--device cuda asked for, but no CUDA GPU is available")
    return "cuda"


def run(command: str, common: dict, own: dict) -> None:
    """Check the options, run the command's implementation, print its result, exit."""
    import typer

    options_cls, target = COMMANDS[command]
    try:
        ctx = Ctx(command, Common(**common), options_cls(**own))
    except CoeaError as e:
        console.error(str(e))
        raise typer.Exit(e.exit_code) from None
    rank, _ = distributed_env()  # under torchrun only rank 0 logs, cleans and prints
    console.set_level(ctx.common.verbosity() if rank == 0 else console.QUIET)
    module, name = target.split(":")
    cpu_threads()
    seed_everything(ctx.seed)
    console.quiet_libraries()
    try:
        if rank == 0:
            sweep(ctx)
        result = getattr(importlib.import_module(module), name)(ctx)
    except CoeaError as e:
        console.error(str(e))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        console.error("interrupted: previous artifacts are intact")
        raise typer.Exit(130) from None
    except Exception as e:  # internal error: exit 1, traceback only when asked
        if os.environ.get("COEA_DEBUG"):
            traceback.print_exc()
        else:
            console.error(f"internal error in {command}: {type(e).__name__}: {e}")
            console.err.print(console.stamp() + "set COEA_DEBUG=1 for the traceback", markup=False)
        raise typer.Exit(EXIT_INTERNAL) from None
    if result is not None and rank == 0:
        console.emit(result, ctx.json)
    sys.stdout.flush()


def sweep(ctx: Ctx) -> None:
    """Clean what dead commands left in the workspace before this one touches it."""
    cleaned = ctx.ws.sweep()
    if cleaned:
        names = ", ".join(p.relative_to(ctx.work).as_posix() for p in cleaned)
        console.log(f"cleaned what interrupted runs left: {names}")


def cpu_threads() -> None:
    """CPU threads for torch and BLAS: $COEA_CPU_THREADS, default 1.

    The toolkit's CPU models are small: on an idle 2-core machine a second intra-op thread
    makes an LLM training step 1.5x faster, but it costs several times the work when the
    other core is busy, so one is the default. Set before torch is imported.
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
