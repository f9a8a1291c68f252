"""Ending a process without the interpreter's teardown.

Freeing torch's modules and objects at exit takes 1-3 s on a loaded machine (longer in a rank
whose process group lost a peer), and for a training job those seconds hold the gang's devices
after its work is over: between a failure and the restart, they are lost time. `quick_exit`
runs the ``atexit`` handlers (log handlers flush there), flushes stdout and stderr, then ends
the process with ``os._exit``.
"""

from __future__ import annotations

import atexit
import os
import sys
from contextlib import suppress
from typing import NoReturn


def quick_exit(code: int) -> NoReturn:
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(code)


def running_as(module: str) -> bool:
    """Whether this process was started as ``python -m MODULE`` (not a caller that runs the
    code in-process, such as a test: it must not be ended)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name == module
