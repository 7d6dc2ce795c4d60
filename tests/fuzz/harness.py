"""The hardening suite's harness: run the real CLI entry point in-process on a hostile input and check the promises
of docs/reliability.md — no traceback, the documented exit code, one error line naming the file, nothing created
or changed on an error path, bounded time and memory.

In-process (not a subprocess per case) so that hundreds of cases fit in CI's budget: `quantsweep.cli.main` is what
the console script calls, with the same error mapping; an exception escaping it is exactly what a user would see as
a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import resource
import stat
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

# Exit codes documented in docs/cli.md; 1 (internal error) is never acceptable for bad input.
DOCUMENTED = {0, 2, 3, 4, 5, 130}
# Generous bounds: they catch hangs and blow-ups (minutes, gigabytes), not speed.
MAX_SECONDS = 60.0
MAX_NEW_RSS_MB = 1024
INVOCATIONS = 0  # counted for the terminal summary (tests/conftest.py)
BY_COMMAND: dict[str, int] = {}


@dataclass
class Outcome:
    args: list[str]
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    rss_growth_mb: float
    escaped: str | None  # the traceback of an exception that escaped main(), else None

    def describe(self) -> str:
        return (f"quantsweep {' '.join(self.args)} -> exit {self.code} in {self.seconds:.1f}s\n"
                f"stderr: {self.stderr[-2000:]}\nstdout: {self.stdout[-500:]}"
                + (f"\nESCAPED:\n{self.escaped}" if self.escaped else ""))


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def invoke(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Outcome:
    """`quantsweep ARGS` in `cwd`, in this process; stdout/stderr captured, SystemExit turned into the code."""
    from quantsweep import cli

    global INVOCATIONS
    INVOCATIONS += 1
    command = next((a for a in args if not a.startswith("-")), "(none)")
    BY_COMMAND[command] = BY_COMMAND.get(command, 0) + 1
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    old_env = {k: os.environ.get(k) for k in (env or {})}
    code: int | None = None
    escaped = None
    rss0 = _max_rss_mb()
    t0 = time.perf_counter()
    try:
        os.environ.update(env or {})
        os.chdir(cwd)
        sys.argv = ["quantsweep", *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - exactly what the harness is looking for
                escaped = traceback.format_exc()
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Outcome(list(args), code, out.getvalue(), err.getvalue(), time.perf_counter() - t0,
                   _max_rss_mb() - rss0, escaped)


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under `roots` (links not followed) with its kind, size, mode and content hash."""
    seen: dict[str, tuple] = {}
    for root in roots:
        if not root.exists() and not root.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for name in [*dirnames, *filenames]:
                p = Path(dirpath) / name
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    seen[str(p)] = ("link", os.readlink(p))
                elif stat.S_ISDIR(st.st_mode):
                    seen[str(p)] = ("dir", st.st_mode)
                elif not stat.S_ISREG(st.st_mode):  # a FIFO or socket: reading it could block
                    seen[str(p)] = ("special", st.st_mode)
                else:
                    digest = hashlib.sha1(p.read_bytes()).hexdigest() if st.st_size < 64 << 20 else st.st_mtime_ns
                    seen[str(p)] = ("file", st.st_size, st.st_mode, digest)
    return seen


def assert_bounded(o: Outcome) -> None:
    assert o.escaped is None, o.describe()
    assert o.seconds < MAX_SECONDS, o.describe()
    assert o.rss_growth_mb < MAX_NEW_RSS_MB, o.describe()
    assert o.code in DOCUMENTED, o.describe()
    assert "Traceback (most recent call last)" not in o.stderr + o.stdout, o.describe()


def assert_clean_error(o: Outcome, names: str | Path | None, code: int = 2) -> str:
    """The documented failure: bounded, exit `code`, an `error:` message on stderr naming `names` (a path or a
    flag), nothing on stdout. Returns the message."""
    assert_bounded(o)
    assert o.code == code, o.describe()
    msg = o.stderr.strip()
    if "\nerror: " in msg:  # progress lines (`· loading model`) may precede the error; it ends the output
        msg = msg[msg.index("\nerror: ") + 1 :]
    assert msg.startswith("error:") or msg.startswith("Usage:") or "Error" in msg, o.describe()
    if names is not None:
        assert str(names) in msg, f"{names!r} not named:\n" + o.describe()
    assert o.stdout.strip() == "", o.describe()
    return msg


def assert_unchanged(before: dict[str, tuple], after: dict[str, tuple], o: Outcome) -> None:
    created = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (created or removed or changed), (
        f"created {created[:5]}, removed {removed[:5]}, changed {changed[:5]}\n" + o.describe()
    )


def expect_failure(args: list[str], cwd: Path, names: str | Path | None, code: int = 2,
                   watch: tuple[Path, ...] = (), env: dict[str, str] | None = None) -> Outcome:
    """Run a case that must fail cleanly, leaving `cwd` and every `watch` root exactly as they were."""
    roots = (cwd, *watch)
    before = snapshot(*roots)
    o = invoke(args, cwd, env)
    assert_clean_error(o, names, code)
    assert_unchanged(before, snapshot(*roots), o)
    return o
