"""The one writing layer: crash-safe, link-safe writes that never leave temporaries behind.

- A reader (or a resumed run) sees the old file or the new one, never half of one: write a temporary file in the
  same folder, fsync, rename over the target, fsync the folder.
- Links are never written through. A rename replaces a symbolic link itself (not its target), and files that are
  opened in place (the sweep's lock, the append-only row log) are opened with `O_NOFOLLOW`, so a link planted in a
  shared output folder cannot redirect a write to another user's file.
- Temporaries are named `.<target>.<random>.tmp`; a failed write removes its own, and a run killed mid-write
  leaves one that `remove_stale_temporaries` clears under the sweep's lock.
- Outputs that come as a set (a report's markdown, HTML and plots) are staged and moved into place only when all
  of them were written (`staged_outputs`), so an error never leaves half a report.
- A write that fails for lack of space or permission becomes a `WriteError` (exit 5) naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError, WriteError
from .json_text import indented_json

TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")  # mkstemp's `.<name>.<random>.tmp`
_STAGING_PREFIX = ".staging-"


def write_error(exc: OSError, path: str | Path, verb: str = "cannot write") -> WriteError:
    """An OSError from writing `path` as the one-line error the CLI prints (exit 5)."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (the disk is full; what was recorded before is intact)"
    return WriteError(f"{exc.filename or path}: {verb}: {reason}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_dirs(path: str | Path) -> Path:
    """`mkdir -p`, with a failure (a file in the way, no permission, disk full) as a WriteError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WriteError(f"{path}: cannot create the folder: a file of that name is in the way") from None
    except OSError as exc:
        raise write_error(exc, path) from None
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync it, rename it over `path`, fsync the folder."""
    path = Path(path)
    make_dirs(path.parent)
    if path.is_dir() and not path.is_symlink():
        raise WriteError(f"{path}: cannot write: a folder of that name is in the way")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)  # replaces a symbolic link itself, never its target
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(exc, path) from None
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps(doc: Any) -> str:
    """The JSON form of every quantsweep document: indented, sorted keys, stable floats, trailing newline (the text of
    `json.dumps(doc, indent=2, sort_keys=True, allow_nan=True, default=str)`, built faster: store/json_text.py)."""
    return indented_json(doc) + "\n"


def atomic_write_json(path: str | Path, doc: Any) -> None:
    atomic_write_text(path, dumps(doc))


# --- files opened in place ------------------------------------------------------------------------------------------
def open_no_follow(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """`os.open` of a regular file that refuses a symbolic link at `path` (InputError naming it) instead of going
    through it, and a folder or device there (which would fail later with a message naming a descriptor)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0), mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path}: is a symbolic link; quantsweep never writes through links (remove it)") from None
        if exc.errno == errno.EISDIR:
            raise InputError(f"{path}: is a folder; quantsweep expected its own file there") from None
        raise write_error(exc, path) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"{path}: is not a regular file; quantsweep expected its own file there")
    return fd


def append_bytes(path: str | Path, data: bytes) -> None:
    """Append and fsync (the row log's commit point), never through a link."""
    fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except OSError as exc:
        raise write_error(exc, path) from None
    finally:
        os.close(fd)


# --- temporaries ------------------------------------------------------------------------------------------------
def temporary_target(name: str) -> str | None:
    """The file a temporary `.<target>.<random>.tmp` was going to become, or None."""
    if not _TMP_NAME.match(name):
        return None
    return name[1:-len(TMP_SUFFIX)].rsplit(".", 1)[0]


def remove_stale_temporaries(root: str | Path, targets: frozenset[str], stale_after_s: float = 600.0) -> list[Path]:
    """Remove what a killed writer left under `root`: temporaries of the files in `targets` (call it only while
    holding the lock of whoever writes those, so no live writer's temporary is taken), and staging folders not
    touched for `stale_after_s` (another command may be staging a report there right now). Links are not
    followed. Returns what was removed."""
    import time

    removed: list[Path] = []
    now = time.time()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            if temporary_target(name) in targets:
                p = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
        for name in list(dirnames):
            if name.startswith(_STAGING_PREFIX):
                dirnames.remove(name)
                p = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    if now - p.lstat().st_mtime > stale_after_s:
                        shutil.rmtree(p, ignore_errors=True)
                        removed.append(p)
    return removed


# --- where outputs go -------------------------------------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(path: str | Path, label: str, shown: str | Path | None = None) -> Path:
    """Refuse, before anything is read or written, an output folder that cannot be one: a file (or a link to one)
    in its place or on its way, or a place this user cannot write. Creates nothing. `shown`: the path the user
    gave, when `path` is only its folder."""
    path = Path(path)
    shown = shown if shown is not None else path
    for p in (path.absolute(), *path.absolute().parents):
        if p.is_symlink() and not p.exists():
            raise InputError(f"{label} {shown}: {p} is a dangling or looping symbolic link")
    if path.exists() and not path.is_dir():
        what = "is a file, not a folder" if Path(shown) == path else f"{path} is a file, not a folder"
        raise InputError(f"{label} {shown}: {what}")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise InputError(f"{label} {shown}: {base} is a file, so the folder cannot be created")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"{label} {shown}: {base} is not writable")
    return path


def check_output_file(path: str | Path, label: str) -> Path:
    """As `check_output_dir`, for a file that will be replaced atomically."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{label} {path}: is a folder, not a file")
    check_output_dir(path.parent, label, shown=path)
    return path


def missing_folders(path: str | Path) -> list[Path]:
    """The folders `mkdir -p path` would create, outermost first (to remove them again on an error path)."""
    missing = []
    p = Path(path).absolute()
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing[::-1]


def remove_empty_folders(folders: list[Path]) -> None:
    """Undo `missing_folders`' creation: innermost first, only folders that are (still) empty."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def staged_outputs(out_dir: str | Path) -> Iterator[Path]:
    """A folder to write a set of outputs into; on success every file is moved into `out_dir` (created then), on
    any error the staging folder and any folder created on the way are removed and `out_dir` is exactly as it was
    (or still absent)."""
    out_dir = Path(out_dir)
    existed = out_dir.is_dir()
    created = [] if existed else missing_folders(out_dir.parent)
    stage: Path | None = None
    done = False
    try:
        parent = out_dir if existed else make_dirs(out_dir.parent)
        try:
            stage = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=parent))
        except OSError as exc:
            raise write_error(exc, out_dir) from None
        try:
            yield stage
        except WriteError as exc:  # name the output the user asked for, not the staging folder
            raise WriteError(str(exc).replace(str(stage), str(out_dir))) from None
        _publish(stage, out_dir, existed)
        done = True
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if not done:
            remove_empty_folders(created)


def _publish(stage: Path, out_dir: Path, existed: bool) -> None:
    """Move what was written into `out_dir`: a new folder by one rename, into an existing one file by file after
    checking that no folder stands where a file goes (so no partial set)."""
    if not existed:
        os.chmod(stage, 0o777 & ~_umask())
        try:
            os.rename(stage, out_dir)  # all at once
        except OSError as exc:
            raise write_error(exc, out_dir) from None
        _fsync_dir(out_dir.parent)
        return
    staged = [(Path(d).relative_to(stage), names) for d, _dirs, names in os.walk(stage)]
    for rel, filenames in staged:
        for name in filenames:
            if (out_dir / rel / name).is_dir() and not (out_dir / rel / name).is_symlink():
                raise WriteError(f"{out_dir / rel / name}: cannot write: a folder of that name is in the way")
    for rel, filenames in staged:
        make_dirs(out_dir / rel)
        for name in filenames:
            try:
                os.replace(stage / rel / name, out_dir / rel / name)
            except OSError as exc:
                raise write_error(exc, out_dir / rel / name) from None
    _fsync_dir(out_dir)
