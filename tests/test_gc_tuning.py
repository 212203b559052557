"""The web and worker processes keep what they built while starting out of later collections."""

from __future__ import annotations

import gc
import subprocess
import sys

from celery.signals import worker_ready

from fastgpt_portal.chat import signals
from fastgpt_portal.lib import gc_tuning
from tests.conftest import ROOT, _child_env


def test_the_web_process_freezes_its_startup_objects_and_collects_young_objects_less_often():
    code = "import gc, fastgpt_portal.asgi; print(gc.get_freeze_count(), *gc.get_threshold())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_child_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    frozen, young, older, oldest = map(int, out.stdout.split())
    assert frozen > 10_000  # modules, apps, URL resolvers: tens of thousands
    assert (young, older, oldest) == (gc_tuning.YOUNG_THRESHOLD, 10, 10)  # CPython's 700, 10, 10


def test_the_worker_tunes_its_collector_once_ready():
    assert signals._tune_gc in [ref() for _, ref in worker_ready.receivers]


def test_tuning_collects_the_young_generation_after_thousands_of_objects_not_hundreds():
    before = gc.get_threshold()
    try:
        gc_tuning.tune_for_serving()
        gc.collect()
        kept = [[] for _ in range(2_000)]  # containers that live on, as a request's objects do
        assert gc.get_count()[0] >= 2_000  # not collected at 700
        del kept
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
