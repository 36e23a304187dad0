"""tooling.process.hard_exit: the offline commands end without interpreter teardown, but
nothing they printed is lost and the status is kept (a config error's status 2 through
`python -m tooling plan`: tests/test_plan.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Pipes make stdout block-buffered: without the flush, the output below would be lost.
PROGRAM = """
import atexit, sys
from tooling.process import hard_exit
atexit.register(lambda: print("teardown ran"))
print("tree", end="")
sys.stderr.write("wrote plan.json")
hard_exit(3)
"""


def test_hard_exit_flushes_both_streams_keeps_the_status_and_skips_teardown() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=PROJECT_DIR, capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "tree", "wrote plan.json")
