"""Running a script under Triton's CPU interpreter, for the kernel tests (a subprocess: the interpreter is chosen
when Triton is imported, so it cannot be switched on inside the test process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def run_interpreted(script: str) -> Any:
    """Run `script` with TRITON_INTERPRET=1 and return the JSON of the last line it printed."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
