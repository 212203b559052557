"""The web and worker processes keep what they built while starting out of later collections."""

from __future__ import annotations

import subprocess
import sys

from celery.signals import worker_ready

from fastgpt_portal.chat import signals
from tests.conftest import ROOT, _child_env


def test_the_web_process_freezes_its_startup_objects():
    code = "import gc, fastgpt_portal.asgi; print(gc.get_freeze_count())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_child_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 10_000  # modules, apps, URL resolvers: tens of thousands


def test_the_worker_freezes_its_startup_objects_once_ready():
    assert signals._freeze in [ref() for _, ref in worker_ready.receivers]
