"""Exit codes and the error types that map to them (documented in docs/cli.md)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # an unexpected error (a bug): traceback printed
    INVALID_INPUT = 2  # bad matrix/summary/flags: nothing was run or written
    GATE_FAILED = 3  # the canary gate or a KPI gate failed
    CELLS_FAILED = 4  # the sweep finished, but one or more cells ended as error rows
    WRITE_FAILED = 5  # an output could not be written (disk full, permissions): what was recorded before is intact
    INTERRUPTED = 130  # Ctrl-C; what was recorded is intact and `run` resumes


class QuantsweepError(Exception):
    """An error with a user-facing message and an exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, exit_code: ExitCode | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(QuantsweepError):
    """Bad input: a file that cannot be read or that fails validation."""

    exit_code = ExitCode.INVALID_INPUT


class MatrixError(InputError):
    """A matrix file that fails validation; one line per problem: `<file>: <field path>: <message>`."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


class WriteError(QuantsweepError):
    """An output that could not be written (disk full, no permission, a file in the way); names the file."""

    exit_code = ExitCode.WRITE_FAILED
