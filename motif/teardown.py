"""Leaving a process that joined a process group, without the interpreter's teardown.

After a finished run, gloo's, the store's and DeepSpeed's C++ threads can still be alive when the
interpreter destroys its static objects; destroying a running `std::thread` aborts the process
("terminate called without an active exception", SIGABRT), which turns a finished rank into a
failed one for the job's restart policy. Seen with every engine on CPU, more often under load.

So the process entry points end with `exit_process`: once this process has joined a process
group, everything the run wrote is already synchronised and closed, and the only work left is to
flush the streams, so it leaves with `os._exit`. Processes that never joined a group exit normally
(atexit handlers, multiprocessing finalizers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

_joined_process_group = False


def joined_process_group() -> None:
    """Record that this process joined a process group (called when the group is created)."""
    global _joined_process_group
    _joined_process_group = True


def exit_process(code: str | int | None) -> NoReturn:
    """Exit with `code` (an int, None for 0, or a message for status 1, as `sys.exit` reads it)."""
    if not _joined_process_group:
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said
            stream.flush()
    os._exit(status)


def run_main(main: Callable[[], object]) -> NoReturn:
    """Run a process's `main()` and exit with its status, including a `SystemExit` raised inside it."""
    try:
        returned = main()
        code = returned if returned is None or isinstance(returned, int | str) else 1
    except SystemExit as e:
        code = e.code
    exit_process(code)
