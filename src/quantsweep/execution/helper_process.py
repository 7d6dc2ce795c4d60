"""A helper Python process that runs picklable calls for this process, one at a time, off its GIL.

Why a process of our own rather than `multiprocessing`: a spawned `multiprocessing` child re-imports the parent's
`__main__` script, so a user script without an `if __name__ == "__main__":` guard would start its sweep again in the
child (and Ray workers run ModelOpt-laden main modules); forking a process that holds a CUDA context is unsafe. This
helper is `python -m quantsweep.execution.helper_process` with the parent's `sys.path`: it imports only what the calls
it is sent need. Calls and results travel pickled over two pipes of their own, so anything a solver library prints
cannot corrupt them; the helper's stdout is discarded and its stderr is the parent's. It ignores SIGINT (the parent
decides what a Ctrl-C stops) and inherits the parent's CPU binding.

`HelperProcess.submit(fn, *args)` returns a `concurrent.futures.Future`. A call the helper cannot take (it died, or
cannot unpickle the call) fails its future with `HelperUnavailable`, and so does every later one: the caller computes
those itself (execution/stability_pipeline.py does).
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any, BinaryIO

_LENGTH = struct.Struct("!Q")


class HelperUnavailable(RuntimeError):
    """The helper process could not run a call (it is gone, or could not unpickle the call)."""


def _write(stream: BinaryIO, payload: bytes) -> None:
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read(stream: BinaryIO) -> bytes:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("the helper process closed its pipe")
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the helper process closed its pipe mid-message")
    return data


class HelperProcess:
    """One helper process and the thread of this process that feeds it (see the module docstring)."""

    def __init__(self) -> None:
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "quantsweep.execution.helper_process", str(job_r), str(res_w)],
                pass_fds=(job_r, res_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
            )
        finally:
            os.close(job_r)
            os.close(res_w)
        self._jobs = os.fdopen(job_w, "wb")
        self._results = os.fdopen(res_r, "rb")
        self._queue: queue.SimpleQueue[tuple[Future, Any, tuple] | None] = queue.SimpleQueue()
        self.alive = True
        self._thread = threading.Thread(target=self._serve, name="quantsweep-helper-io", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def submit(self, fn: Any, *args: Any) -> Future:
        future: Future = Future()
        if not self.alive:
            future.set_exception(HelperUnavailable("the helper process is gone"))
        else:
            self._queue.put((future, fn, args))
        return future

    def close(self) -> None:
        """Stop the helper (its pending calls fail with HelperUnavailable)."""
        self.alive = False
        self._queue.put(None)
        for stream in (self._jobs, self._results):
            try:
                stream.close()
            except OSError:
                pass
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            if not self.alive:
                future.set_exception(HelperUnavailable("the helper process is gone"))
                continue
            try:
                payload = pickle.dumps((fn, args))
            except Exception as exc:  # noqa: BLE001 - not picklable: the caller runs it itself
                future.set_exception(HelperUnavailable(f"the call cannot be pickled: {type(exc).__name__}: {exc}"))
                continue
            try:
                _write(self._jobs, payload)
                status, value = pickle.loads(_read(self._results))
            except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
                self.alive = False
                future.set_exception(HelperUnavailable(f"the helper process is gone: {exc}"))
                continue
            if status == "ok":
                future.set_result(value)
            elif status == "error":
                future.set_exception(value)
            else:  # "unavailable": the helper could not unpickle the call
                future.set_exception(HelperUnavailable(value))


def _main(job_fd: int, result_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    jobs = os.fdopen(job_fd, "rb")
    results = os.fdopen(result_fd, "wb")
    while True:
        try:
            data = _read(jobs)
        except EOFError:
            return
        try:
            fn, args = pickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - e.g. a function defined in the parent's __main__
            _write(results, pickle.dumps(("unavailable", f"{type(exc).__name__}: {exc}")))
            continue
        try:
            out: tuple[str, Any] = ("ok", fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed back to the caller's future
            out = ("error", exc)
        try:
            reply = pickle.dumps(out)
        except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception
            reply = pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
        _write(results, reply)


if __name__ == "__main__":
    _main(int(sys.argv[1]), int(sys.argv[2]))
