"""Garbage collection tuned for a serving process: web and worker, once they have started.

- Startup objects are frozen. A full (generation 2) collection walks every tracked object; in
  the web and worker processes most of them are modules, Django's app registry, URL resolvers
  and settings, made at start and alive until exit, and a full collection took 15-90 ms: the
  slowest 1% of first tokens in `make bench` (bench/RESULTS.md). gc.freeze() moves them to a
  generation no collection walks.
- The youngest generation is collected after 5,000 new objects, not CPython's 700. A serving
  process makes most of its objects for one request or one answer chunk, and they die by
  reference counting within milliseconds; collected every 700, many were walked and promoted
  while still in use, and the older generations filled with them. In `make bench` with 500
  and then 1,000 answers streaming at once, web and worker together spent 2.0 s of CPU
  collecting, with 12-13 full collections each, the longest 85-93 ms with the GIL held (every
  answer of the process waits). At 5,000: 0.8 s, 2-3 full collections, the longest 29-35 ms;
  the worker's peak memory 219 MB instead of 206 (bench/RESULTS.md, 2026-12-05 19:58).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 5_000


def tune_for_serving() -> None:
    """Call once the process is set up, before it serves."""
    gc.collect()  # what is garbage already should not be frozen
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
