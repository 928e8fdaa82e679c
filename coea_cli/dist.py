"""Runs under `torchrun`: the rank and world size, joining the process group, and the few
collective steps the stages share (`train-dsie`, `pco-round`).

Without torchrun (WORLD_SIZE unset or 1) every function here is a no-op or the identity, so
one process runs exactly the code it ran before. `current()` reads the initialised default
process group, so the LLM layer shares its scoring passes among the ranks of a command that
joined one (every rank must then call the same functions in the same order) and works alone
everywhere else. Importing this module loads nothing; torch is imported when used.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import timedelta

from coea_cli.errors import CoeaError

# Collective calls wait this long for the slowest rank (rank 0 alone pre-trains the scratch
# backbone while the others wait at a barrier); torch's default is 30 minutes.
TIMEOUT = timedelta(hours=2)


def distributed_env() -> tuple[int, int]:
    """(rank, world size) from the torchrun environment (0, 1 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: str) -> tuple[int, int, str]:
    """Join the process group when run under torchrun; returns (rank, world, device)."""
    rank, world = distributed_env()
    if world == 1:
        return rank, world, device
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return rank, world, device


def close(world: int) -> None:
    """Leave the process group joined by `init_distributed`."""
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def current() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, else (0, 1)."""
    import sys

    if "torch" not in sys.modules:
        return 0, 1
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def all_sum(x, world: int):
    """Sum a tensor over the ranks, in place; returned for chaining."""
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(x)
    return x


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def gather(obj, world: int) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, src: int, world: int):
    """Rank `src`'s `obj` (picklable) on every rank."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def share_rng(src: int, world: int) -> None:
    """Give every rank rank `src`'s torch random state (CPU, and the current CUDA device's
    when CUDA is in use), so that what draws from it next draws the same on every rank."""
    if world == 1:
        return
    import torch

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    state = (torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None)
    cpu, dev = broadcast(state, src, world)
    torch.set_rng_state(cpu)
    if cuda and dev is not None:
        torch.cuda.set_rng_state(dev)


@contextmanager
def on_rank0(make: AbstractContextManager, rank: int, world: int):
    """Enter the context `make` on rank 0 only (the workspace lock: one holder per run); the
    other ranks wait until rank 0 holds it, and fail with rank 0's error (message and exit
    code) when it cannot be entered."""
    with ExitStack() as stack:
        if rank == 0:
            try:
                stack.enter_context(make)
            except CoeaError as e:
                broadcast((str(e), e.exit_code), 0, world)
                raise
            broadcast(None, 0, world)
        else:
            failed = broadcast(None, 0, world)
            if failed is not None:
                err = CoeaError(failed[0])
                err.exit_code = failed[1]
                raise err
        yield


@contextmanager
def rank0_write(stage):
    """`stage.write()` on rank 0; on the other ranks a scratch folder thrown away after, so a
    command runs the same code on every rank and only rank 0's output lands."""
    rank, _ = current()
    if rank == 0:
        with stage.write() as tmp:
            yield tmp
        return
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="coea-rank-") as tmp:
        yield Path(tmp)
