"""The bench's CPU figures keep the CPU of processes that ended while they were measured."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.stack import Monitor

BURN = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass"


def test_a_child_that_ends_while_measured_keeps_its_cpu_in_the_group():
    # PostgreSQL's backends come and go during a concurrency level; a sum over the processes
    # alive at the end dropped an ended one's CPU, and the group's figure came out negative.
    with Monitor({"here": [os.getpid()]}, interval=0.05) as monitor:
        subprocess.run([sys.executable, "-c", BURN], check=True)
        time.sleep(0.1)
    assert monitor.cpu["here"] >= 0.3  # the child's 0.4 s, at most one 0.05 s sample short
