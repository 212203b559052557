"""Keep what a process builds while starting out of its garbage collections.

A full (generation 2) collection walks every tracked object. In the web and worker processes
most of them are modules, Django's app registry, URL resolvers and settings, made at start and
alive until exit, and a full collection took 15-90 ms: the slowest 1% of first tokens in
`make bench` (bench/RESULTS.md). gc.freeze() moves them to a generation no collection walks.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Call once the process is set up, before it serves."""
    gc.collect()  # what is garbage already should not be frozen
    gc.freeze()
