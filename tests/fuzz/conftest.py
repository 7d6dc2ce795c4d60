"""Counts what the hardening suite ran, for the CI log: the issue asks for at least 200 generated cases."""

from __future__ import annotations

import harness


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest's hook signature
    if harness.INVOCATIONS:
        terminalreporter.write_line(
            f"hardening suite: {harness.INVOCATIONS} CLI invocations on hostile inputs "
            f"({', '.join(f'{k} {v}' for k, v in sorted(harness.BY_COMMAND.items()))})"
        )
