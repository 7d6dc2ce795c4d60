"""The git commit of the matrix's repository, for provenance — read without letting the repository run anything.

Why not simply `git rev-parse HEAD` in the current folder: a repository can make git execute its own configured
commands (`core.fsmonitor`, clean/smudge `filter.*` drivers run by `git status`), and the folder a user happens to
stand in (or a matrix copied from someone else's checkout) is not code they chose to run. So:

- the **sha** is read from the repository's files (`HEAD`, loose refs, `packed-refs`; linked work trees through
  their `gitdir:`/`commondir` files); no git process at all;
- **dirty** needs git's index comparison, so git runs with `core.fsmonitor` and hooks disabled, optional locks off
  (nothing written), no system or global config, and only when the repository's own config — as git itself parses
  it (`git config --list --no-includes`, which runs nothing; per-worktree config included) — names no filter
  driver and includes no other config file (either could make `git status` run a command); otherwise `dirty` is
  recorded as null, with the reason.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
# config keys that can make `git status` execute a command, or pull in config we have not read
_RISKY_KEYS = ("filter.", "include.", "includeif.")
_SAFE_ENV = {
    "GIT_OPTIONAL_LOCKS": "0",  # `git status` must not refresh (write) the index
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}


def _read(path: Path, limit: int = 1 << 20) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(limit)
    except OSError:
        return None


def find_git_dir(start: Path) -> tuple[Path, Path, Path] | None:
    """(work tree, git dir, common dir) of the repository containing `start`, or None."""
    here = start.resolve()
    for folder in (here, *here.parents):
        dot = folder / ".git"
        if dot.is_dir():
            git_dir = dot
        elif dot.is_file():
            text = _read(dot) or ""
            m = re.match(r"gitdir:\s*(.+)", text.strip())
            if not m:
                return None
            git_dir = (folder / m.group(1).strip()).resolve()
        else:
            continue
        common = git_dir
        commondir = _read(git_dir / "commondir")
        if commondir:
            common = (git_dir / commondir.strip()).resolve()
        return folder, git_dir, common
    return None


def _resolve_ref(git_dir: Path, common: Path, ref: str, depth: int = 0) -> str | None:
    if depth > 5:
        return None
    if _SHA.match(ref):
        return ref
    if not ref.startswith("refs/") or ".." in ref:
        return None
    for base in (git_dir, common):
        text = _read(base / ref)
        if text is not None:
            text = text.strip()
            if text.startswith("ref:"):
                return _resolve_ref(git_dir, common, text[4:].strip(), depth + 1)
            return text if _SHA.match(text) else None
    packed = _read(common / "packed-refs", 256 << 20) or ""  # large in big repositories
    for line in packed.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == ref and _SHA.match(parts[0]):
            return parts[0]
    return None


def head_sha(git_dir: Path, common: Path) -> str | None:
    head = (_read(git_dir / "HEAD") or "").strip()
    if head.startswith("ref:"):
        return _resolve_ref(git_dir, common, head[4:].strip())
    return head if _SHA.match(head) else None


def _run_git(work_tree: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | _SAFE_ENV
    return subprocess.run(["git", *args], cwd=work_tree, capture_output=True, text=True, timeout=10, check=True,
                          env=env, stdin=subprocess.DEVNULL).stdout


def _dirty(work_tree: Path) -> tuple[bool | None, str | None]:
    try:  # git's own parse of every config file it would read here; `git config` runs nothing
        keys = [line.split("=", 1)[0].lower() for line in _run_git(work_tree, "config", "--list", "--no-includes").splitlines()]
    except (OSError, subprocess.SubprocessError):
        return None, "not checked: git could not read the repository's config"
    if any(k.startswith(_RISKY_KEYS) for k in keys):
        return None, "not checked: the repository's config has filter drivers or includes, which git would run"
    cmd = ["-c", "core.fsmonitor=false", "-c", f"core.hooksPath={os.devnull}", "-c", "core.untrackedCache=false",
           "status", "--porcelain", "--untracked-files=no", "--ignore-submodules=all"]
    try:
        out = _run_git(work_tree, *cmd)
    except (OSError, subprocess.SubprocessError):
        return None, "not checked: git status failed"
    return bool(out.strip()), None


def git_commit(near: str | Path | None = None) -> dict[str, object] | None:
    """`{"sha", "dirty", ["dirty_unknown"]}` of the repository holding `near` (a file or folder; default the
    current folder), or None outside a repository or before its first commit."""
    start = Path(near) if near is not None else Path.cwd()
    if start.is_file() or not start.exists():
        start = start.parent
    found = find_git_dir(start)
    if found is None:
        return None
    work_tree, git_dir, common = found
    sha = head_sha(git_dir, common)
    if sha is None:
        return None
    dirty, why = _dirty(work_tree)
    doc: dict[str, object] = {"sha": sha, "dirty": dirty}
    if why:
        doc["dirty_unknown"] = why
    return doc
