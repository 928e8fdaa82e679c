"""Logging and progress on stderr, results on stdout.

Verbosity (`--quiet`, `--verbose` on every command, or `set_level`): QUIET shows warnings and
errors only; NORMAL adds log lines and progress; VERBOSE adds `debug` lines. When stderr is
not a terminal (a log file, a pipe, cron), every line starts with a UTC timestamp and
progress bars become a plain line now and then.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LOG_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal
QUIET, NORMAL, VERBOSE = 0, 1, 2

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
_level = {"value": NORMAL}


def set_level(level: int) -> None:
    _level["value"] = int(level)


def level() -> int:
    return _level["value"]


def stamp() -> str:
    """A UTC timestamp and a space when stderr is not a terminal, else nothing."""
    if err.is_terminal:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime())


def log(message: str) -> None:
    if _level["value"] >= NORMAL:
        err.print(stamp() + message, markup=False)


def debug(message: str) -> None:
    """A detail shown with --verbose only."""
    if _level["value"] >= VERBOSE:
        err.print(stamp() + message, markup=False)


def warn(message: str) -> None:
    err.print(f"{escape(stamp())}[yellow]warning:[/] {escape(message)}")


def error(message: str) -> None:
    err.print(f"{escape(stamp())}[red]error:[/] {escape(message)}")


@contextmanager
def progress(description: str, total: int | None, unit: str = ""):
    """A rich progress bar on stderr; yields `advance(n=1, **fields)`.

    Extra fields (e.g. loss=0.12) are shown after the bar.
    """
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    shown = _level["value"] >= NORMAL
    interactive = err.is_terminal and shown
    bar = Progress(*columns, console=err, transient=False, disable=not interactive)
    state = {"done": 0, "logged": time.monotonic(), "start": time.monotonic(), "printed": 0}
    state["info"] = ""

    def line(now: float, closing: bool = False) -> None:
        state["logged"], state["printed"] = now, state["done"]
        of = f"/{total}" if total else ""
        eta = ""
        if total and state["done"] < total and state["done"] and not closing:
            left = (now - state["start"]) / state["done"] * (total - state["done"])
            eta = f" (about {_duration(left)} left)"
        text = f"{description}: {state['done']}{of} {unit}{eta} {state['info']}".rstrip()
        err.print(stamp() + text, markup=False)

    with bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields) -> None:
            info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            bar.update(task, advance=n, info=info)
            state["done"] += n
            state["info"] = info
            now = time.monotonic()
            last = state["done"] == total
            if shown and not interactive and (now - state["logged"] >= LOG_EVERY or last):
                line(now)  # logs and cron: a plain line now and then, and at the end

        yield advance
        if shown and not interactive and state["done"] != state["printed"]:
            line(time.monotonic(), closing=True)  # stopped before the total (early stopping)


def quiet_libraries() -> None:
    """Keep library chatter off stderr: Hugging Face loading bars and info logs, a deprecation
    warning peft triggers, and bitsandbytes' notice that the optional hub package `kernels` is
    absent (bitsandbytes then uses its built-in CPU path)."""
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )
    for name in ("bitsandbytes", "bitsandbytes.backends.cpu.ops"):
        log = logging.getLogger(name)
        if _no_hub_kernels not in log.filters:
            log.addFilter(_no_hub_kernels)


def _no_hub_kernels(record) -> bool:
    return "kernels-community" not in record.getMessage()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def emit(result: dict, as_json: bool) -> None:
    """Print a command's result on stdout: JSON with --json, else key: value lines, with a
    list of records (such as one user's recommendations) as an aligned table."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        return
    for key, value in result.items():
        if _is_records(value):
            out.print(f"{key}:", markup=False)
            out.print(records_table(value), markup=False, highlight=False, soft_wrap=True)
            continue
        if isinstance(value, dict | list):
            value = json.dumps(value, default=str)
        out.print(f"{key}: {value}", markup=False)


def _is_records(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(r, dict) and r.keys() == value[0].keys() for r in value)
    )


def records_table(rows: list[dict]) -> str:
    """Rows with the same keys as plain aligned columns (numbers right-aligned)."""
    cols = list(rows[0])
    cells = [[str(r[c]) for c in cols] for r in rows]
    width = [max(len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(cols)]
    numeric = [all(isinstance(r[c], int | float) for r in rows) for c in cols]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, width, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(cols), *(line(row) for row in cells)])
