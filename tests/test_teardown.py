"""A process that joined a process group leaves without the interpreter's teardown (motif/teardown.py).

The teardown is where gloo's and DeepSpeed's C++ threads abort a finished rank, so it must not run:
an atexit handler standing in for it must stay silent, the exit status must be the command's own
(a returned status, a `SystemExit` raised by the SIGTERM handler), and what was printed must arrive.
A process that never joined a group exits normally, its atexit handlers included.
"""

import subprocess
import sys

import pytest

SCRIPT = """
import atexit, sys
from motif import teardown

atexit.register(lambda: print("teardown ran", flush=True))
if {joined}:
    teardown.joined_process_group()

def main():
    print("output before the exit", end="")  # unflushed: exit_process must flush it
    {how}

teardown.run_main(main)
"""


def _run(joined: bool, how: str) -> subprocess.CompletedProcess:
    code = SCRIPT.format(joined=joined, how=how)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("how", "status"),
    [("return 0", 0), ("return 3", 3), ("raise SystemExit(143)", 143), ("raise SystemExit(None)", 0)],
)
def test_a_process_in_a_group_skips_the_teardown_and_keeps_its_status_and_output(how, status):
    result = _run(True, how)
    assert result.returncode == status
    assert result.stdout == "output before the exit"  # flushed, and no atexit handler ran


def test_a_message_exit_is_printed_and_is_status_1():
    result = _run(True, "raise SystemExit('motif: gone')")
    assert result.returncode == 1 and result.stderr.strip() == "motif: gone"


def test_a_process_without_a_group_exits_normally():
    result = _run(False, "return 4")
    assert result.returncode == 4 and result.stdout == "output before the exitteardown ran\n"
