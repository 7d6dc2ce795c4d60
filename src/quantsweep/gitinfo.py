"""The git commit of the working tree, for provenance (read-only: never writes to the repository)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_commit(cwd: str | Path | None = None) -> dict[str, object] | None:
    """`{"sha": ..., "dirty": bool}` when `cwd` is inside a git work tree with a commit, else None."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # `git status` must not refresh the index
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True, env=env
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            env=env,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha, "dirty": bool(status.strip())} if sha else None
