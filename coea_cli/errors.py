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


class MissingArtifact(BadInput):
    """An upstream artifact is missing; the message says which command makes it."""

    def __init__(self, path, command: str):
        super().__init__(f"missing {path}: run `coea {command}` first")
        self.path = path
        self.command = command


class WorkspaceLocked(CoeaError):
    """Another command holds the workspace lock."""

    exit_code = EXIT_LOCKED
