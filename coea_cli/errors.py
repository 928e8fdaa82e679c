"""Errors that map to the CLI's exit codes."""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the workspace lock


class CoeaError(Exception):
    """Base class for errors the CLI reports without a traceback."""

    exit_code = EXIT_INTERNAL


class BadInput(CoeaError):
    """Bad input or usage: the message names the file, row or column; nothing was written."""

    exit_code = EXIT_BAD_INPUT


class ArtifactError(BadInput):
    """An artifact is missing, corrupt or out of date: the message names the file and the
    command that (re)builds it. Exit code 2; nothing is written."""

    def __init__(self, path, producer: str | None, problem: str):
        where = f"{path}: " if path is not None else ""
        fix = f"; run `coea {producer}` first" if producer else ""
        super().__init__(f"{where}{problem}{fix}")
        self.path = path
        self.producer = producer
        self.problem = problem


class MissingArtifact(ArtifactError):
    """An upstream artifact is missing; the message says which command makes it."""

    def __init__(self, path, command: str):
        super().__init__(path, command, "missing")
        self.command = command


class WorkspaceLocked(CoeaError):
    """Another command holds the workspace lock."""

    exit_code = EXIT_LOCKED
