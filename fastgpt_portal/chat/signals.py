"""Worker liveness for /healthz: each worker refreshes a Redis key every 20 s."""

from __future__ import annotations

import logging
import threading
import time

from celery.signals import worker_ready, worker_shutdown

log = logging.getLogger("fastgpt_portal.chat")
_stop = threading.Event()


def _beat() -> None:
    from fastgpt_portal.chat import relay
    from fastgpt_portal.ops import WORKER_KEY

    while True:
        try:
            relay.sync_redis().set(WORKER_KEY, str(time.time()), ex=60)
        except Exception:
            log.warning("worker liveness: Redis is unreachable")
        if _stop.wait(20):
            return


@worker_ready.connect
def _start_beat(**_kwargs) -> None:
    threading.Thread(target=_beat, name="worker-liveness", daemon=True).start()


@worker_ready.connect
def _tune_gc(**_kwargs) -> None:
    from fastgpt_portal.lib.gc_tuning import tune_for_serving

    tune_for_serving()


@worker_shutdown.connect
def _stop_beat(**_kwargs) -> None:
    _stop.set()
