"""Logging and progress on stderr, results on stdout."""

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

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def log(message: str) -> None:
    err.print(message, markup=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}")


def error(message: str) -> None:
    err.print(f"[red]error:[/] {escape(message)}")


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
    interactive = err.is_terminal
    bar = Progress(*columns, console=err, transient=False, disable=not interactive)
    state = {"done": 0, "logged": time.monotonic()}
    with bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields) -> None:
            info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            bar.update(task, advance=n, info=info)
            state["done"] += n
            now = time.monotonic()
            if not interactive and (now - state["logged"] >= LOG_EVERY or state["done"] == total):
                state["logged"] = now  # logs and cron: a plain line now and then
                of = f"/{total}" if total else ""
                err.print(
                    f"{description}: {state['done']}{of} {unit} {info}".rstrip(), markup=False
                )

        yield advance


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
